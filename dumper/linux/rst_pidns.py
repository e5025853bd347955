"""`restore --pidns`: the tree restored into a fresh pid namespace, with its dumped pids
inside it (whatever the host's pids are doing).

What is inside the namespace. Its first task is its pid 1, the child reaper
(kernel/pid_namespace.c: the task that made it; zap_pid_ns_processes kills the namespace
when it exits). A dumped root that was not pid 1 of its own namespace cannot be that task
(its pid must stay what it was), so pid 1 is a minimal init of ours, and the tree's root is
its child, made inside by clone3 set_tid=[root] (set_tid[0] is the pid in the innermost
namespace: kernel/pid.c alloc_pid). CRIU has no such option: it restores a pid namespace
only when the images say the tree had one, and then the dumped pid 1 is the tree's own
root (criu/pstree.c, cr-restore.c); a tree whose root is pid 1 is that case here too, the
root stub itself made with CLONE_NEWPID.

The init (init_main, a fresh Python exec'd once the root exists, so it keeps none of the
restorer's memory, fds or shared objects) reaps every task reparented to it and forwards
the usual termination and user signals to the root; when the root exits, init exits with
the root's status (128+N for a signal: pid 1 cannot die of its own signal), so the caller
waiting for init sees the root's status, and the kernel then ends the rest of the
namespace, as for any container whose main process exits.

From the host every task has another pid: ptrace, /proc/PID/mem and kill use those (the
event message of the PTRACE_EVENT_FORK/CLONE stop gives it; NSpid in /proc/PID/status
lists both), and every pid the tasks are given as an argument stays the dumped one. The
tree keeps the host's /proc (no mount namespace is made: its fds and paths are the host's,
as criu leaves a tree whose mount namespace was not dumped).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys

from dumper.linux import libc
from dumper.linux.rst_inject import RestoreInjector
from dumper.linux.rst_mm import SCRATCH_SIZE, map_scratch, teardown
from dumper.linux.rst_tree import CLONE_NEWPID, PidTaken, kill_all, spawn_root

INIT_PID = 1

# The signals init hands to the root (the ones a shell or a supervisor sends a service).
FORWARD = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGTERM, signal.SIGALRM, signal.SIGWINCH)

# pid 1 of the namespace: stdlib only (run by `python -I -S -c`), argv[1] the root's pid.
INIT_CODE = f"""
import os, signal, sys
root = int(sys.argv[1])
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.closerange(3, 1 << 20)
with open("/proc/self/comm", "w") as f:
    f.write("dumper-init")
def forward(sig, frame):
    try:
        os.kill(root, sig)
    except ProcessLookupError:
        pass
for sig in {tuple(int(s) for s in FORWARD)}:
    signal.signal(sig, forward)
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        os._exit(0)
    if pid == root:
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
"""


def check_pids_free(ids: list[int], root: int) -> None:
    """In the fresh namespace only our init holds a pid (1), unless the root is pid 1 itself
    (it is then the namespace's first task: no init is made)."""
    if root != INIT_PID and INIT_PID in ids:
        raise PidTaken(errno.EEXIST, f"pid {INIT_PID} is taken in the new pid namespace (by "
                       "its init) and the tree's task needs it; nothing was created")


def spawn_in_ns(root: int, scratch: int) -> tuple[int, int, RestoreInjector]:
    """The namespace, its init and the tree's root stub in it, torn down for the restore:
    (init's host pid or 0, the root's host pid, the root's injector)."""
    if root == INIT_PID:
        host = spawn_root(0, CLONE_NEWPID)
        return 0, host, teardown(host, scratch)
    init = spawn_root(0, CLONE_NEWPID, [sys.executable, "-I", "-S", "-c", INIT_CODE,
                                        str(root)])
    host = 0
    try:
        inj = map_scratch(init, scratch)
        host = inj.clone3(0, signal.SIGCHLD, root)
        inj.check("munmap", scratch, SCRATCH_SIZE)
        # init goes on to exec INIT_CODE; the root stub is a copy of init before that.
        libc.ptrace(libc.PTRACE_DETACH, init, 0, 0)
        RestoreInjector(host, host, inj.gate, scratch).check("munmap", scratch, SCRATCH_SIZE)
        return init, host, teardown(host, scratch)
    except BaseException:
        if host:
            kill_all([host])
        kill_init(init)
        raise


def kill_init(init: int) -> None:
    """The namespace's end: init killed and reaped (the kernel kills the rest,
    zap_pid_ns_processes; call it after the tasks we trace are reaped: a traced zombie
    waits for its tracer, and init's exit for it)."""
    if not init:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(init, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(init, 0)
