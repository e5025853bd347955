"""dumper.linux.buildid reads the GNU build-id as readelf shows it, in CRIU's u32 words."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from dumper.linux.buildid import build_id


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
@pytest.mark.parametrize("path", [os.path.realpath(sys.executable), "/bin/sh"])
def test_build_id_matches_readelf(path):
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    if m is None:
        assert build_id(path) is None
        return
    raw = bytes.fromhex(m.group(1))
    raw += bytes(-len(raw) % 4)
    assert build_id(path) == list(struct.unpack(f"<{len(raw) // 4}I", raw))


def test_not_elf(tmp_path):
    (tmp_path / "x").write_bytes(b"#!/bin/sh\n" * 10)
    assert build_id(tmp_path / "x") is None
    assert build_id(tmp_path / "missing") is None
