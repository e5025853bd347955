"""Build the self-checking C programs of tests/linux/cprogs for the restore tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CPROGS = Path(__file__).parent / "cprogs"


def build(out: Path, programs: dict[str, tuple[str, ...]]) -> Path:
    """gcc each program (name -> (source stem, extra flags...)) into out; skips without gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the test programs")
    for name, (stem, *flags) in programs.items():
        subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-pthread", *flags, "-o",
                        str(out / name), str(CPROGS / f"{stem}.c")], check=True,
                       capture_output=True)
    return out
