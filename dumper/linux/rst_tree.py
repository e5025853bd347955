"""The process tree of a restore: stub tasks with the dumped pids, ptrace-stopped and ours.

The root stub is cloned by the restorer itself with clone3 set_tid (restore.md §4.1); it
asks to be traced and stops (§1.1). Every other task is cloned by its restored parent, by
an injected clone3 with set_tid once the parent's memory is in place, so the child's
private pages are the parent's, shared copy-on-write as fork leaves them (§2.5, §4.3).
Threads are injected clone3 CLONE_THREAD calls (§6.2). A pid that is taken fails before
anything is created; a failed restore kills what it made (kill_all).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import time

from dumper.linux import libc
from dumper.linux.rst_inject import CLONE_ARGS, PTRACE_TRACEME, set_options, wait_stopped

SYS_clone3 = 435
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_NEWPID = 0x10000, 0x40000, 0x20000000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
# clone3 and the child's first calls keep the GIL (PyDLL does not release it): the restorer
# has threads (the pages checksum, the page writers), and a child cloned while one of them
# held the GIL would wait for it forever, or die, before its first stop.
_held = ctypes.PyDLL(None, use_errno=True)
_held.syscall.restype = ctypes.c_long
_held.ptrace.restype = ctypes.c_long


class PidTaken(OSError):
    """A pid the set needs is in use on this machine."""


def check_pids_free(ids: list[int]) -> None:
    """Every pid and tid the tree needs must be free (clone3 set_tid would fail EEXIST)."""
    for pid in ids:
        if os.path.exists(f"/proc/{pid}"):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    who = f.read().strip()
            except OSError:
                who = "?"
            raise PidTaken(errno.EEXIST, f"pid {pid} is taken (by {who}): the restored task "
                           "needs it; nothing was created")


def spawn_root(pid: int, flags: int = 0, then: list[str] | None = None) -> int:
    """clone3(set_tid=[pid]) from the restorer (pid 0: any pid, flags: CLONE_NEWPID for a
    new namespace): a child that traces itself and stops; returns its pid as we see it.
    Detached, it execs then (the init of rst_pidns); a stub never runs Python again."""
    tid = (ctypes.c_int * 1)(pid)
    args = ctypes.create_string_buffer(CLONE_ARGS.pack(
        flags, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, ctypes.addressof(tid) if pid else 0,
        1 if pid else 0, 0))
    ret = _held.syscall(ctypes.c_long(SYS_clone3), ctypes.c_void_p(ctypes.addressof(args)),
                        ctypes.c_long(CLONE_ARGS.size))
    if ret == 0:  # the stub: it runs no Python again once it stops, unless it execs then
        try:
            _held.ptrace(PTRACE_TRACEME, 0, 0, 0)
            _held.kill(os.getpid(), signal.SIGSTOP)
            if then:
                os.execv(then[0], then)
        finally:
            os._exit(127)
    if ret < 0:
        err = ctypes.get_errno()
        what = f"of {pid}" if pid else "of a new pid namespace's init"
        raise OSError(err, f"clone3 {what}: {os.strerror(err)}")
    wait_stopped(ret)
    set_options(ret)
    return ret


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def kill_all(pids: list[int]) -> None:
    """SIGKILL every task made (children first) and reap them all. The restorer is a child
    subreaper meanwhile: a stub whose parent stub dies is reparented to us (find_new_reaper)
    rather than to init, which may reap it late and leave its pid taken (seen: a retry at
    once found "pid N is taken (by dumper)")."""
    was = ctypes.c_int(0)
    _held.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    _held.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        left = list(reversed(pids))
        while left and time.monotonic() < deadline:
            for pid in list(left):
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, libc.WALL | os.WNOHANG)
                if not os.path.exists(f"/proc/{pid}"):
                    left.remove(pid)
            if left:
                time.sleep(0.005)
    finally:
        _held.prctl(PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)
