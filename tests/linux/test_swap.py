"""With a swapfile: MADV_PAGEOUT of shared memory (pagemap blind, SEEK_DATA sees it and does
not swap it in) and of private memory (PM_SWAP with type and offset)."""

from __future__ import annotations

import pytest

from dumper.kabi import (
    MADV_PAGEOUT,
    MAX_SWAPFILES,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PM_FILE,
    PM_PRESENT,
    PM_SWAP,
    decode_frame,
)
from dumper.linux import LinuxHost, check, procfs

from .conftest import _active_swaps
from .procs import PAGE, page_pattern
from .test_shared import words

pytestmark = pytest.mark.linux


def all_pages(tag: int, n: int) -> bytes:
    return b"".join(page_pattern(tag, p) for p in range(n))


def test_check_sees_the_swap(swap):
    c = check.check_swap()
    assert c.ok and swap in c.detail


def test_pageout_of_shared_memory(procs, swap):
    """shrink_folio_list -> try_to_unmap leaves no entry in a shmem pte, so pagemap shows
    nothing where the data went to swap; the object's xarray holds swap value entries, which
    mapping_seek_hole_data counts as data without reading them. pread through map_files swaps
    them into the page cache, not into the target's page tables."""
    host = LinuxHost()
    p = procs.start(cpu=0)
    addr = p.mmap("shm", 8, shared=True)
    end = addr + 8 * PAGE
    p.write("shm", range(8), tag=11)
    p.call("madvise", name="shm", page=0, npages=4, advice=MADV_PAGEOUT)

    w = words(host, p.pid, addr, 8)
    assert w[:4] == [0] * 4
    assert [x & (PM_PRESENT | PM_FILE) for x in w[4:]] == [PM_PRESENT | PM_FILE] * 4
    sm = procfs.smaps_of(p.pid, addr)
    assert (sm.rss_kb, sm.swap_kb, sm.swap_pss_kb) == (16, 16, 0)
    assert host.pagemap_scan(p.pid, addr, end, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                             PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == [
        (addr + 4 * PAGE, end, PAGE_IS_PRESENT)]

    with host.open_object(p.pid, addr, end) as obj:
        assert obj.data_extents() == [(0, 8 * PAGE)]
        assert obj.data_extents() == [(0, 8 * PAGE)]
        assert procfs.smaps_of(p.pid, addr).swap_kb == 16  # lseek swapped nothing in
        assert [b & 1 for b in host.mincore(p.pid, addr + 4 * PAGE, end)] == [1] * 4
        assert obj.pread(0, 8 * PAGE) == all_pages(11, 8)
    sm = procfs.smaps_of(p.pid, addr)
    assert (sm.swap_kb, sm.rss_kb) == (0, 16)  # in the page cache now, still not mapped
    assert words(host, p.pid, addr, 4) == [0] * 4


def test_pageout_of_private_memory(procs, swap):
    host = LinuxHost()
    p = procs.start(cpu=0)
    addr = p.mmap("priv", 8)
    end = addr + 8 * PAGE
    p.write("priv", range(8), tag=12)
    p.call("madvise", name="priv", page=0, npages=4, advice=MADV_PAGEOUT)

    w = words(host, p.pid, addr, 8)
    assert [x & (PM_PRESENT | PM_SWAP | PM_FILE) for x in w] == [PM_SWAP] * 4 + [PM_PRESENT] * 4
    slots = [decode_frame(x) for x in w[:4]]
    assert all(t < MAX_SWAPFILES and off > 0 for t, off in slots)
    assert len({off for _, off in slots}) == 4
    if _active_swaps() == [swap]:
        assert {t for t, _ in slots} == {0}
    sm = procfs.smaps_of(p.pid, addr)
    assert (sm.rss_kb, sm.swap_kb, sm.swap_pss_kb) == (16, 16, 16)
    assert host.pagemap_scan(p.pid, addr, end, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                             PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == [
        (addr, addr + 4 * PAGE, PAGE_IS_SWAPPED), (addr + 4 * PAGE, end, PAGE_IS_PRESENT)]

    assert host.read_memory(p.pid, addr, end) == all_pages(12, 8)
