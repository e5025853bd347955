"""The in-suite fuzz of issue 15: seeded mutants of model sets (the golden sets and a scenario
dump) through inspect, verify and restore --verify, in a worker under RLIMIT_AS with a
per-command alarm and a sample run as a subprocess (tests/fuzzsupport.py has the engine
and the oracles; the long campaign is recorded in BENCH.md). Live sets:
tests/linux/test_reliability_live.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fuzzsupport as fz
from imagesupport import ROOT

COUNT = 1500  # per CI run: about 10 s here


def test_seeded_mutants(tmp_path):
    summary = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzzsupport.py"), "--count",
                        str(COUNT), "--batch", "500", "--jobs", "1", "--seed", "15",
                        "--scenario", "14-private-cow-baseline", "--subprocess-every", "150",
                        "-o", str(summary)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    doc = json.loads(summary.read_text())
    assert doc["mutants"] == COUNT
    assert not doc["findings"], json.dumps(doc["findings"][:3], indent=1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(doc["exits"]) == {"0", "1", "2"}  # accepted, lost and refused mutants all seen


def test_the_oracles_can_fail(tmp_path, monkeypatch):
    """With verification disabled, the same engine reports accepted corruption."""
    import dumper.verify as V

    monkeypatch.setattr(V.VerifyReport, "ok", property(lambda self: True))
    bases = fz.model_bases(Path(tmp_path))
    res = fz.run_range(bases, 0, 300, seed=15)
    assert any(f.what == "accepted" for f in res.findings), res.exits


def test_mutations_are_reproducible(tmp_path):
    from dumper.images import golden

    a, b = golden.build(tmp_path / "a", "basic"), golden.build(tmp_path / "b", "basic")
    for i in range(40):
        da, db = tmp_path / f"x{i}", tmp_path / f"y{i}"
        import shutil

        shutil.copytree(a, da, symlinks=True)
        shutil.copytree(b, db, symlinks=True)
        ma, mb = fz.mutate(da, i, 7, True), fz.mutate(db, i, 7, True)
        assert vars(ma) == vars(mb)
        for name in sorted(p.name for p in da.iterdir()):
            pa, pb = da / name, db / name
            if pa.is_file() and not pa.is_symlink() and pa.stat().st_size < 1 << 20:
                assert pa.read_bytes() == pb.read_bytes() or name == "dumper.img", (i, name)
