"""LinuxHost's ground truth (truth(), zero_pfn(), ObjectStat.shmem) against bytes the test
knows, and the rule that asking never changes the target's page tables."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dumper.images.checksums import page_digest
from dumper.kabi import MADV_GUARD_INSTALL, PM_PFRAME_MASK, PROT_NONE
from dumper.linux import LinuxHost, UnreadableMemory
from dumper.linux.truth import UNREADABLE_DIGEST, ZERO_DIGEST

from .procs import PAGE, page_pattern
from .test_shared import words

pytestmark = pytest.mark.linux


def digests(host: LinuxHost, pid: int, addr: int, n: int) -> list[int]:
    """The digests of n pages from addr, across the VMAs that cover them."""
    out: list[int] = []
    for start, ds in host.truth(pid):
        if start == addr + len(out) * PAGE and (out or start == addr):
            out += [int(x) for x in ds]
    return out[:n]


def d(tag: int, page: int) -> int:
    return page_digest(page_pattern(tag, page))


@pytest.fixture
def disk_file():
    """A 4-page regular file on the root filesystem."""
    path = f"/var/tmp/dumper-truth-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(b"".join(page_pattern(90, p) for p in range(4)))
    try:
        yield path
    finally:
        os.unlink(path)


def test_private_anonymous(procs):
    """Written pages, the zero page, none ptes, a guard marker and a PROT_NONE page with data
    (its bytes: /proc/PID/mem reads through the protection); the target's pagemap is the
    same before and after."""
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 8)  # fenced by PROT_NONE pages: the run of VMAs ends at addr + 8
    p.write("priv", [0, 1, 5, 6], tag=3)
    p.call("read", name="priv", pages=[2])
    p.call("madvise", name="priv", page=3, npages=1, advice=MADV_GUARD_INSTALL)
    p.call("mprotect", name="priv", page=6, npages=1, prot=PROT_NONE)
    before = words(host, p.pid, addr, 8)
    assert digests(host, p.pid, addr, 8) == [d(3, 0), d(3, 1), ZERO_DIGEST, UNREADABLE_DIGEST,
                                              ZERO_DIGEST, d(3, 5), d(3, 6), ZERO_DIGEST]
    assert words(host, p.pid, addr, 8) == before
    assert ZERO_DIGEST == page_digest(bytes(PAGE)) != UNREADABLE_DIGEST


def test_shared_holes_and_past_eof(procs):
    """A memfd of 4 pages mapped over 8: holes read zeros, pages past i_size would SIGBUS."""
    host = LinuxHost()
    p = procs.start()
    p.call("memfd", name="m", pages=4)
    p.call("pwrite", name="m", pages=[0, 2], tag=4)
    addr = p.mmap("v", 8, shared=True, memfd="m")
    assert digests(host, p.pid, addr, 8) == [d(4, 0), ZERO_DIGEST, d(4, 2), ZERO_DIGEST] + [
        UNREADABLE_DIGEST] * 4
    assert words(host, p.pid, addr, 8) == [0] * 8
    assert host.open_object(p.pid, addr, addr + 8 * PAGE).stat().shmem


def test_private_file_mapping(procs, disk_file):
    """MAP_PRIVATE of an ext4 file: untouched pages are the file's (read through map_files),
    a written page the task's own copy, pages past the end unreadable; not shmem."""
    host = LinuxHost()
    p = procs.start()
    p.call("open", name="f", path=disk_file)
    addr = p.mmap("v", 6, memfd="f")
    p.write("v", [1], tag=5)
    before = words(host, p.pid, addr, 6)
    assert digests(host, p.pid, addr, 6) == [d(90, 0), d(5, 1), d(90, 2), d(90, 3),
                                          UNREADABLE_DIGEST, UNREADABLE_DIGEST]
    assert words(host, p.pid, addr, 6) == before
    st = host.open_object(p.pid, addr, addr + 6 * PAGE).stat()
    assert not st.shmem and st.size == 4 * PAGE


def test_shared_anonymous_is_shmem(procs):
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("shm", 2, shared=True)
    with host.open_object(p.pid, addr, addr + 2 * PAGE) as obj:
        assert obj.stat().shmem


def test_zero_pfn_is_the_pfn_of_a_read_fault(procs):
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 1)
    p.call("read", name="priv", pages=[0])
    assert host.zero_pfn() == words(host, p.pid, addr, 1)[0] & PM_PFRAME_MASK != 0


def test_unreadable_memory_is_an_efault_oserror():
    err = UnreadableMemory(42, [(0x1000, 0x2000)])
    assert isinstance(err, OSError) and err.errno == errno.EFAULT
    assert str(err) == "pid 42: /proc/42/mem cannot read 0x1000-0x2000"


def test_prot_none_and_write_only_pages_read_their_data(procs):
    """/proc/PID/mem reads with FOLL_FORCE (mem_rw): a page written, then mprotect'ed
    PROT_NONE or PROT_WRITE-only, reads its bytes; nothing is faulted in."""
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 3)
    p.write("priv", [0, 1], tag=6)
    p.call("mprotect", name="priv", page=0, npages=1, prot=PROT_NONE)
    p.call("mprotect", name="priv", page=1, npages=1, prot=2)  # PROT_WRITE
    before = words(host, p.pid, addr, 3)
    assert host.read_memory(p.pid, addr, addr + 3 * PAGE) == (
        page_pattern(6, 0) + page_pattern(6, 1) + bytes(PAGE))
    assert words(host, p.pid, addr, 3) == before


def test_tree_root_has_no_parent_and_no_gate_area(procs):
    host = LinuxHost()
    parent = procs.start(children=1)
    child = procs.fork(parent)
    tasks = host.tasks(parent.pid)
    assert [(t.pid, t.ppid) for t in tasks] == [(parent.pid, 0), (child.pid, parent.pid)]
    assert "[vsyscall]" not in host.maps(parent.pid)
    starts = [s for s, _ in host.truth(parent.pid)]
    assert starts == sorted(starts) and all(s < 1 << 63 for s in starts)


def test_truth_of_a_large_region_is_exact(procs):
    """More than one read window (8 MiB) and digests spread over threads: still in order."""
    host = LinuxHost()
    p = procs.start()
    n = 3000
    addr = p.mmap("big", n)
    written = list(range(0, n, 3))
    p.write("big", written, tag=8)
    got = np.array(digests(host, p.pid, addr, n), dtype=np.uint64)
    want = np.full(n, ZERO_DIGEST, dtype=np.uint64)
    want[written] = [d(8, q) for q in written]
    assert np.array_equal(got, want)


def test_digest_cache_reuses_only_unchanged_pages():
    """Digests of a read chunk come back for pages whose pagemap word is unchanged, never
    for the zero page, a file page, an unreadable page or a page whose word changed."""
    from dumper.kabi import PM_FILE, PM_PRESENT
    from dumper.linux.digestcache import DigestCache

    start = 0x10000000
    data = b"".join(page_pattern(11, q) for q in range(6))
    w = np.array([PM_PRESENT | 100, PM_PRESENT | 101, PM_PRESENT | 7, PM_PRESENT | PM_FILE | 9,
                  PM_PRESENT | 102, 0], dtype="<u8")
    cache = DigestCache(zero_pfn=7)
    try:
        cache.add_private(42, start, w.tobytes(), bytearray(data),
                          bad=[(start + 4 * PAGE, start + 5 * PAGE)])
        now = w.copy()
        now[1] = PM_PRESENT | 555  # another page now
        have, digs = cache.lookup_private(42, start, now)
        assert have.tolist() == [True, False, False, False, False, False]
        assert int(digs[0]) == d(11, 0)
        have, _ = cache.lookup_private(43, start, w)  # another task
        assert not have.any()
        have, digs = cache.lookup_private(42, start + PAGE, w[1:3])  # a window inside
        assert have.tolist() == [True, False] and int(digs[0]) == d(11, 1)

        cache.add_object((1, 2), 2 * PAGE, data[: 3 * PAGE] + b"x")  # short: 3 whole pages
        have, digs = cache.lookup_object((1, 2), PAGE, 5)
        assert have.tolist() == [False, True, True, True, False]
        assert [int(x) for x in digs[1:4]] == [d(11, 0), d(11, 1), d(11, 2)]
    finally:
        cache.close()


def test_cache_lives_only_while_frozen(procs):
    host = LinuxHost()
    p = procs.start()
    addr = p.mmap("priv", 4)
    p.write("priv", range(4), tag=12)
    with host.freeze([p.pid]):
        host.read_memory(p.pid, addr, addr + 4 * PAGE)
        assert host._cache is not None
        assert digests(host, p.pid, addr, 4) == [d(12, q) for q in range(4)]
    assert host._cache is None
