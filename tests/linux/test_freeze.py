"""Freezing with ptrace: every thread stops, memory holds still, and every way out thaws."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dumper.linux import LinuxHost, ProcError, freeze, procfs

from .procs import task_states

pytestmark = pytest.mark.linux


def states(*procs) -> set[str]:
    return {s for p in procs for s in task_states(p.pid).values()}


def running(*procs) -> bool:
    """Nothing stopped: no 't' (ptrace stop) and no 'T' (group stop) in any thread."""
    return not states(*procs) & {"t", "T"}


def responsive(*procs) -> bool:
    return all(p.call("ping")["pong"] == p.pid for p in procs)


@pytest.fixture
def family(procs):
    """A helper with two idle threads and one spinning on a counter, and a forked child.
    Returns (parent, child, counter address)."""
    parent = procs.start(children=1)
    addr = parent.mmap("ctr", 1)
    child = procs.fork(parent)
    parent.call("threads", n=2)
    parent.call("spin", name="ctr")
    return parent, child, addr


def read_counter(host: LinuxHost, pid: int, addr: int) -> int:
    return int.from_bytes(host.read_memory(pid, addr, addr + 4096)[:8], "little")


def test_all_threads_stop_and_memory_holds_still(family):
    parent, child, addr = family
    host = LinuxHost()
    with host.freeze([parent.pid, child.pid]):
        assert states(parent, child) == {"t"}
        assert len(task_states(parent.pid)) == 4
        first = read_counter(host, parent.pid, addr)
        os.sched_yield()
        assert read_counter(host, parent.pid, addr) == first
    assert running(parent, child) and responsive(parent, child)
    deadline = time.monotonic() + 10
    while read_counter(host, parent.pid, addr) == first:  # the spinner runs again
        assert time.monotonic() < deadline, "counter did not move after thaw"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_thawed_when_the_body_raises(family, exc):
    parent, child, _ = family
    with pytest.raises(exc), freeze.frozen([parent.pid, child.pid]):
        assert states(parent, child) == {"t"}
        raise exc("boom")
    assert running(parent, child) and responsive(parent, child)


def test_thawed_on_sigint_and_sigterm(family):
    parent, child, _ = family
    with pytest.raises(KeyboardInterrupt), freeze.frozen([parent.pid, child.pid]):
        os.kill(os.getpid(), signal.SIGINT)
    assert running(parent, child)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as ei, freeze.frozen([parent.pid, child.pid]):
        assert signal.getsignal(signal.SIGTERM) is freeze._raise_exit  # else SIGTERM kills us
        os.kill(os.getpid(), signal.SIGTERM)
    assert ei.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert running(parent, child) and responsive(parent, child)


def test_leave_stopped_only_after_success(family):
    parent, child, _ = family
    with pytest.raises(RuntimeError), freeze.frozen([parent.pid, child.pid],
                                                    leave_stopped=True):
        raise RuntimeError("dump failed")
    assert running(parent, child)
    with freeze.frozen([parent.pid, child.pid], leave_stopped=True):
        pass
    try:
        assert states(parent, child) == {"T"}
    finally:
        os.kill(parent.pid, signal.SIGCONT)
        os.kill(child.pid, signal.SIGCONT)
    assert responsive(parent, child)


def test_a_stopped_process_stays_stopped(procs):
    """PTRACE_INTERRUPT of a group-stopped task reports the stop signal; after detach it is
    still in group stop, as it was before we came."""
    p = procs.start()
    os.kill(p.pid, signal.SIGSTOP)
    while states(p) != {"T"}:
        os.sched_yield()
    with freeze.frozen([p.pid]) as fz:
        assert states(p) == {"t"}
        assert all(t.was_group_stopped for t in fz.tracees.values())
    assert states(p) == {"T"}
    os.kill(p.pid, signal.SIGCONT)
    assert responsive(p)


def test_freeze_tree_finds_what_it_freezes(procs):
    host = LinuxHost()
    root = procs.start(children=2)
    a = procs.fork(root)
    a1 = procs.fork(a)
    with host.freeze_tree(root.pid) as tasks:
        assert [t.pid for t in tasks] == [root.pid, a.pid, a1.pid]
        assert tasks[1:] == procfs.discover_tree(root.pid)[1:]
        assert tasks == host.tasks(root.pid) and tasks[0].ppid == 0  # the root of a set
        assert states(root, a, a1) == {"t"}
    assert running(root, a, a1) and responsive(root, a, a1)


def test_clear_errors(procs):
    p = procs.start()
    q = procs.start()
    pid = q.pid
    q.call("ping")
    with pytest.raises(ProcError, match="cannot freeze the dumper itself"), \
         freeze.frozen([p.pid, os.getpid()]):
        pass
    assert running(p)
    os.kill(pid, signal.SIGKILL)
    q.popen.wait()
    with pytest.raises(ProcError) as ei, freeze.frozen([p.pid, pid]):
        pass
    assert ei.value.reason == "gone" and ei.value.pid == pid
    assert running(p) and responsive(p)


def test_ctrl_c_while_seizing_is_deferred_then_thaws(family, monkeypatch):
    """SIGINT during the seize is held until every process is stopped, surfaces as
    KeyboardInterrupt before the body runs, and everything seized is released."""
    parent, child, _ = family
    real = freeze.Freezer.seize_process
    seized: list[int] = []

    def seize_and_interrupt(self, pid):
        real(self, pid)
        seized.append(pid)
        if len(seized) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(freeze.Freezer, "seize_process", seize_and_interrupt)
    body_ran = False
    with pytest.raises(KeyboardInterrupt), freeze.frozen([parent.pid, child.pid]):
        body_ran = True
    assert seized == [parent.pid, child.pid] and not body_ran
    assert running(parent, child) and responsive(parent, child)
