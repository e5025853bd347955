"""`dumper check` probes against what the kernel says of itself (config, version, /proc)."""

from __future__ import annotations

import gzip
import os

import pytest

from dumper.linux import check

pytestmark = pytest.mark.linux


def kernel_config() -> dict[str, str]:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        pytest.skip("no /proc/config.gz to compare the probes with")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


def test_every_probe_answers():
    results = check.check()
    assert [r.feature for r in results] == [
        "PAGEMAP_SCAN", "PAGE_IS_GUARD", "map_files", "swap", "soft-dirty", "uffd-wp async",
        "guard regions", "PFN visible", "/proc/PID/mem", "task children"]
    assert all(isinstance(r.ok, bool) and r.detail for r in results)
    for feature, _ok, detail in results:  # plain (feature, ok, detail) tuples too
        assert "probe failed" not in detail, (feature, detail)


def test_probes_agree_with_config_and_version():
    cfg, ver = kernel_config(), kernel_version()
    got = {r.feature: r.ok for r in check.check()}
    assert got["soft-dirty"] == (cfg.get("CONFIG_MEM_SOFT_DIRTY") == "y")
    assert got["PAGEMAP_SCAN"] == (ver >= (6, 7))
    assert got["PAGE_IS_GUARD"] == (ver >= (6, 15))
    assert got["guard regions"] == (ver >= (6, 13))
    assert got["uffd-wp async"] == (ver >= (6, 7) and cfg.get("CONFIG_USERFAULTFD") == "y"
                                    and cfg.get("CONFIG_PTE_MARKER_UFFD_WP") == "y")
    assert got["task children"] == (cfg.get("CONFIG_PROC_CHILDREN") == "y")
    assert got["/proc/PID/mem"]  # CONFIG_PROC_FS
    assert got["map_files"] and got["PFN visible"]  # root
    with open("/proc/swaps") as f:
        assert got["swap"] == (len(f.read().splitlines()) > 1)
