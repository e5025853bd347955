"""procfs against real processes: tree, stat, maps, smaps, and the errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dumper.host import parse_maps
from dumper.linux import procfs
from dumper.linux.errors import GONE, PERMISSION, ProcError

pytestmark = pytest.mark.linux


def test_tree_preorder_in_fork_order(procs):
    root = procs.start(children=3)
    a = procs.fork(root)
    b = procs.fork(root)
    a1 = procs.fork(a)
    tree = procfs.discover_tree(root.pid)
    assert [t.pid for t in tree] == [root.pid, a.pid, a1.pid, b.pid]
    assert [t.ppid for t in tree] == [os.getpid(), root.pid, a.pid, root.pid]
    assert tree[0].comm.startswith("python")
    assert tree[0].pgid == os.getpgid(root.pid) and tree[0].sid == os.getsid(root.pid)
    # The fallback (no CONFIG_PROC_CHILDREN) finds the same children.
    assert procfs._children_by_ppid(root.pid) == [a.pid, b.pid]


def test_threads_leader_first(procs):
    p = procs.start()
    tids = p.call("threads", n=2)["tids"]
    got = procfs.threads(p.pid)
    assert got[0] == p.pid and sorted(got[1:]) == sorted(tids)


def test_stat_comm_with_parens():
    st = procfs.parse_stat("42 (a) b (c)) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0")
    assert (st.pid, st.comm, st.state, st.ppid, st.pgid, st.sid, st.starttime) == (
        42, "a) b (c)", "S", 1, 42, 42, 777)


def test_maps_and_smaps_of_a_shared_region(procs):
    p = procs.start()
    addr = p.mmap("r", 8, shared=True)
    p.write("r", [0, 1, 2], tag=1)
    entry = next(e for e in parse_maps(procfs.read_maps(p.pid)) if e.start == addr)
    assert entry.end == addr + 8 * 4096 and entry.shared and entry.shmem_kind == "shmem-anon"
    sm = procfs.smaps_of(p.pid, addr)
    assert (sm.start, sm.end, sm.rss_kb, sm.swap_kb, sm.swap_pss_kb) == (addr, entry.end, 12, 0, 0)


def test_gone_pid_is_one_clear_error(procs):
    p = procs.start()
    pid = p.pid
    procs.end_all()
    with pytest.raises(ProcError) as ei:
        procfs.read_maps(pid)
    assert ei.value.reason == GONE and ei.value.pid == pid
    assert str(ei.value) == f"pid {pid}: /proc/{pid}/maps: no such process (gone)"
    with pytest.raises(ProcError, match="gone"):
        procfs.discover_tree(pid)


def test_no_permission_is_one_clear_error():
    """As nobody, /proc/1/maps is EACCES (mm_access: PTRACE_MODE_READ fails)."""
    code = (  # import first: the interpreter's files may be unreadable to nobody
        "import os\nfrom dumper.linux import procfs\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n    procfs.read_maps(1)\nexcept procfs.ProcError as e:\n"
        "    print(e.reason); print(e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": root}, check=True).stdout
    reason, msg = out.splitlines()
    assert reason == PERMISSION
    assert msg.startswith("pid 1: /proc/1/maps: permission denied")


def test_vma_kinds_of_a_live_process(procs):
    p = procs.start()
    shm = p.mmap("shm", 2, shared=True)
    priv = p.mmap("priv", 2)
    p.call("memfd", name="m", pages=2)
    mfd = p.mmap("mfd", 2, shared=True, memfd="m")
    smaps = {s.start: s for s in procfs.read_smaps(p.pid)}
    vmas = procfs.read_vmas(p.pid)
    assert [e for e, _, _ in vmas] == parse_maps(procfs.read_maps(p.pid))
    kinds = {e.start: kind for e, _, kind in vmas}
    assert (kinds[shm], kinds[priv], kinds[mfd]) == (procfs.SHMEM, procfs.ANON, procfs.SHMEM)
    by_path = {e.path: kind for e, _, kind in vmas}
    assert by_path["[vdso]"] == by_path["[vvar]"] == procfs.SPECIAL
    assert by_path["[stack]"] == procfs.ANON
    assert by_path[os.path.realpath(sys.executable)] == procfs.PRIVATE_FILE
    assert "rd" in smaps[priv].vmflags and "sh" in smaps[shm].vmflags


@pytest.mark.parametrize(("line", "kind"), [
    ("7f00-7f01 rw-s 00000000 00:12 5 /dev/shm/x", procfs.SHARED_FILE),
    ("7f00-7f01 rw-s 00000000 00:01 5 /SYSV00000000 (deleted)", procfs.SHMEM),
    ("7f00-7f01 rw-s 00000000 00:05 9 /dev/dri/card0", procfs.DEVICE),
    ("7f00-7f01 rw-p 00000000 00:10 9 /anon_hugepage (deleted)", procfs.HUGETLB),
    ("7f00-7f01 rw-p 00000000 00:00 0 [anon:jit]", procfs.ANON),
])
def test_vma_kinds_from_maps_lines(line, kind):
    from dumper.host import parse_maps_line
    assert procfs.vma_kind(parse_maps_line(line)) == kind
