"""pagemap words and PAGEMAP_SCAN agree, in batches and across resumes; the fallback path."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from dumper.kabi import (
    MADV_GUARD_INSTALL,
    PAGE_IS_GUARD,
    PAGE_IS_PFNZERO,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PM_GUARD_REGION,
    PM_PRESENT,
    PM_SWAP,
)
from dumper.linux import LinuxHost, ProcError, pagemap

from .procs import PAGE
from .test_shared import words

pytestmark = pytest.mark.linux

CATS = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_GUARD


@pytest.fixture
def mixed(procs):
    """16 private pages: 0-2 written, 4-5 read (zero page), 8 a guard page, 10-15 written."""
    p = procs.start()
    addr = p.mmap("m", 16)
    p.write("m", [0, 1, 2, *range(10, 16)], tag=1)
    p.call("read", name="m", pages=[4, 5])
    p.call("madvise", name="m", page=8, npages=1, advice=MADV_GUARD_INSTALL)
    return p, addr


def test_scan_matches_pagemap_words_whatever_vec_len(mixed):
    p, addr = mixed
    end = addr + 16 * PAGE
    w = words(LinuxHost(), p.pid, addr, 16)
    assert [bool(x & PM_PRESENT) for x in w] == [i in (0, 1, 2, 4, 5, *range(10, 16))
                                                  for i in range(16)]
    assert w[8] & PM_SWAP and w[8] & PM_GUARD_REGION
    want = [
        (addr, addr + 3 * PAGE, PAGE_IS_PRESENT),
        (addr + 4 * PAGE, addr + 6 * PAGE, PAGE_IS_PRESENT | PAGE_IS_PFNZERO),
        (addr + 8 * PAGE, addr + 9 * PAGE, PAGE_IS_SWAPPED | PAGE_IS_GUARD),
        (addr + 10 * PAGE, end, PAGE_IS_PRESENT),
    ]
    anyof = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    for vec_len in (1, 2, 1024):
        got = pagemap.pagemap_scan(p.pid, addr, end, anyof=anyof, return_mask=CATS,
                                   vec_len=vec_len)
        assert got == want, vec_len
    # A region cut by a full vector is merged back: one region of 6 pages, not 6 of one.
    fd = pagemap.open_pagemap(p.pid)
    try:
        got = pagemap.scan(fd, addr + 10 * PAGE, end, anyof=anyof, return_mask=CATS,
                           vec_len=1, max_pages=0)
        assert got == [(addr + 10 * PAGE, end, PAGE_IS_PRESENT)]
        assert pagemap.scan(fd, addr, end, anyof=anyof, return_mask=CATS, max_pages=4) == [
            (addr, addr + 3 * PAGE, PAGE_IS_PRESENT),
            (addr + 4 * PAGE, addr + 5 * PAGE, PAGE_IS_PRESENT | PAGE_IS_PFNZERO)]
    finally:
        os.close(fd)


def test_large_range_in_batches(procs):
    """3 GiB of address space: pagemap words for it span two 2 MiB preads."""
    p = procs.start()
    n = 3 << 18
    addr = p.mmap("huge", n)  # MAP_PRIVATE anon: nothing is allocated until written
    marks = [0, 1, (1 << 18) - 1, 1 << 18, n - 1]
    p.write("huge", marks, tag=3)
    raw = LinuxHost().pagemap(p.pid, addr, addr + n * PAGE)
    assert len(raw) == n * 8
    present = [i for i in range(0, len(raw), 8) if raw[i + 7] & 0x80]
    assert [i // 8 for i in present] == marks


def test_fallback_when_the_kernel_lacks_pagemap_scan(monkeypatch, mixed):
    """ENOTTY (Linux < 6.7: no ioctl on pagemap) means absent, and the host says None."""
    p, addr = mixed
    real = fcntl.ioctl

    def ioctl(fd, request, *args):
        if request == pagemap.PAGEMAP_SCAN_IOCTL:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        return real(fd, request, *args)

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    assert not pagemap.has_pagemap_scan() and not pagemap.has_page_is_guard()
    host = LinuxHost()
    assert host.pagemap_scan(p.pid, addr, addr + PAGE, PAGE_IS_PRESENT, CATS) is None
    assert len(host.pagemap(p.pid, addr, addr + PAGE)) == 8


def test_unknown_category_is_einval(mixed):
    p, addr = mixed
    with pytest.raises(ProcError) as ei:
        pagemap.pagemap_scan(p.pid, addr, addr + PAGE, return_mask=1 << 20)
    assert ei.value.errno == errno.EINVAL and "PAGEMAP_SCAN" in str(ei.value)


def test_gone_pid(procs):
    p = procs.start()
    pid = p.pid
    procs.end_all()
    with pytest.raises(ProcError, match=f"pid {pid}: /proc/{pid}/pagemap: no such process"):
        LinuxHost().pagemap(pid, 0, PAGE)
