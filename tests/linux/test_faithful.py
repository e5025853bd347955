"""A live dump is faithful (issue 10): it saves every byte a task could read back, whatever
the mapping's protection or the object's size, and leaves the tree as it found it — the
copy-on-write sharing between tasks above all (kernel.md §10).

Each test sets up real processes (tests/linux/helper.py), dumps them through the CLI with
--tree --leave-stopped as a user would, verifies the set against the still-stopped tree, and
looks at the tree itself before and after.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dumper.images.reader import ImageSet
from dumper.kabi import PM_PFRAME_MASK, PROT_NONE
from dumper.linux import LinuxHost, libc

from .conftest import set_kernel_settings
from .procs import PAGE, page_pattern
from .test_live_dump import _COW, cli, info, pattern, set_bytes, settle, verify
from .test_shared import words

pytestmark = pytest.mark.linux


def dump_stopped(out, root: int, *extra: object):
    """`dumper dump --pid ROOT --tree --leave-stopped`: the tree stays stopped for verify."""
    return cli("dump", "--pid", root, "--tree", "--leave-stopped", "--leave-out", "any", "-o", out,
               *extra)


@contextlib.contextmanager
def stopped_after_dump(out, *procs):
    """Dump the tree rooted at procs[0] leaving it stopped; resume every task on the way out
    (SIGCONT, as after criu dump --leave-stopped)."""
    r = dump_stopped(out, procs[0].pid)
    try:
        yield r
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(p.pidfd, signal.SIGCONT)


def dump_verified(out, *procs):
    """dump_stopped, then `dumper verify DIR --pid ROOT` on the stopped tree: both exit 0
    (nothing lost); the tree resumed afterwards. Returns the dump's result."""
    with stopped_after_dump(out, *procs) as r:
        assert r.exit_code == 0, r.output
        v = verify(out, procs[0].pid)
        assert v.exit_code == 0, v.output
    return r


def pss_kb(pid: int) -> int:
    """Pss + SwapPss of a task (/proc/PID/smaps_rollup), in kB."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "SwapPss"):
                total += int(rest.split()[0])
    return total


def test_kernel_fact_process_vm_readv_unshares_and_proc_mem_does_not(procs):
    """kernel.md §10 on this kernel: a read-only pin (process_vm_readv) of a COW-shared page
    gives the target a private copy (gup_must_unshare); /proc/PID/mem does not."""
    parent = procs.start(children=2, cpu=0)
    addr = parent.mmap("priv", 64)
    parent.write("priv", range(64), tag=70)
    host = LinuxHost()
    for method in ("mem", "vm"):
        child = procs.fork(parent)
        settle(parent, child)
        pfn = [w & PM_PFRAME_MASK for w in words(host, child.pid, addr, 64)]
        assert pfn == [w & PM_PFRAME_MASK for w in words(host, parent.pid, addr, 64)]
        buf = bytearray(64 * PAGE)
        if method == "mem":
            fd = os.open(f"/proc/{child.pid}/mem", os.O_RDONLY)
            try:
                assert os.preadv(fd, [buf], addr) == len(buf)
            finally:
                os.close(fd)
        else:
            loc, rem = (libc.IoVec * 1)(), (libc.IoVec * 1)()
            loc[0].iov_base, loc[0].iov_len = ctypes.addressof(
                ctypes.c_char.from_buffer(buf)), len(buf)
            rem[0].iov_base, rem[0].iov_len = addr, len(buf)
            assert libc.process_vm_readv(child.pid, loc, 1, rem, 1) == len(buf)
        assert bytes(buf) == pattern(70, set(range(64)), 64)
        after = [w & PM_PFRAME_MASK for w in words(host, child.pid, addr, 64)]
        same = sum(a == b for a, b in zip(pfn, after, strict=True))
        assert same == (64 if method == "mem" else 0), method


def test_dump_keeps_copy_on_write_sharing(procs, tmp_path):
    """Item 1: after a dump every COW-shared page still has one PFN in both tasks, the
    tree's PSS + SwapPss does not grow, and a second dump finds the same sharing to store
    once."""
    parent = procs.start(children=1, cpu=0)
    addr = parent.mmap("priv", 1024)
    parent.write("priv", range(1024), tag=71)
    child = procs.fork(parent)
    child.write("priv", [0, 1], tag=72)  # the child's own copies
    settle(parent, child)
    host = LinuxHost()

    def pfns(p):
        return [w & PM_PFRAME_MASK for w in words(host, p.pid, addr, 1024)]

    shared = [i for i, (a, b) in enumerate(zip(pfns(parent), pfns(child), strict=True))
              if a == b]
    assert len(shared) == 1022
    before = pss_kb(parent.pid) + pss_kb(child.pid)
    before_pfns = pfns(parent), pfns(child)
    cows = []
    for n in (1, 2):
        out = tmp_path / f"set{n}"
        with stopped_after_dump(out, parent, child) as r:
            assert r.exit_code == 0, r.output
            cows.append(int(_COW.search(r.stdout).group(1)))
            v = verify(out, parent.pid)
            assert v.exit_code == 0, v.output
        settle(parent, child)
        assert (pfns(parent), pfns(child)) == before_pfns
    assert cows[0] == cows[1] >= 1022
    # A few pages of the helpers' own may differ (their interpreters ran between the two
    # looks); 1022 pages unshared would be 4 MiB.
    assert pss_kb(parent.pid) + pss_kb(child.pid) - before < 256
    with ImageSet.open(tmp_path / "set1") as s:
        assert set_bytes(tmp_path / "set1", child.pid, addr, 4) == (
            page_pattern(72, 0) + page_pattern(72, 1) + page_pattern(71, 2) + page_pattern(71, 3))
        assert s.tasks[child.pid].cow


@pytest.mark.parametrize("prot", [PROT_NONE, 2], ids=["PROT_NONE", "PROT_WRITE"])
def test_protected_pages_with_data_are_saved(procs, tmp_path, prot):
    """Item 2: private and shared pages written, then mprotect'ed PROT_NONE or write-only,
    are saved with their data (no warning, exit 0) and verify."""
    p = procs.start(cpu=0)
    priv = p.mmap("priv", 4)
    p.write("priv", range(4), tag=73)
    p.call("mprotect", name="priv", page=1, npages=2, prot=prot)
    shm = p.mmap("shm", 4, shared=True)
    p.write("shm", range(4), tag=74)
    p.call("mprotect", name="shm", page=0, npages=4, prot=prot)
    p.call("memfd", name="m", pages=2)
    p.call("pwrite", name="m", pages=[0, 1], tag=75)
    mfd = p.mmap("mfd", 2, shared=True, memfd="m", prot=prot)
    settle(p)
    out = tmp_path / "set"
    r = dump_verified(out, p)
    assert "unreadable" not in r.output
    assert set_bytes(out, p.pid, priv, 4) == pattern(73, set(range(4)), 4)
    assert set_bytes(out, p.pid, shm, 4) == pattern(74, set(range(4)), 4)
    assert set_bytes(out, p.pid, mfd, 2) == pattern(75, {0, 1}, 2)


@pytest.mark.parametrize("kind,size", [("sysv", 56), ("sysv", 5000), ("memfd", 6),
                                       ("memfd", 3 * PAGE + 100)])
def test_objects_of_any_size(procs, tmp_path, kind, size):
    """Item 3: a SysV segment of 56 bytes (PostgreSQL's interlock segment) or 5000, a memfd
    of 6 bytes: the object's size is stored exactly, its last partial page whole (zeros
    past EOF)."""
    p = procs.start(cpu=0)
    npages = -(-size // PAGE)
    if kind == "sysv":
        addr = p.call("shm", name="o", size=size)["addr"]
    else:
        p.call("memfd", name="o", size=size)
        addr = p.mmap("o", npages, shared=True, memfd="o")
    p.call("write_bytes", name="o", offset=0, length=size, tag=76)
    settle(p)
    out = tmp_path / "set"
    dump_verified(out, p)
    (obj,) = info(out)["objects"]
    assert (obj["kind"], obj["size"], obj["pages"]) == (kind, size, npages)
    want = (page_pattern(76, 0) * npages)[:size].ljust(npages * PAGE, b"\0")
    assert set_bytes(out, p.pid, addr, npages) == want


@pytest.fixture
def shm_file():
    """An 8-page file on /dev/shm (tmpfs), removed in every outcome."""
    path = f"/dev/shm/dumper-faithful-{os.getpid()}"
    with open(path, "wb") as f:
        f.truncate(8 * PAGE)
    try:
        yield path
    finally:
        os.unlink(path)


@pytest.mark.parametrize("kind", ["memfd", "tmpfs"])
def test_private_mapping_of_a_shmem_file(procs, tmp_path, shm_file, kind):
    """Item 5: MAP_PRIVATE of a memfd or a tmpfs file: the pages the task wrote are its own
    (COW, private memory), the ones it still reads from the file are the object's, dumped
    once."""
    p = procs.start(cpu=0)
    if kind == "memfd":
        p.call("memfd", name="m", pages=8)
    else:
        p.call("open", name="m", path=shm_file)
    p.call("pwrite", name="m", pages=list(range(8)), tag=77)
    addr = p.mmap("v", 8, memfd="m")  # MAP_PRIVATE
    p.write("v", [2, 5], tag=78)
    p.call("read", name="v", pages=[0, 1])
    shared = p.mmap("s", 8, shared=True, memfd="m")
    settle(p)
    out = tmp_path / "set"
    dump_verified(out, p)
    (obj,) = info(out)["objects"]
    assert (obj["kind"], obj["pages"]) == (kind, 8)
    with ImageSet.open(out) as s:
        t = s.tasks[p.pid]
        assert [(r.vaddr, r.nr_pages) for r in t.pagemap if addr <= r.vaddr < addr + 8 * PAGE
                ] == [(addr + 2 * PAGE, 1), (addr + 5 * PAGE, 1)]
    want = b"".join(page_pattern(78 if q in (2, 5) else 77, q) for q in range(8))
    assert set_bytes(out, p.pid, addr, 8) == want
    assert set_bytes(out, p.pid, shared, 8) == pattern(77, set(range(8)), 8)


def test_private_mapping_of_a_memfd_at_an_offset_over_holes(procs, tmp_path):
    """Item 5, the object side: a memfd mapped only MAP_PRIVATE, at object page 2, its fd
    closed, partly holes: kind memfd (not a plain tmpfs file), holes read zeros, the pages
    the task wrote are its own, the ones it read are the object's."""
    p = procs.start(cpu=0)
    p.call("memfd", name="m", pages=8)
    p.call("pwrite", name="m", pages=[0, 1, 2, 3], tag=79)
    addr = p.mmap("v", 6, memfd="m", offset=2)
    p.write("v", [2, 5], tag=80)
    p.call("read", name="v", pages=[0, 1, 4])
    p.call("close_memfd", name="m")
    settle(p)
    out = tmp_path / "set"
    dump_verified(out, p)
    (obj,) = info(out)["objects"]
    assert (obj["kind"], obj["name"]) == ("memfd", "m")
    want = [page_pattern(79, 2), page_pattern(79, 3), page_pattern(80, 2), bytes(PAGE),
            bytes(PAGE), page_pattern(80, 5)]
    assert set_bytes(out, p.pid, addr, 6) == b"".join(want)


@pytest.fixture
def hugepages():
    """vm.nr_hugepages raised to 16 (2 MiB pages) for the test, put back in every outcome."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        before = int(f.read())
    with set_kernel_settings({path: str(before + 16)}):
        with open(path) as f:
            if int(f.read()) < before + 16:
                pytest.skip("the kernel could not reserve 16 huge pages")
        yield


HUGE = 512  # 4 KiB pages in a 2 MiB huge page


@pytest.mark.parametrize("kind", ["shmem-anon", "memfd", "sysv"])
def test_shared_hugetlb_objects_are_dumped_once(procs, tmp_path, hugepages, kind):
    """Item 4: MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB, a MFD_HUGETLB memfd and a SHM_HUGETLB
    segment are shared objects: dumped once through the object in huge pages (the page size
    recorded), a huge page never written left a hole, and the sharer verifies."""
    parent = procs.start(children=1, cpu=0)
    if kind == "shmem-anon":
        addr = parent.call("mmap_huge", name="h", pages=3 * HUGE, shared=True)["addr"]
    elif kind == "memfd":
        parent.call("memfd", name="h", size=3 * HUGE * PAGE, huge=True)
        addr = parent.call("mmap_huge", name="h", pages=3 * HUGE, shared=True,
                           memfd="h")["addr"]
    else:
        addr = parent.call("shm", name="h", size=3 * HUGE * PAGE, huge=True)["addr"]
    parent.write("h", [0, 5, 2 * HUGE + 1], tag=81)  # huge pages 0 and 2; 1 stays a hole
    child = procs.fork(parent)
    settle(parent, child)
    out = tmp_path / "set"
    r = dump_verified(out, parent, child)
    assert not any(n in r.output for n in ("anon_hugepage", "memfd:h", "SYSV"))
    (obj,) = info(out)["objects"]
    assert (obj["kind"], obj["size"], obj["pages"], obj["page_size"]) == (
        kind, 3 * HUGE * PAGE, 2 * HUGE, HUGE * PAGE)
    with ImageSet.open(out) as s:
        (o,) = s.objects.values()
        assert o.page_size == HUGE * PAGE
        assert [(r_.vaddr // PAGE, r_.nr_pages) for r_ in o.pagemap] == [
            (0, HUGE), (2 * HUGE, HUGE)]
        vma = next(v for v in s.tasks[child.pid].vmas if v.start == addr)
        assert vma.flags & 0x40000 and vma.flags >> 26 == 21  # MAP_HUGETLB | MAP_HUGE_2MB
    for page in (0, 5, 2 * HUGE + 1, HUGE):
        want = page_pattern(81, page) if page != HUGE else bytes(PAGE)
        assert set_bytes(out, child.pid, addr + page * PAGE, 1) == want


def test_private_hugetlb_is_anonymous_in_huge_pages(procs, tmp_path, hugepages):
    """Item 4, private: MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB is anonymous memory with its
    page size (MAP_HUGE_2MB), not a private mapping of the file "/anon_hugepage"; its pages
    are the task's own."""
    p = procs.start(cpu=0)
    addr = p.call("mmap_huge", name="h", pages=2 * HUGE)["addr"]
    p.write("h", [0, 1, HUGE + 7], tag=82)
    settle(p)
    out = tmp_path / "set"
    r = dump_verified(out, p)
    assert "anon_hugepage" not in r.output
    with ImageSet.open(out) as s:
        vma = next(v for v in s.tasks[p.pid].vmas if v.start == addr)
        assert vma.private and vma.obj is None and not vma.path
        assert vma.flags & 0x20 and vma.flags & 0x40000 and vma.flags >> 26 == 21
        assert not s.objects
    for page in (0, 1, HUGE + 7, 3):
        want = page_pattern(82, page) if page != 3 else bytes(PAGE)
        assert set_bytes(out, p.pid, addr + page * PAGE, 1) == want


def test_a_sleeping_task_verifies(tmp_path):
    """glibc's sleep() passes a rem timespec to clock_nanosleep, and the kernel writes the
    remaining time there at every interruption (nanosleep_copyout) — every freeze, the
    dump's and verify's: the dump itself leaves the task as it was, and verify compares that
    timespec out (Host.kernel_areas, and the dumped registers once the sleep restarts
    through restart_syscall). Found by `dumper dump --pid` + `verify --pid` of `sleep 100`."""
    sleep = subprocess.Popen([shutil.which("sleep") or "/bin/sleep", "120"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        syscall = Path(f"/proc/{sleep.pid}/syscall")
        while syscall.read_text().split()[0] != "230":
            assert time.monotonic() < deadline, "sleep never blocked in clock_nanosleep"
            time.sleep(0.01)
        out = tmp_path / "set"
        r = cli("dump", "--pid", sleep.pid, "--leave-out", "any", "-q", "-o", out)
        assert r.exit_code == 0, r.output
        for _ in range(2):  # the second freeze finds the sleep restarted (restart_syscall)
            v = verify(out, sleep.pid)
            assert v.exit_code == 0, v.output
            assert "differing only where the kernel rewrites them" in v.output
    finally:
        sleep.kill()
        sleep.wait()
