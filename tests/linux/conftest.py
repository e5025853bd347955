"""Fixtures for the real-kernel tests: helper processes and a swap device, both always
cleaned up; every test here is skipped (with the reason) when not running as root."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from .procs import ProcSet

SWAP_MB = 256


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (ptrace, /proc/PID/map_files, swapon); CI runs as root")


@pytest.fixture
def procs() -> Iterator[ProcSet]:
    ps = ProcSet()
    try:
        yield ps
    finally:
        ps.end_all()


def _active_swaps() -> list[str]:
    with open("/proc/swaps") as f:
        return [line.split()[0] for line in f.read().splitlines()[1:] if line.strip()]


THP = "/sys/kernel/mm/transparent_hugepage"
THP_SETTINGS = {  # what the THP programs assume (tests/linux/test_differential.py)
    "enabled": "madvise",
    "hugepages-2048kB/enabled": "inherit",
    "use_zero_page": "1",
    # the deferred-split shrinker splits underused THPs (most pages zero) whenever memory
    # is short, remapping their zero pages to the zero page: not while a test looks
    "shrink_underused": "0",
    # khugepaged would collapse split PMDs back behind the test's back (it scans at once
    # when a first mm registers, whatever the sleep): only wholly present ranges may collapse
    # (measured: a partly zapped THP came back whole), and it sleeps meanwhile
    "khugepaged/max_ptes_none": "0",
    "khugepaged/scan_sleep_millisecs": "3600000",
    "khugepaged/alloc_sleep_millisecs": "3600000",
}


def _setting(path: str) -> str:
    """A sysfs setting's value: the [chosen] word of a choice list, or the text."""
    with open(path) as f:
        text = f.read().strip()
    if "[" in text:
        return text[text.index("[") + 1 : text.index("]")]
    return text


@contextlib.contextmanager
def set_kernel_settings(settings: dict[str, str]) -> Iterator[dict[str, str]]:
    """Write each path -> value, and put every one back as found on the way out, whatever
    happens (in reverse order; one that cannot be put back is reported, the rest still are)."""
    saved: list[tuple[str, str]] = []
    try:
        for path, value in settings.items():
            if not os.path.exists(path):
                pytest.skip(f"{path} does not exist on this kernel")
            saved.append((path, _setting(path)))
            with open(path, "w") as f:
                f.write(value)
        yield settings
    finally:
        failed = []
        for path, value in reversed(saved):
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as e:
                failed.append(f"{path}={value}: {e}")
        if failed:
            raise RuntimeError("could not restore kernel settings: " + "; ".join(failed))


@pytest.fixture
def thp() -> Iterator[dict[str, str]]:
    """Transparent huge pages as the THP programs need them, restored afterwards."""
    with set_kernel_settings({f"{THP}/{k}": v for k, v in THP_SETTINGS.items()}) as s:
        yield s


SHMEM_FOLIO_SETTINGS = {  # 64 KiB shmem folios, nothing bigger (shmem_enabled stays never)
    "hugepages-64kB/shmem_enabled": "always",
    "hugepages-2048kB/shmem_enabled": "never",
}


@pytest.fixture
def shmem_folios() -> Iterator[dict[str, str]]:
    """Large (64 KiB: 16-page) shmem folios, put back afterwards."""
    with set_kernel_settings({f"{THP}/{k}": v for k, v in SHMEM_FOLIO_SETTINGS.items()}) as s:
        yield s


HUGEPAGES = 8  # the hugetlb pool the hugetlb programs get (16 MiB)


@pytest.fixture
def hugetlb() -> Iterator[dict[str, str]]:
    """vm.nr_hugepages = HUGEPAGES (every page must come: the kernel may give fewer), put
    back afterwards."""
    with set_kernel_settings({"/proc/sys/vm/nr_hugepages": str(HUGEPAGES)}) as s:
        if int(_setting("/proc/sys/vm/nr_hugepages")) != HUGEPAGES:
            pytest.skip(f"the kernel could not give {HUGEPAGES} huge pages")
        yield s


@pytest.fixture
def swap() -> Iterator[str]:
    """A 256 MiB swapfile on the root filesystem (not tmpfs: it cannot hold swap), at the
    highest priority so our pageouts land in it even if other swap is active; swapped off
    and removed on the way out whatever happens."""
    path = f"/var/tmp/dumper-test-swap-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, SWAP_MB << 20)  # unwritten extents: ext4 swaps on them
        finally:
            os.close(fd)
        subprocess.run(["mkswap", path], check=True, capture_output=True)
        subprocess.run(["swapon", "--priority", "32767", path], check=True, capture_output=True)
        assert path in _active_swaps()
        yield path
    finally:
        if path in _active_swaps():
            subprocess.run(["swapoff", path], check=True, capture_output=True)
        if os.path.exists(path):
            os.unlink(path)
