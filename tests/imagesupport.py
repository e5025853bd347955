"""Helpers for the image tests: fresh copies of the golden sets, and image surgery."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dumper.images import codec, golden, manifest
from dumper.images import magic as M

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "images"
CRIT = "/usr/bin/crit"


def build(tmp: Path, variant: str = "basic") -> Path:
    """A freshly written copy of a golden set."""
    return golden.build(tmp, variant)


def rewrite(path: Path, change: Callable[[list], list | None], reseal: bool = True) -> None:
    """Load an image, let change() edit its entries (in place or by returning new ones),
    and write it back with valid framing; reseal: update dumper.img's manifest too, so the
    change reaches the check it is meant for instead of the checksum."""
    img = codec.load(path)
    entries = change(img.entries)
    path.write_bytes(codec.encode(img.kind, img.entries if entries is None else entries))
    if reseal:
        resealed(path.parent)


def resealed(directory: Path) -> Path:
    """Recompute dumper.img's manifest after a deliberate edit of a set (no-op for CRIU's)."""
    d = directory / M.DUMPER
    if d.exists():
        (entry,) = codec.load(d).entries
        d.write_bytes(codec.encode(codec.BY_NAME["DUMPER"], [manifest.seal(entry, directory)]))
    return directory


def crit_or_skip() -> str:
    """Debian's crit, or skip (fail under CI, where .ci/run installs it)."""
    ok = os.path.exists(CRIT) and subprocess.run(
        ["/usr/bin/python3", "-c", "import pycriu"], capture_output=True, env=crit_env()
    ).returncode == 0
    if not ok:
        if os.environ.get("CI"):
            pytest.fail("crit (Debian's criu package with python3-protobuf) is missing in CI")
        pytest.skip("crit is not installed: apt-get install criu python3-protobuf")
    return CRIT


def crit_env() -> dict[str, str]:
    """The environment without our venv: crit runs under Debian's python3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


def crit(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    crit_or_skip()
    r = subprocess.run(
        [CRIT, *args], cwd=cwd, input=stdin, capture_output=True, env=crit_env(), timeout=60
    )
    assert r.returncode == 0, f"crit {' '.join(args)} failed: {r.stderr.decode()}"
    return r.stdout
