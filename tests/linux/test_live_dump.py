"""Live dumps end to end: helper processes set up each case, then `dumper dump --pid ROOT
--tree`, `dumper verify DIR --pid ROOT` (exit 0: nothing lost; 1: lost pages named) and
`dumper inspect info` through the command line, and the set's bytes against the live ones.

Helpers are pinned to CPU 0 (cpu=0): MADV_PAGEOUT drains only the calling CPU's LRU
batches; and a task moved to another CPU gets its rseq cpu_id rewritten by the kernel on its
next return to user space, which a freeze/thaw cycle is (measured: two u32s of the main
thread's TLS changed 0 -> 1 between a dump and a verify) — verify compares struct rseq out
(test_verify_ignores_what_the_kernel_writes_into_struct_rseq), the other tests need not
meet it. settle() waits until each helper sleeps in read(2) (Proc.quiesce).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner, Result

from dumper.cli import main
from dumper.images.reader import ImageSet
from dumper.kabi import (
    MADV_GUARD_INSTALL,
    MADV_PAGEOUT,
    MADV_REMOVE,
    PM_PRESENT,
    PM_SWAP,
    SEEK_DATA,
)
from dumper.linux import LinuxHost, procfs

from .procs import PAGE, Proc, page_pattern
from .test_shared import words

pytestmark = pytest.mark.linux

_LOST = re.compile(r"lost: pid (\d+) (0x[0-9a-f]+) ")
_COW = re.compile(r"\((\d+) COW-shared stored once\)")


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def dump(out, root: int, strategy: str = "auto") -> Result:
    r = cli("dump", "--pid", root, "--tree", "--strategy", strategy, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("dumped "), r.output
    return r


def verify(out, root: int) -> Result:
    return cli("verify", out, "--pid", root, "--show", 100000)


def lost(r: Result) -> set[tuple[int, int]]:
    return {(int(p), int(a, 16)) for p, a in _LOST.findall(r.stdout)}


def info(out) -> dict:
    r = cli("inspect", "info", out, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def settle(*procs: Proc) -> None:
    for p in procs:
        p.quiesce()


def pattern(tag: int, pages, npages: int) -> bytes:
    return b"".join(page_pattern(tag, p) if p in pages else bytes(PAGE) for p in range(npages))


def set_bytes(out, pid: int, addr: int, npages: int) -> bytes:
    """What a restore from the set gives pid at [addr, +npages): its page, a COW source's, its
    object's, or zeros."""
    with ImageSet.open(out) as s:
        return b"".join(s.read_page(pid, addr + i * PAGE).data or bytes(PAGE)
                        for i in range(npages))


def fork_then_unmap(procs, written: set[int], tag: int, pageout: bool = False
                    ) -> tuple[Proc, Proc, int]:
    """Scenarios 1 and 2: A maps 8 pages MAP_SHARED|MAP_ANONYMOUS, writes `written` (and
    pages them out), forks B and unmaps. B's ptes there start none (vma_needs_copy: no
    anon_vma), so no pagemap shows the data. Returns (A, B, address)."""
    parent = procs.start(children=1, cpu=0)
    addr = parent.mmap("shm", 8, shared=True)
    parent.write("shm", sorted(written), tag=tag)
    if pageout:
        parent.call("madvise", name="shm", page=0, npages=8, advice=MADV_PAGEOUT)
        assert procfs.smaps_of(parent.pid, addr).swap_kb == 4 * len(written)
    child = procs.fork(parent)
    parent.call("munmap", name="shm")
    settle(parent, child)
    assert words(LinuxHost(), child.pid, addr, 8) == [0] * 8
    return parent, child, addr


def test_fork_then_parent_unmaps_shared_memory(procs, tmp_path):
    """Scenario 2 on the real kernel: once the parent unmaps, no pagemap shows the data: the
    pagemap strategy loses the written pages, lseek and auto lose nothing."""
    written = {0, 1, 2, 5}
    parent, child, addr = fork_then_unmap(procs, written, tag=21)
    host = LinuxHost()
    with host.open_object(child.pid, addr, addr + 8 * PAGE) as obj:
        live = obj.pread(0, 8 * PAGE)
    assert live == pattern(21, written, 8)

    for strategy in ("pagemap", "lseek", "auto"):
        out = tmp_path / strategy
        dump(out, parent.pid, strategy)
        r = verify(out, parent.pid)
        d = info(out)
        assert [t["pid"] for t in d["tasks"]] == [parent.pid, child.pid]
        assert [o["kind"] for o in d["objects"]] == ["shmem-anon"]
        if strategy == "pagemap":
            assert r.exit_code == 1, r.output
            assert lost(r) == {(child.pid, addr + p * PAGE) for p in written}
            assert "LOST 4 pages (0 private, 4 shared-object pages)" in r.stdout
            assert d["objects"][0]["pages"] == 0
            assert set_bytes(out, child.pid, addr, 8) == bytes(8 * PAGE)
        else:
            assert r.exit_code == 0, r.output
            assert r.stdout.endswith("nothing lost\n")
            assert d["objects"][0]["pages"] == 4
            assert set_bytes(out, child.pid, addr, 8) == live
    assert words(host, child.pid, addr, 8) == [0] * 8  # dumping and verifying mapped nothing


def test_memfd_shared_by_scm_rights_dumped_once(procs, tmp_path):
    """A creates a memfd after the fork and passes it to its sibling B over a socketpair; they
    map it at object pages 0-7 and 6-13. One object in the set, both tasks verify."""
    sa, sb = socket.socketpair()
    root = procs.start(children=2, fds={"a": sa.fileno(), "b": sb.fileno()}, cpu=0)
    sa.close()
    sb.close()
    a, b = procs.fork(root), procs.fork(root)
    a.call("memfd", name="m", pages=16)
    a.call("pwrite", name="m", pages=[0, 1, 2, 3, 8, 9, 10], tag=31)
    a.call("send_fd", memfd="m", sock="a")
    b.call("recv_fd", memfd="m", sock="b")
    a_addr = a.mmap("v", 8, shared=True, memfd="m", offset=0)
    b_addr = b.mmap("v", 8, shared=True, memfd="m", offset=6)
    b.write("v", [1], tag=32)  # object page 7
    settle(root, a, b)
    obj_pages = {p: page_pattern(31, p) for p in (0, 1, 2, 3, 8, 9, 10)} | {7: page_pattern(32, 1)}
    want = b"".join(obj_pages.get(p, bytes(PAGE)) for p in range(16))

    out = tmp_path / "set"
    r = dump(out, root.pid)
    assert "8 pages of 1 shared objects" in r.stdout
    r = verify(out, root.pid)
    assert r.exit_code == 0, r.output
    d = info(out)
    assert [(o["kind"], o["name"], o["size"], o["pages"]) for o in d["objects"]] == [
        ("memfd", "m", 16 * PAGE, 8)]
    with ImageSet.open(out) as s:
        (obj,) = s.objects.values()
        assert [(r.vaddr // PAGE, r.nr_pages) for r in obj.pagemap if r.present] == [
            (0, 4), (7, 4)]
    assert set_bytes(out, a.pid, a_addr, 8) == want[: 8 * PAGE]
    assert set_bytes(out, b.pid, b_addr, 8) == want[6 * PAGE : 14 * PAGE]


def test_private_cow_after_fork_stored_once(procs, tmp_path):
    """Pages the child still shares with the parent (same PFN) are stored once, in the parent,
    and recorded as COW runs in the child; the child's own writes are its own pages."""
    parent = procs.start(children=1, cpu=0)
    addr = parent.mmap("priv", 16)
    parent.write("priv", range(16), tag=41)
    child = procs.fork(parent)
    mine = {3, 4, 9}
    child.write("priv", sorted(mine), tag=42)
    settle(parent, child)

    out = tmp_path / "set"
    r = dump(out, parent.pid)
    cow_total = int(_COW.search(r.stdout).group(1))
    r = verify(out, parent.pid)
    assert r.exit_code == 0, r.output
    d = info(out)
    assert sum(t["cow_pages"] for t in d["tasks"]) == cow_total
    end = addr + 16 * PAGE
    with ImageSet.open(out) as s:
        pt, ct = s.tasks[parent.pid], s.tasks[child.pid]
        cow = {c.vaddr + i * PAGE: (c.src_pid, c.src_vaddr + i * PAGE)
               for c in ct.cow for i in range(c.nr_pages) if addr <= c.vaddr < end}
        assert cow == {addr + p * PAGE: (parent.pid, addr + p * PAGE)
                       for p in range(16) if p not in mine}
        assert not pt.cow or all(not addr <= c.vaddr < end for c in pt.cow)

        def own(t) -> set[int]:
            return {(r.vaddr - addr) // PAGE + i for r in t.pagemap if r.present
                    for i in range(r.nr_pages) if addr <= r.vaddr + i * PAGE < end}

        assert own(pt) == set(range(16)) and own(ct) == mine
    assert cow_total >= 13
    assert set_bytes(out, child.pid, addr, 16) == b"".join(
        page_pattern(42 if p in mine else 41, p) for p in range(16))
    assert set_bytes(out, parent.pid, addr, 16) == pattern(41, range(16), 16)


def test_punched_holes_are_not_stored(procs, tmp_path):
    """fallocate(PUNCH_HOLE) and MADV_REMOVE leave holes: not in the object's pagemap, zeros
    on restore, and not a loss."""
    p = procs.start(cpu=0)
    p.call("memfd", name="m", pages=8)
    p.call("pwrite", name="m", pages=list(range(8)), tag=51)
    p.call("punch", name="m", page=2, npages=2)
    addr = p.mmap("v", 8, shared=True, memfd="m")
    p.call("madvise", name="v", page=5, npages=1, advice=MADV_REMOVE)
    settle(p)
    out = tmp_path / "set"
    dump(out, p.pid)
    r = verify(out, p.pid)
    assert r.exit_code == 0, r.output
    with ImageSet.open(out) as s:
        (obj,) = s.objects.values()
        assert [(r.vaddr // PAGE, r.nr_pages) for r in obj.pagemap if r.present] == [
            (0, 2), (4, 1), (6, 2)]
        assert [s.read_page(p.pid, addr + q * PAGE).source for q in (2, 3, 5)] == ["hole"] * 3
    assert set_bytes(out, p.pid, addr, 8) == pattern(51, {0, 1, 4, 6, 7}, 8)


def test_pageout_of_shared_memory_scenario_1(procs, swap, tmp_path):
    """Scenario 1's swap-out on the real kernel: written MAP_SHARED|MAP_ANONYMOUS pages are
    paged out, A forks B, A unmaps. Pagemap shows nothing (shmem swap leaves no entry in a
    pte), SEEK_DATA sees the swap entries as data: pagemap loses all, auto nothing."""
    parent, child, addr = fork_then_unmap(procs, set(range(8)), tag=61, pageout=True)
    host = LinuxHost()
    with host.open_object(child.pid, addr, addr + 8 * PAGE) as obj:
        assert obj.lseek(0, SEEK_DATA) == 0 and obj.data_extents() == [(0, 8 * PAGE)]
    assert procfs.smaps_of(child.pid, addr).swap_kb == 32  # lseek swapped nothing in

    # auto first, while the pages are still out: recording the truth (any strategy) preads
    # every page of the object, which swaps them into the page cache (not into any pte).
    dump(tmp_path / "auto", parent.pid, "auto")
    assert procfs.smaps_of(child.pid, addr).swap_kb == 0
    assert words(host, child.pid, addr, 8) == [0] * 8
    dump(tmp_path / "pagemap", parent.pid, "pagemap")
    r = verify(tmp_path / "pagemap", parent.pid)
    assert r.exit_code == 1
    assert lost(r) == {(child.pid, addr + q * PAGE) for q in range(8)}
    r = verify(tmp_path / "auto", parent.pid)
    assert r.exit_code == 0, r.output
    assert set_bytes(tmp_path / "auto", child.pid, addr, 8) == pattern(61, range(8), 8)


def test_pageout_of_private_memory(procs, swap, tmp_path):
    """Paged-out private pages read PM_SWAP with a real swap type: auto dumps them (read back
    through process_vm_readv, which swaps them in)."""
    p = procs.start(cpu=0)
    addr = p.mmap("priv", 8)
    p.write("priv", range(8), tag=71)
    p.call("madvise", name="priv", page=0, npages=6, advice=MADV_PAGEOUT)
    settle(p)
    host = LinuxHost()
    flags = [w & (PM_PRESENT | PM_SWAP) for w in words(host, p.pid, addr, 8)]
    assert flags == [PM_SWAP] * 6 + [PM_PRESENT] * 2
    out = tmp_path / "set"
    dump(out, p.pid)
    r = verify(out, p.pid)
    assert r.exit_code == 0, r.output
    assert set_bytes(out, p.pid, addr, 8) == pattern(71, range(8), 8)


# -- errors -------------------------------------------------------------------------------------

def test_error_pid_gone(procs, tmp_path):
    p = procs.start()
    pid = p.pid
    p.call("exit")
    p.popen.wait(10)
    out = tmp_path / "set"
    r = cli("dump", "--pid", pid, "--tree", "-o", out)
    assert r.exit_code == 2
    assert r.stderr == f"dumper: error: pid {pid}: /proc/{pid}/task: no such process (gone)\n"
    assert not out.exists() and os.listdir(tmp_path) == []


def test_error_output_exists(procs, tmp_path):
    p = procs.start()
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep").write_text("mine")
    r = cli("dump", "--pid", p.pid, "-o", out)
    assert r.exit_code == 2
    assert r.stderr == f"dumper: error: {out}: exists; pass --force to replace it\n"
    assert os.listdir(out) == ["keep"] and sorted(os.listdir(tmp_path)) == ["set"]


def _drop_capabilities() -> None:
    """In the child before exec: empty the capability bounding set, so a uid-0 exec gets no
    capabilities (cap_bprm_creds_from_file: permitted = bounding & fP)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(125)


def test_error_without_privileges(procs, tmp_path):
    """Without CAP_SYS_PTRACE the tracer must hold every capability its target has
    (cap_ptrace_access_check): PTRACE_SEIZE of a root helper fails with EPERM. (uid 0 with
    no capabilities: this venv lives under /root, mode 0700, which another uid cannot run.)"""
    p = procs.start()
    out = tmp_path / "set"
    code = "import sys; from dumper.cli import main; sys.argv[0] = 'dumper'; main()"
    r = subprocess.run([sys.executable, "-c", code, "dump", "--pid", str(p.pid), "--tree",
                        "-o", str(out)], capture_output=True, text=True, timeout=60,
                       preexec_fn=_drop_capabilities)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"dumper: error: pid {p.pid}: /proc/{p.pid}/task/{p.pid}: "
                               "permission denied"), r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not out.exists()
    assert p.call("ping")["pong"] == p.pid  # left running


# -- regular files and guard regions ------------------------------------------------------------

@pytest.fixture
def disk_file(tmp_path):
    """A 4-page regular file on the root filesystem (/var/tmp, not a tmpfs /tmp)."""
    path = f"/var/tmp/dumper-test-file-{os.getpid()}-{tmp_path.name}"
    with open(path, "wb") as f:
        f.write(pattern(81, range(4), 4))
    try:
        yield path
    finally:
        os.unlink(path)


def test_shared_regular_file_is_referenced(procs, tmp_path, disk_file):
    """MAP_SHARED (and MAP_PRIVATE) of an ext4 file, in two tasks: named in one warning for
    the file, saying what a restore needs; recorded as the file, no pages stored; verify reads
    the file where a restore would map it. --quiet keeps the warning out."""
    p = procs.start(children=1, cpu=0)
    p.call("open", name="f", path=disk_file)
    p.mmap("v", 4, shared=True, memfd="f")
    p.mmap("w", 2, memfd="f")  # MAP_PRIVATE
    p.write("v", [1], tag=84)  # through the page cache: the file now holds it
    child = procs.fork(p)
    settle(p, child)
    out = tmp_path / "set"
    r = dump(out, p.pid)
    mine = [ln for ln in r.stderr.splitlines() if disk_file in ln]
    assert mine == [f"dumper: warning: {disk_file}: mapped MAP_PRIVATE and MAP_SHARED, "
                    "referenced, not copied: a restore needs this file at this path, "
                    "unchanged"], r.stderr
    q = cli("dump", "--pid", p.pid, "--tree", "--quiet", "-o", tmp_path / "quiet")
    assert q.exit_code == 0 and "warning" not in q.stderr, q.output
    assert [o["kind"] for o in info(out)["objects"]] == []
    r = verify(out, p.pid)
    assert r.exit_code == 0, r.output


def test_untouched_private_file_pages(procs, tmp_path, disk_file):
    """MAP_PRIVATE of an ext4 file with one page written (do_cow_fault: no fault-around, so
    the others stay none): the written page is the task's own (stored), the others are the
    file's (referenced), and the two past the end of the file would fault; verify agrees."""
    p = procs.start(cpu=0)
    p.call("open", name="f", path=disk_file)
    addr = p.mmap("v", 6, memfd="f")  # 6 pages over a 4-page file
    p.write("v", [2], tag=85)
    settle(p)
    out = tmp_path / "set"
    dump(out, p.pid)
    assert verify(out, p.pid).exit_code == 0
    with ImageSet.open(out) as s:
        assert [s.read_page(p.pid, addr + q * PAGE).source for q in range(4)] == [
            "none", "none", "private", "none"]
    assert set_bytes(out, p.pid, addr + 2 * PAGE, 1) == page_pattern(85, 2)


def test_guard_pages_verify(procs, tmp_path):
    """Guard markers: recorded as guard runs, not read, and unreadable on both sides."""
    p = procs.start(cpu=0)
    addr = p.mmap("priv", 4)
    p.write("priv", range(4), tag=83)
    p.call("madvise", name="priv", page=1, npages=2, advice=MADV_GUARD_INSTALL)
    settle(p)
    out = tmp_path / "set"
    r = dump(out, p.pid)
    assert "unreadable" not in r.stderr
    assert verify(out, p.pid).exit_code == 0
    with ImageSet.open(out) as s:
        assert [(g.vaddr, g.nr_pages, g.kind) for g in s.tasks[p.pid].guards] == [
            (addr + PAGE, 2, "guard")]


def test_dump_of_a_quiet_tree_matches_truth(procs, tmp_path):
    """The recorded truth (truth-PID.img, from LinuxHost.truth at dump time) equals the live
    truth afterwards for an unchanged tree: page for page, every VMA."""
    parent = procs.start(children=1, cpu=0)
    parent.mmap("priv", 4)
    parent.write("priv", range(4), tag=91)
    child = procs.fork(parent)
    settle(parent, child)
    out = tmp_path / "set"
    r = cli("dump", "--pid", parent.pid, "--tree", "--truth", "-o", out)  # live: opt-in
    assert r.exit_code == 0, r.output
    host = LinuxHost()
    with ImageSet.open(out) as s, host.freeze([parent.pid, child.pid]):
        for pid in (parent.pid, child.pid):
            rec = dict(s.iter_truth(pid))
            now = dict(host.truth(pid))
            assert rec.keys() == now.keys()
            for start, d in now.items():
                assert np.array_equal(rec[start], d), hex(start)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_verify_ignores_what_the_kernel_writes_into_struct_rseq(procs, tmp_path):
    """A task asleep in read(2) runs no code, yet the kernel rewrites its struct rseq
    (rseq_update_cpu_node_id) when a freeze and thaw wakes it on another CPU: verify compares
    those bytes out and says so, and still names any other difference."""
    p = procs.start(cpu=0)
    p.mmap("a", 4)
    p.write("a", range(4), tag=61)
    settle(p)
    host = LinuxHost()
    with host.freeze([p.pid]):
        areas = host.rseq_areas(p.pid)
    if not areas:
        pytest.skip("the helper registered no rseq (glibc.pthread.rseq=0?)")
    out = tmp_path / "set"
    dump(out, p.pid)
    os.sched_setaffinity(p.pid, {1})
    with host.freeze([p.pid]):  # woken on CPU 1; on its way back to read() cpu_id becomes 1
        pass
    (addr, size), page = areas[0], areas[0][0] & ~(PAGE - 1)
    with ImageSet.open(out) as s:
        saved = s.read_page(p.pid, page).data
    live = bytes(host.read_memory(p.pid, page, page + PAGE))
    assert saved is not None and saved != live  # the kernel's write, the fact being handled
    lo, hi = addr - page, addr - page + size
    assert saved[:lo] + saved[hi:] == live[:lo] + live[hi:]
    r = verify(out, p.pid)
    assert r.exit_code == 0, r.output
    assert "1 differing only in struct rseq" in r.output
