"""Private memory: pagemap after fork (COW), and /proc/PID/mem reads that never populate nor
unshare."""

from __future__ import annotations

import pytest

from dumper.kabi import (
    MADV_GUARD_INSTALL,
    PM_FILE,
    PM_GUARD_REGION,
    PM_MMAP_EXCLUSIVE,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SWAP,
    PROT_NONE,
)
from dumper.linux import LinuxHost, memread

from .procs import PAGE, page_pattern
from .test_shared import words

pytestmark = pytest.mark.linux


def pattern_range(tag: int, npages: int, written) -> bytes:
    return b"".join(page_pattern(tag, p) if p in written else bytes(PAGE) for p in range(npages))


def test_cow_after_fork_shares_pfns(procs):
    """copy_page_range write-protects both sides: same PFNs, PM_MMAP_EXCLUSIVE gone in both;
    the child's write gives it a new PFN and makes both pages exclusive again."""
    host = LinuxHost()
    assert host.show_pfn()
    parent = procs.start(children=1)
    addr = parent.mmap("priv", 8)
    parent.write("priv", range(4), tag=9)
    parent.call("read", name="priv", pages=[4])  # zero page
    child = procs.fork(parent)
    pw, cw = words(host, parent.pid, addr, 8), words(host, child.pid, addr, 8)
    assert [w & PM_PFRAME_MASK for w in pw[:5]] == [w & PM_PFRAME_MASK for w in cw[:5]]
    assert all(w & PM_PFRAME_MASK for w in cw[:5])
    flags = PM_PRESENT | PM_SWAP | PM_FILE | PM_MMAP_EXCLUSIVE
    assert [w & flags for w in cw] == [PM_PRESENT] * 5 + [0] * 3
    assert [w & flags for w in pw] == [PM_PRESENT] * 5 + [0] * 3

    child.write("priv", [1], tag=10)
    pw, cw = words(host, parent.pid, addr, 8), words(host, child.pid, addr, 8)
    assert pw[1] & PM_PFRAME_MASK != cw[1] & PM_PFRAME_MASK
    assert pw[1] & PM_MMAP_EXCLUSIVE and cw[1] & PM_MMAP_EXCLUSIVE
    assert [pw[i] == cw[i] for i in (0, 2, 3, 4)] == [True] * 4

    got = host.read_memory(child.pid, addr, addr + 8 * PAGE)
    assert got == b"".join([page_pattern(9, 0), page_pattern(10, 1), page_pattern(9, 2),
                            page_pattern(9, 3), bytes(4 * PAGE)])
    assert host.read_memory(parent.pid, addr, addr + 8 * PAGE) == pattern_range(9, 8, range(4))


def test_read_memory_does_not_populate(procs):
    """Kernel fact: a /proc/PID/mem read of a none pte in private anon maps the zero page
    into the target (GUP read fault), so read_memory only reads what pagemap shows as
    data."""
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 8)
    p.write("priv", [0, 7], tag=2)
    before = words(host, p.pid, addr, 8)
    assert host.read_memory(p.pid, addr, addr + 8 * PAGE) == pattern_range(2, 8, {0, 7})
    assert words(host, p.pid, addr, 8) == before
    assert [w & PM_PRESENT for w in before[1:7]] == [0] * 6

    # What a blind read would have done:
    buf = bytearray(8 * PAGE)
    assert memread.read_runs(p.pid, [(addr, addr + 8 * PAGE, 0)], buf) == []
    assert bytes(buf) == pattern_range(2, 8, {0, 7})
    after = words(host, p.pid, addr, 8)
    assert all(w & PM_PRESENT for w in after)
    assert len({w & PM_PFRAME_MASK for w in after[1:7]}) == 1  # one zero page, six times


def test_batches_partial_reads_and_unreadable_pages(procs):
    """1100 separate runs; a PROT_NONE page with data in the middle is read (FOLL_FORCE); a
    guard page is not read at all by read_memory (pagemap PM_SWAP|PM_GUARD_REGION), and a
    blind read over it ends short there (mem_rw: -EIO once nothing was copied): the page is
    reported, the rest of the run read."""
    host = LinuxHost()
    p = procs.start()
    n = 2200
    addr = p.mmap("big", n)
    written = set(range(0, n, 2))
    p.write("big", sorted(written), tag=4)
    p.call("mprotect", name="big", page=1000, npages=1, prot=PROT_NONE)
    p.call("madvise", name="big", page=1001, npages=1, advice=MADV_GUARD_INSTALL)
    w = words(host, p.pid, addr + 1001 * PAGE, 1)[0]
    assert w & PM_SWAP and w & PM_GUARD_REGION

    data, bad = host.read_memory_partial(p.pid, addr, addr + n * PAGE)
    assert bad == []
    assert data == pattern_range(4, n, written)

    buf = bytearray(b"\xff" * (8 * PAGE))
    lo = addr + 998 * PAGE
    bad = memread.read_runs(p.pid, [(lo, lo + 8 * PAGE, 0)], buf)
    assert bad == [(addr + 1001 * PAGE, addr + 1002 * PAGE)]
    assert buf[3 * PAGE : 4 * PAGE] == b"\xff" * PAGE  # left untouched
    assert buf[: 3 * PAGE] + buf[4 * PAGE :] == b"".join(
        page_pattern(4, q) if q % 2 == 0 else bytes(PAGE) for q in (998, 999, 1000, 1002, 1003,
                                                                     1004, 1005))


def test_read_into_a_reused_buffer(procs):
    """Gaps (none ptes) come back as zeros whatever the buffer held; a PROT_NONE page its
    data."""
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 8)
    p.write("priv", [1, 2, 6], tag=6)
    p.call("mprotect", name="priv", page=2, npages=1, prot=PROT_NONE)
    buf = bytearray(b"\xff" * (8 * PAGE))
    assert host.read_memory_into(p.pid, addr, buf) == []
    assert buf == pattern_range(6, 8, {1, 2, 6})
    with pytest.raises(ValueError, match="does not fit"):
        memread.read_runs(p.pid, [(addr, addr + 2 * PAGE, 7 * PAGE)], buf)
