"""`restore --pidns`: the tree restored into a fresh pid namespace, with its dumped pids
inside it (whatever the host's pids are doing).

What is inside the namespace. Its first task is its pid 1, the child reaper
(kernel/pid_namespace.c: the task that made it; zap_pid_ns_processes kills the namespace
when it exits). A dumped root that was not pid 1 of its own namespace cannot be that task
(its pid must stay what it was), so pid 1 is a minimal init of ours, and the tree's root is
its child, made inside by clone3 set_tid=[root] (set_tid[0] is the pid in the innermost
namespace: kernel/pid.c alloc_pid). CRIU has no such option: it restores a pid namespace
only when the images say the tree had one, and then the dumped pid 1 is the tree's own
root (criu/pstree.c, cr-restore.c). That case (a container's init) is refused here: our
init holds pid 1, and dumper's dump refuses a namespace's init anyway.

The init (INIT_CODE, a fresh Python exec'd once the root exists, so it keeps none of the
restorer's memory, fds or shared objects) reaps every task reparented to it and forwards
the usual termination and user signals to the root; when the root exits, init exits with
the root's status (128+N for a signal: pid 1 cannot die of its own signal), so the caller
waiting for init sees the root's status, and the kernel then ends the rest of the
namespace, as for any container whose main process exits.

From the host every task has another pid: ptrace, /proc/PID/mem and kill use those (the
event message of the PTRACE_EVENT_FORK/CLONE stop gives it; NSpid in /proc/PID/status
lists both), and every pid the tasks are given as an argument stays the dumped one.

/proc inside. A procfs shows the pid namespace of whoever mounted it (proc_fill_super), so
in the host's /proc a restored task's /proc/self is its host pid and /proc/<getpid()> is
some other task or none. init therefore unshares a mount namespace before the root exists
(every task inherits it; the mounts stay the host's, made MS_SLAVE so nothing mounted
inside reaches the host) and, at the end of the restore, mounts the namespace's own proc
over /proc there: until then the stubs still open the restorer's objects and pipes through
the host's /proc/RESTORER/... (a pid of the host the new proc could not show).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from dataclasses import dataclass

from dumper.linux import libc
from dumper.linux.rst_inject import RestoreInjector
from dumper.linux.rst_mm import SCRATCH_SIZE, map_scratch, teardown
from dumper.linux.rst_tree import CLONE_NEWPID, PidTaken, kill_all, spawn_root

INIT_PID = 1
CLONE_NEWNS = 0x20000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_SLAVE = 2, 4, 8, 0x4000, 1 << 19

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


def check_pids_free(ids: list[int]) -> None:
    """In the fresh namespace only our init holds a pid: 1."""
    if INIT_PID in ids:
        raise PidTaken(errno.EEXIST, f"pid {INIT_PID} is taken in the new pid namespace (by "
                       "its init: --pidns does not restore a namespace's own init); nothing "
                       "was created")


@dataclass
class PidNamespace:
    """The new namespace of a --pidns restore: its init, a stopped stub of ours until
    start() (so the tree's /proc is mounted only once nothing needs the host's)."""

    init: RestoreInjector | None = None

    @property
    def pid(self) -> int:
        """init's pid as we see it (0 before spawn)."""
        return self.init.pid if self.init else 0

    def spawn(self, root: int, scratch: int) -> tuple[int, RestoreInjector]:
        """The namespace, its init (in a mount namespace of its own, a slave copy of ours)
        and the tree's root stub in it, torn down for the restore: (the root's host pid,
        its injector)."""
        pid = spawn_root(0, CLONE_NEWPID, [sys.executable, "-I", "-S", "-c", INIT_CODE,
                                           str(root)])
        host = 0
        try:
            self.init = inj = map_scratch(pid, scratch)
            inj.check("unshare", CLONE_NEWNS)
            # MS_SLAVE: our mounts still reach the tree, its /proc never reaches us
            inj.check("mount", 0, inj.put_str("/"), 0, MS_REC | MS_SLAVE, 0)
            host = inj.clone3(0, signal.SIGCHLD, root)
            RestoreInjector(host, host, inj.gate, scratch).check("munmap", scratch,
                                                                  SCRATCH_SIZE)
            return host, teardown(host, scratch)
        except BaseException:
            if host:
                kill_all([host])
            if self.init is None:
                kill_all([pid])
            self.kill()
            raise

    def start(self) -> None:
        """/proc of the namespace mounted over the host's in the tree's mount namespace
        (every fd the tasks opened through the restorer's /proc is in), then init let go:
        it execs INIT_CODE."""
        inj = self.init
        assert inj is not None
        proc = inj.put_str("proc")
        inj.check("mount", proc, inj.put_str("/proc", 64), proc,
                  MS_NOSUID | MS_NODEV | MS_NOEXEC, 0)
        inj.check("munmap", inj.scratch_addr, SCRATCH_SIZE)
        libc.ptrace(libc.PTRACE_DETACH, inj.pid, 0, 0)
        _wait_handlers(inj.pid)

    def kill(self) -> None:
        """The namespace's end: init killed and reaped (the kernel kills the rest,
        zap_pid_ns_processes; call it after the tasks we trace are reaped: a traced zombie
        waits for its tracer, and init's exit for it)."""
        if self.init is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.init.pid, 0)
        self.init = None


def _wait_handlers(pid: int, timeout: float = 10.0) -> None:
    """Until init catches every signal it forwards (SigCgt): before that a signal from us
    finds SIG_DFL, which pid 1 ignores (sig_task_ignored: SIGNAL_UNKILLABLE), and is lost."""
    want = sum(1 << (s - 1) for s in FORWARD)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(f"/proc/{pid}/status") as f:
            cgt = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if cgt & want == want:
            return
        time.sleep(0.002)
    raise OSError(errno.ETIMEDOUT, f"the new pid namespace's init ({pid}) did not start")
