"""pyproject.toml: the SPDX license string (PEP 639) and a setuptools that reads it, so an
install prints no deprecation box and the wheel says License-Expression: MIT."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string_and_setuptools_reads_it(tmp_path):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert "setuptools>=77" in meta["build-system"]["requires"]
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip("this environment's setuptools predates PEP 639 (the build needs >= 77)")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "license" not in (r.stdout + r.stderr).lower(), (r.stdout + r.stderr)[-2000:]
    wheel = next(tmp_path.glob("dumper-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in text.splitlines()
