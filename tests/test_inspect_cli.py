"""`dumper inspect`, through click's runner and as `python -m dumper.inspect`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from imagesupport import GOLDEN, ROOT, build, resealed, rewrite

from dumper.images import golden
from dumper.inspect import inspect

BASIC = str(GOLDEN / "basic")


def run(*args: str, code: int = 0, input: bytes | None = None):
    r = CliRunner().invoke(inspect, list(args), input=input)
    assert r.exit_code == code, (r.output, r.stderr if hasattr(r, "stderr") else "")
    assert "Traceback" not in r.output
    return r


def test_show_is_pretty_json():
    doc = json.loads(run("show", f"{BASIC}/pagemap-4243.img").output)
    assert doc["magic"] == "PAGEMAP"
    assert doc["entries"][1]["vaddr"] == "0x55551000"
    assert doc["entries"][1]["flags"] == "PE_PRESENT"


def test_decode_encode_round_trip(tmp_path):
    for name in ("mm-4242.img", "pagemap-shmem-8193.img", "dumper.img", "truth-4243.img"):
        out = tmp_path / (name + ".json")
        run("decode", f"{BASIC}/{name}", "-o", str(out))
        run("encode", str(out), "-o", str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == (GOLDEN / "basic" / name).read_bytes()
    pretty = run("decode", "--pretty", f"{BASIC}/core-4242.img").output
    r = run("encode", "-", "-o", str(tmp_path / "core.img"), input=pretty.encode())
    assert r.output == ""
    assert (tmp_path / "core.img").read_bytes() == (GOLDEN / "basic" / "core-4242.img").read_bytes()


def test_info_text_and_json():
    text = run("info", BASIC).output
    assert "strategy pagemap, profile linux-6.18, host model" in text
    assert "memfd" in text and "ring" in text
    d = json.loads(run("info", "--json", str(GOLDEN / "zstd")).output)
    assert d["compression"] == "zstd" and d["level"] == 19
    assert [t["pages"] for t in d["tasks"]] == [4, 2]
    assert [t["cow_pages"] for t in d["tasks"]] == [0, 2]
    assert d["pages"] == 10 and d["raw_bytes"] == 10 * 4096 and d["ratio"] > 10
    assert {o["kind"]: o["pages"] for o in d["objects"]} == {
        "memfd": 1, "shmem-anon": 2, "sysv": 1
    }


def test_ps():
    lines = run("ps", BASIC).output.splitlines()
    assert lines[1].split() == ["4242", "4242", "4242", "server"]
    assert lines[2].endswith("  worker") and lines[2].split()[0] == "4243"
    tree = json.loads(run("ps", "--json", BASIC).output)
    assert tree["pid"] == 4242 and tree["children"][0]["comm"] == "worker"


def test_mems():
    text = run("mems", BASIC).output
    assert "7f0000000000-7f0000002000 rw-s        1/2        memfd ring (shmid 8193)" in text
    tasks = json.loads(run("mems", "--json", BASIC).output)
    heap = tasks[1]["vmas"][0]
    assert (heap["start"], heap["pages"], heap["npages"]) == (golden.HEAP, 3, 4)


def test_pages_hexdump():
    out = run("pages", BASIC, "--pid", "4243", "--addr", hex(golden.HEAP + 5)).output
    assert out.splitlines()[0] == (
        "task 4243 page 0x55550000: shared copy-on-write with task 4242 at 0x55550000"
    )
    assert "|parent heap 0   |" in out and "\n*\n" in out
    d = json.loads(run("pages", BASIC, "--pid", "4242", "--addr", hex(golden.SYSV_AT),
                       "--json").output)
    assert d["source"] == "shared" and d["object"] == golden.SYSV
    assert bytes.fromhex(d["data"]) == golden.page("sysv segment")


def test_diff():
    r = run("diff", BASIC, str(GOLDEN / "lseek"), code=1)
    assert "task 4243: differs: 0x55551000-0x55552000 (1 page)" in r.output
    assert "object 8193: only in B: 0x1000-0x2000 (1 page, zeros)" in r.output
    d = json.loads(run("diff", "--json", BASIC, str(GOLDEN / "lseek"), code=1).output)
    assert d["summary"] == {"only_in_a": 0, "only_in_b": 1, "differs": 1, "same": 11}
    r = run("diff", BASIC, str(GOLDEN / "zstd"))
    assert r.output.strip() == "0 pages only in A, 0 only in B, 0 differ, 12 same"


def criu_style(tmp_path):
    """A set as CRIU would leave it: none of dumper's own images."""
    s = build(tmp_path)
    for f in ["dumper.img", "objects.img", "cow-4243.img", "truth-4242.img", "truth-4243.img"]:
        (s / f).unlink()
    return s


def test_reads_criu_sets(tmp_path):
    s = str(criu_style(tmp_path))
    text = run("info", s).output
    assert "CRIU set (no dumper.img): strategy and profile unknown" in text
    d = json.loads(run("info", "--json", s).output)
    assert {o["shmid"]: o["kind"] for o in d["objects"]} == {
        golden.MEMFD: "memfd", golden.ANON: "shmem-anon", golden.SYSV: "sysv"
    }
    assert "shmem-anon (shmid 8194)" in run("mems", s).output
    # Without cow-4243.img the child's COW-shared page is simply not in the set.
    out = run("pages", s, "--pid", "4243", "--addr", hex(golden.HEAP)).output
    assert out.splitlines() == ["task 4243 page 0x55550000: not dumped: reads zeros"]
    out = run("pages", s, "--pid", "4243", "--addr", hex(golden.HEAP + 4096)).output
    assert "|child heap 1    |" in out
    run("diff", BASIC, s, code=1)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda s: resealed((s / "pstree.img").write_bytes(b"garbage!") and s),
         "pstree.img: bad magic"),
        (lambda s: rewrite(s / "mm-4242.img", lambda e: setattr(e[0].vmas[1], "start", 0)),
         "mm-4242.img: VMAs unsorted or overlapping"),
        (lambda s: resealed((s / "inventory.img").unlink() or s),
         "inventory.img: No such file"),
    ],
)
def test_errors_exit_2_without_traceback(tmp_path, break_it, message):
    s = build(tmp_path)
    break_it(s)
    for cmd in (["info"], ["ps"], ["mems"]):
        r = CliRunner().invoke(inspect, [*cmd, str(s)])
        assert r.exit_code == 2
        assert r.stderr.startswith(f"dumper: error: {s}/") and message in r.stderr
        assert "Traceback" not in r.output + r.stderr


def test_bad_files_for_single_image_commands(tmp_path):
    r = CliRunner().invoke(inspect, ["show", f"{BASIC}/pages-1.img"])
    assert r.exit_code == 2 and "bad magic" in r.stderr and "raw page data" in r.stderr
    (tmp_path / "x.json").write_text('{"magic": "PSTREE", "entries": [}')
    r = CliRunner().invoke(inspect, ["encode", str(tmp_path / "x.json"), "-o", "/dev/null"])
    assert r.exit_code == 2
    assert r.stderr == f"dumper: error: {tmp_path}/x.json: invalid JSON: Expecting value " \
                       "(at offset 32)\n"
    r = CliRunner().invoke(inspect, ["pages", BASIC, "--pid", "1", "--addr", "0"])
    assert r.exit_code == 2 and "no task 1 in the set" in r.stderr


def test_module_entry_point(tmp_path):
    s = build(tmp_path)
    shutil.copy(s / "mm-4242.img", tmp_path / "mm.img")
    (tmp_path / "mm.img").write_bytes((tmp_path / "mm.img").read_bytes()[:-1])
    r = subprocess.run(
        [sys.executable, "-m", "dumper.inspect", "show", str(tmp_path / "mm.img")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"dumper: error: {tmp_path}/mm.img: entry length")
    r = subprocess.run([sys.executable, "-m", "dumper.inspect", "ps", BASIC],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "worker" in r.stdout
