"""Freeze a tree with PTRACE_SEIZE + PTRACE_INTERRUPT, and always thaw it.

Why ptrace rather than the cgroup v2 freezer: it needs no cgroup of our own (moving the
target into one would change what it sees in /proc/PID/cgroup, and this machine mounts v2
only as a hybrid 'unified' tree), it stops every thread at a known point, and if the dumper
dies the kernel detaches its tracees itself (kernel/ptrace.c exit_ptrace -> __ptrace_detach
wakes them), so even SIGKILL of the dumper leaves nothing stopped.

Kernel facts this relies on (measured on 6.18, tests/linux/test_freeze.py):
* ptrace requests other than INTERRUPT/KILL need the tracee in a ptrace-stop
  (ptrace_check_attach); DETACH of a running tracee fails with ESRCH, so a tracee whose stop
  was not waited for is interrupted and waited for before being detached.
* PTRACE_INTERRUPT reports PTRACE_EVENT_STOP (status >> 16 == 128) with SIGTRAP for a running
  task and with the stop signal for one already in group-stop; such a task stays stopped
  after detach, as it was before us, but only a moment later: __ptrace_unlink wakes it to
  re-enter the stop, and /proc shows 'R' right after PTRACE_DETACH (seen under load).
* A signal arriving before the interrupt is reported as a signal-delivery-stop instead; we
  keep the task there (it is stopped) and hand the signal back with PTRACE_DETACH's data.
* Tracer and tracee are per thread: seize and detach from the same thread of the dumper.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from dumper.host import TaskInfo
from dumper.linux import libc, procfs
from dumper.linux.errors import GONE, ProcError

log = logging.getLogger(__name__)
PTRACE_O_SUSPEND_SECCOMP = 1 << 21  # include/uapi/linux/ptrace.h (CONFIG_CHECKPOINT_RESTORE)
_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
# These are held while we seize and while we thaw, so a Ctrl-C cannot cut either half-way;
# SIGTERM and SIGHUP also get a handler that unwinds through the thaw.
_DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class Tracee:
    pid: int  # thread group
    tid: int
    stopped: bool = False  # we have seen its ptrace-stop
    pending_signal: int = 0  # intercepted at seize time, re-injected at detach
    was_group_stopped: bool = False  # SIGSTOPped before we came


@dataclass
class Freezer:
    """The set of threads we have seized; thaw() releases every one of them."""

    tracees: dict[int, Tracee] = field(default_factory=dict)
    processes: list[int] = field(default_factory=list)
    tree: list[TaskInfo] = field(default_factory=list)  # what seize_tree found
    problems: list[str] = field(default_factory=list)  # what thaw() could not do cleanly

    # -- seizing -----------------------------------------------------------------------------
    def _seize_thread(self, pid: int, tid: int) -> None:
        t = Tracee(pid, tid)
        try:
            # PTRACE_O_SUSPEND_SECCOMP: the dump's injected calls pass a seccomp task's
            # filter or strict mode (seccomp strict SIGKILLed a task at the first call).
            libc.ptrace(libc.PTRACE_SEIZE, tid, 0, PTRACE_O_SUSPEND_SECCOMP)
        except OSError as e:
            if _exiting(pid, tid):
                return  # exited, or in do_exit (ptrace_attach refuses PF_EXITING: EPERM)
            raise ProcError.from_os(pid, f"/proc/{pid}/task/{tid}", e, "PTRACE_SEIZE") from None
        self.tracees[tid] = t
        try:
            libc.ptrace(libc.PTRACE_INTERRUPT, tid)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise ProcError.from_os(pid, f"/proc/{pid}/task/{tid}", e,
                                        "PTRACE_INTERRUPT") from None
        self._wait_stop(t)

    def _wait_stop(self, t: Tracee) -> None:
        """waitpid(2) -> kernel/exit.c do_wait with __WALL, until t is in a ptrace-stop."""
        while True:
            try:
                _, status = os.waitpid(t.tid, libc.WALL)
            except ChildProcessError:
                self.tracees.pop(t.tid, None)  # gone and already reaped
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.tracees.pop(t.tid, None)
                return
            if not os.WIFSTOPPED(status):
                continue
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == libc.PTRACE_EVENT_STOP:
                t.was_group_stopped = sig in _STOP_SIGNALS
            elif event == 0:
                t.pending_signal = sig  # signal-delivery-stop: a stop as good as any
            t.stopped = True
            return

    def seize_process(self, pid: int) -> None:
        """Stop every thread of pid; re-list the threads until no new one appears (a thread
        not yet seized may have cloned another)."""
        if pid == os.getpid():
            raise ProcError(pid, f"/proc/{pid}", errno.EPERM, "cannot freeze the dumper itself")
        if pid in self.processes:
            return
        self.processes.append(pid)
        tried: set[int] = set()
        while True:
            try:
                tids = procfs.threads(pid)
            except ProcError as e:
                if e.reason == GONE and not any(t.pid == pid for t in self.tracees.values()):
                    raise
                return
            new = [t for t in tids if t not in tried]
            if not new:
                break
            for tid in new:
                tried.add(tid)
                self._seize_thread(pid, tid)
        if not any(t.pid == pid for t in self.tracees.values()):
            raise ProcError(pid, f"/proc/{pid}", errno.ESRCH, "exited while being frozen")

    def seize_tree(self, root: int) -> list[TaskInfo]:
        """Freeze root and, as each process stops, its children (a stopped process forks no
        more), so the tree found is the tree frozen. Pre-order, children in fork order."""
        out: list[TaskInfo] = []
        stack = [root]
        while stack:
            pid = stack.pop()
            try:
                if pid != root and _zombie(pid):
                    out.append(procfs.read_stat(pid).task_info())  # no threads to seize
                    continue
                self.seize_process(pid)
                info = procfs.read_stat(pid).task_info()
                kids = procfs.children(pid)
            except ProcError as e:
                if e.reason == GONE and pid != root:
                    continue
                raise
            out.append(info)
            stack.extend(reversed(kids))
        self.tree = out
        return out

    # -- thawing -----------------------------------------------------------------------------
    def thaw(self, leave_stopped: bool = False) -> list[str]:
        """Detach every tracee; with leave_stopped, queue SIGSTOP first so each process
        group-stops as it is released, and return once it has. Never raises for one task;
        returns what went wrong."""
        problems: list[str] = []
        stopping = list(self.processes) if leave_stopped else []
        for pid in stopping:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        was_stopped = {t.pid for t in self.tracees.values() if t.was_group_stopped}
        for tid in list(self.tracees):
            t = self.tracees[tid]
            try:
                self._detach(t)
            except OSError as e:
                problems.append(f"pid {t.pid} tid {tid}: detach: {e}")
            finally:
                self.tracees.pop(tid, None)
        self.processes.clear()
        # Processes that were group-stopped before us settle back into the stop the same way.
        stopping += [pid for pid in was_stopped if pid not in stopping]
        for pid in stopping:
            if not _wait_group_stop(pid):
                problems.append(f"pid {pid}: not all threads group-stopped after detach")
        return problems

    def _detach(self, t: Tracee) -> None:
        """PTRACE_DETACH -> ptrace_detach -> __ptrace_unlink (wakes it unless group-stopped)."""
        if not t.stopped:
            try:
                libc.ptrace(libc.PTRACE_INTERRUPT, t.tid)
            except OSError as e:
                if e.errno == errno.ESRCH:
                    return
                raise
            self._wait_stop(t)
            if t.tid not in self.tracees:
                return
        try:
            libc.ptrace(libc.PTRACE_DETACH, t.tid, 0, t.pending_signal)
        except OSError as e:
            if e.errno != errno.ESRCH or not _exiting(t.pid, t.tid):
                raise

    @property
    def attached(self) -> bool:
        return bool(self.tracees)


def _wait_group_stop(pid: int, timeout: float = 5.0) -> bool:
    """Wait until every thread of pid shows 'T'. The first thread released dequeues the
    SIGSTOP inside get_signal (no user code runs first) and sets JOBCTL_STOP_PENDING on the
    others, which __ptrace_unlink then kicks into the stop, but they get there a moment
    after PTRACE_DETACH returns: measured, a thread can still read 'R' right after."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            tids = procfs.threads(pid)
            if all(procfs.read_stat(pid, tid).state in "TZX" for tid in tids):
                return True
        except ProcError:
            return True  # gone: nothing left running
        if time.monotonic() > deadline:
            return False
        os.sched_yield()


def _zombie(pid: int) -> bool:
    """An exited process its parent has not waited for (state Z, no thread left running:
    a leader that called pthread_exit shows Z too while its other threads live)."""
    try:
        return procfs.read_stat(pid).state == "Z" and procfs.threads(pid) == [pid]
    except ProcError:
        return False


def _exiting(pid: int, tid: int) -> bool:
    try:
        return procfs.read_stat(pid, tid).state in ("Z", "X")
    except ProcError:
        return True


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold _DEFERRED signals for the duration and deliver them afterwards.

    In the main thread: handlers that only record the signal, then the previous handlers are
    put back and called (SIGINT's raises KeyboardInterrupt). Masking would not do: a
    process-directed signal goes to any thread that does not block it, and CPython then
    runs the handler in the main thread anyway (measured: importing numpy starts a second
    thread, its BLAS pool, and a SIGINT masked in the main thread still interrupted us).
    Elsewhere (handlers cannot be set): block the signals in this thread, the best that can
    be done there."""
    if threading.current_thread() is not threading.main_thread():
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
           for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in caught:
            _redeliver(sig, old[sig])


def _redeliver(sig: int, handler: object) -> None:
    if callable(handler):
        handler(sig, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), sig)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_handlers() -> dict[int, object]:
    """SIGTERM/SIGHUP unwind through the thaw (the default action would let the kernel detach
    us, but would lose signals we intercepted). Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[int, object] = {}
    for sig in _TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _raise_exit)
    return old


def _restore_handlers(old: dict[int, object]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _thaw_all(fz: Freezer, leave_stopped: bool) -> None:
    """thaw() until nothing is attached, even if a signal interrupts us between attempts;
    the first such interruption is re-raised once everything is released."""
    interrupted: BaseException | None = None
    while True:
        try:
            with _signals_deferred():
                fz.problems += fz.thaw(leave_stopped)
                leave_stopped = False  # the SIGSTOPs are queued once
        except BaseException as e:  # noqa: BLE001 - a deferred signal surfacing here
            interrupted = interrupted or e
        if not fz.attached:
            break
    for problem in fz.problems:
        log.warning("thaw: %s", problem)
    if interrupted is not None:
        raise interrupted


@contextmanager
def frozen(pids: Iterable[int] = (), *, root: int | None = None,
           leave_stopped: bool = False) -> Iterator[Freezer]:
    """Stop the given processes (every thread), or with root= the whole tree under it, for
    the duration of the context. On every way out (return, exception, KeyboardInterrupt,
    SIGTERM/SIGHUP) all are released; leave_stopped=True leaves them group-stopped, but only
    after a body that completed (a failed dump lets the tree run on)."""
    fz = Freezer()
    handlers = _install_handlers()
    completed = False
    try:
        try:
            with _signals_deferred():
                for pid in pids:
                    fz.seize_process(pid)
                if root is not None:
                    fz.seize_tree(root)
            yield fz
            completed = True
        finally:
            _thaw_all(fz, leave_stopped and completed)
    finally:
        _restore_handlers(handlers)
