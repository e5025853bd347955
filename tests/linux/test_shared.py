"""Shared memory seen from outside: map_files identity, SEEK_DATA/SEEK_HOLE, pread, mincore."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from dumper.host import parse_maps
from dumper.kabi import (
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PAGEMAP_SCAN_CATEGORIES,
    PM_FILE,
    PM_PRESENT,
    SEEK_DATA,
    SEEK_HOLE,
)
from dumper.linux import LinuxHost, ProcError, Unsupported, procfs

from .procs import PAGE, page_pattern

pytestmark = pytest.mark.linux


def words(host: LinuxHost, pid: int, addr: int, npages: int) -> list[int]:
    raw = host.pagemap(pid, addr, addr + npages * PAGE)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def expected(pages: dict[int, tuple[int, int]], npages: int) -> bytes:
    """Object bytes: page -> (tag, helper page index) written there, zeros elsewhere."""
    return b"".join(page_pattern(*pages[p]) if p in pages else bytes(PAGE)
                    for p in range(npages))


def vma(pid: int, addr: int):
    return next(e for e in parse_maps(procfs.read_maps(pid)) if e.start == addr)


def test_fork_then_parent_unmaps(procs):
    """Scenario 2: the child has no PTEs for the shared region (vma_needs_copy: no anon_vma),
    so pagemap and PAGEMAP_SCAN see nothing; map_files sees every page, byte for byte, and
    looking changes nothing in the child."""
    host = LinuxHost()
    parent = procs.start(children=1)
    addr = parent.mmap("shm", 8, shared=True)
    parent.write("shm", [0, 1, 2, 5], tag=7)
    child = procs.fork(parent)
    parent.call("munmap", name="shm")
    end = addr + 8 * PAGE

    assert all(e.start != addr for e in parse_maps(host.maps(parent.pid)))
    entry = vma(child.pid, addr)
    assert entry.shared and entry.path == "/dev/zero (deleted)"
    assert words(host, child.pid, addr, 8) == [0] * 8
    anyof = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    assert host.pagemap_scan(child.pid, addr, end, anyof, PAGEMAP_SCAN_CATEGORIES) == []

    with host.open_object(child.pid, addr, end) as obj:
        st = obj.stat()
        assert (st.dev, st.ino, st.size) == (
            os.makedev(entry.dev_major, entry.dev_minor), entry.ino, 8 * PAGE)
        assert obj.data_extents() == [(0, 3 * PAGE), (5 * PAGE, 6 * PAGE)]
        assert obj.pread(0, 8 * PAGE) == expected({p: (7, p) for p in (0, 1, 2, 5)}, 8)
    assert [b & 1 for b in host.mincore(child.pid, addr, end)] == [1, 1, 1, 0, 0, 1, 0, 0]

    assert words(host, child.pid, addr, 8) == [0] * 8
    assert procfs.smaps_of(child.pid, addr).rss_kb == 0


def test_memfd_passed_by_scm_rights_at_different_offsets(procs):
    """Two unrelated processes map one memfd at object pages 0-7 and 6-13: the same (dev, ino)
    from both map_files entries, and each sees the other's writes only through the object."""
    host = LinuxHost()
    sa, sb = socket.socketpair()
    a = procs.start(fds={"peer": sa.fileno()})
    b = procs.start(fds={"peer": sb.fileno()})
    sa.close()
    sb.close()
    a.call("memfd", name="m", pages=16)
    a.call("pwrite", name="m", pages=[0, 1, 2, 3, 8, 9, 10], tag=3)
    a.call("send_fd", memfd="m", sock="peer")
    b.call("recv_fd", memfd="m", sock="peer")
    a_addr = a.mmap("v", 8, shared=True, memfd="m", offset=0)
    b_addr = b.mmap("v", 8, shared=True, memfd="m", offset=6)
    b.write("v", [1], tag=4)  # object page 7

    ea, eb = vma(a.pid, a_addr), vma(b.pid, b_addr)
    assert ea.path == eb.path == "/memfd:m (deleted)"
    assert (ea.pgoff, eb.pgoff) == (0, 6 * PAGE) and ea.ino == eb.ino
    want = expected({**{p: (3, p) for p in (0, 1, 2, 3, 8, 9, 10)}, 7: (4, 1)}, 16)
    with host.open_object(a.pid, a_addr, a_addr + 8 * PAGE) as oa, \
         host.open_object(b.pid, b_addr, b_addr + 8 * PAGE) as ob:
        assert oa.stat() == ob.stat()
        assert oa.stat().size == 16 * PAGE
        assert oa.data_extents() == ob.data_extents() == [(0, 4 * PAGE), (7 * PAGE, 11 * PAGE)]
        assert oa.pread(0, 16 * PAGE) == ob.pread(0, 16 * PAGE) == want
    assert words(host, a.pid, a_addr, 8) == [0] * 8  # A never touched its mapping
    wb = words(host, b.pid, b_addr, 8)
    assert [w & (PM_PRESENT | PM_FILE) for w in wb] == [0, PM_PRESENT | PM_FILE] + [0] * 6
    mc_a = host.mincore(a.pid, a_addr, a_addr + 8 * PAGE)
    mc_b = host.mincore(b.pid, b_addr + PAGE, b_addr + 6 * PAGE)
    assert [x & 1 for x in mc_a] == [1, 1, 1, 1, 0, 0, 0, 1]
    assert [x & 1 for x in mc_b] == [1, 1, 1, 1, 0]


def test_punched_holes(procs):
    """fallocate(PUNCH_HOLE) and MADV_REMOVE leave holes SEEK_HOLE finds; pread returns zeros
    there without allocating them (extents unchanged afterwards)."""
    host = LinuxHost()
    p = procs.start()
    p.call("memfd", name="m", pages=8)
    p.call("pwrite", name="m", pages=list(range(8)), tag=5)
    p.call("punch", name="m", page=2, npages=2)
    addr = p.mmap("v", 8, shared=True, memfd="m")
    p.call("madvise", name="v", page=5, npages=1, advice=9)  # MADV_REMOVE
    with host.open_object(p.pid, addr, addr + 8 * PAGE) as obj:
        assert obj.lseek(0, SEEK_HOLE) == 2 * PAGE
        assert obj.lseek(2 * PAGE, SEEK_DATA) == 4 * PAGE
        assert obj.lseek(5 * PAGE, SEEK_DATA) == 6 * PAGE
        with pytest.raises(OSError) as ei:
            obj.lseek(8 * PAGE, SEEK_DATA)
        assert ei.value.errno == errno.ENXIO
        extents = [(0, 2 * PAGE), (4 * PAGE, 5 * PAGE), (6 * PAGE, 8 * PAGE)]
        assert obj.data_extents() == extents
        assert obj.data_extents(PAGE, 7 * PAGE) == [(PAGE, 2 * PAGE), (4 * PAGE, 5 * PAGE),
                                                     (6 * PAGE, 7 * PAGE)]
        assert obj.pread(0, 8 * PAGE) == expected({q: (5, q) for q in (0, 1, 4, 6, 7)}, 8)
        assert obj.data_extents() == extents
        assert obj.pread(7 * PAGE, 4 * PAGE) == page_pattern(5, 7)  # short at end of file


def test_private_ranges_are_refused_clearly(procs):
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 2)
    with pytest.raises(Unsupported, match=f"pid {p.pid}: mincore of {addr:#x}"):
        host.mincore(p.pid, addr, addr + PAGE)
    with pytest.raises(ProcError) as ei:
        host.open_object(p.pid, addr, addr + 2 * PAGE)
    assert ei.value.errno == errno.ENOENT
    assert "map_files" in str(ei.value) and "no file-backed mapping" in str(ei.value)
