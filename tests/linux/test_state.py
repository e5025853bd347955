"""The process state a live dump records (issue 11; issue 10 items 6 and 7): every thread,
zombies, registers, signal actions, files, and that asking changes nothing in the task."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dumper.dump import dump
from dumper.images import codec
from dumper.images import flags as F
from dumper.images import magic as M
from dumper.images.reader import ImageSet
from dumper.linux import freeze, inject, regs
from dumper.linux.errors import Unsupported
from dumper.linux.host import LinuxHost

CRIT_42 = Path(os.environ.get("DUMPER_CRIT", "/var/cache/dumper/criu-4.2/crit"))
ANY = frozenset({"any"})


def start(code: str, *, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    """A Python process running code, which prints "ready" once set up."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                         pass_fds=pass_fds)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def started():
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:  # ours only, by pid; their children die with them (pdeath) or are reaped
        p.kill()
        p.wait(30)


def fdinfo(out: Path, pid: int) -> list:
    """The fdinfo entries of pid's files table (ids-PID.img names it)."""
    files_id = codec.load(out / M.ids(pid), codec.BY_NAME["IDS"]).entries[0].files_id
    return codec.load(out / M.fdinfo(files_id), codec.BY_NAME["FDINFO"]).entries


def settle(pid: int) -> None:
    """Until every thread of pid sleeps (state S): then a freeze finds them all in the
    syscall they sleep in."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
            states.append(text[text.rindex(")") + 2])
        if all(s == "S" for s in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never settled: {states}")


THREADS = """
    import threading, time
    evs = [threading.Event() for _ in range(4)]
    for e in evs:
        threading.Thread(target=e.wait, daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)
"""


def test_every_thread_is_recorded(started, tmp_path):
    """Issue 10 item 6: a task with 5 threads is dumped with 5 (pstree threads, a core per
    thread as CRIU writes them: the leader's with the task core, each with its registers)."""
    p = start(THREADS)
    started.append(p)
    settle(p.pid)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
    assert len(tids) == 5
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    with ImageSet.open(out) as s:
        assert sorted(s.tasks[p.pid].threads) == tids
    fs_bases = set()
    for tid in tids:
        core = codec.load(out / M.core(tid), codec.BY_NAME["CORE"]).entries[0]
        assert core.HasField("thread_info") and core.HasField("thread_core")
        assert core.HasField("tc") == (tid == p.pid)
        assert core.thread_info.fpregs.xsave.xstate_bv or core.thread_info.fpregs.mxcsr
        assert core.thread_core.HasField("creds") and core.thread_core.HasField("rseq_entry")
        fs_bases.add(core.thread_info.gpregs.fs_base)
        # each sleeps in a syscall the restore re-executes (futex / clock_nanosleep)
        assert core.thread_info.gpregs.orig_ax < 1 << 32
    assert len(fs_bases) == 5  # every thread has its own TLS


ZOMBIE = """
    import os, time
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    print("ready", pid, flush=True)
    time.sleep(600)
"""


def test_zombie_is_recorded(started, tmp_path):
    """Issue 10 item 7: a child that exited and was not waited for is in the tree: its pid,
    ppid, pgid, sid and exit code, state dead, a core with the task core alone and no mm
    (CRIU's dump_one_zombie)."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(ZOMBIE)],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, text=True)
    started.append(p)
    assert p.stdout is not None
    zombie = int(p.stdout.readline().split()[1])
    with open(f"/proc/{zombie}/stat") as f:
        assert f.read().split(") ")[1][0] == "Z"
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    with ImageSet.open(out) as s:
        assert list(s.tasks) == [p.pid, zombie]
        z = s.tasks[zombie]
        assert z.ppid == p.pid and z.pgid == os.getpgid(p.pid) and z.sid == os.getsid(p.pid)
        assert z.state == F.TASK_DEAD
    core = codec.load(out / M.core(zombie), codec.BY_NAME["CORE"]).entries[0]
    assert core.tc.exit_code == 3 << 8  # the wait status, as /proc/PID/stat field 52 has it
    assert not core.HasField("thread_info")
    assert not (out / M.mm(zombie)).exists()
    with open(f"/proc/{zombie}/stat") as f:  # still the parent's to reap
        assert f.read().split(") ")[1][0] == "Z"


HANDLERS = """
    import signal, time
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTRAP, signal.SIG_IGN)  # a forced trap would reset it to SIG_DFL
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
    print("ready", flush=True)
    time.sleep(600)
"""


def _status_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":\t") for line in f if
                                          line.startswith(("SigBlk", "SigIgn", "SigCgt")))}


def test_signal_state_matches_proc_and_is_left_alone(started, tmp_path):
    """The 62 signal actions read by injected rt_sigaction agree with /proc's SigIgn/SigCgt;
    the blocked mask with SigBlk; and the dump (injection included) leaves the task's maps,
    masks and registers as they were, its vdso pages untouched."""
    p = start(HANDLERS)
    started.append(p)
    settle(p.pid)
    maps = Path(f"/proc/{p.pid}/maps").read_text()
    masks = _status_masks(p.pid)
    with freeze.frozen([p.pid]):
        before = regs.get_gpregs(p.pid)
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    with freeze.frozen([p.pid]):
        after = regs.get_gpregs(p.pid)
    assert Path(f"/proc/{p.pid}/maps").read_text() == maps
    assert _status_masks(p.pid) == masks
    assert {k: after[k] for k in ("ip", "sp", "fs_base", "orig_ax")} == \
        {k: before[k] for k in ("ip", "sp", "fs_base", "orig_ax")}
    tc = codec.load(out / M.core(p.pid), codec.BY_NAME["CORE"]).entries[0].tc
    sigs = [s for s in range(1, 65) if s not in (signal.SIGKILL, signal.SIGSTOP)]
    assert len(tc.sigactions) == len(sigs)
    ign = sum(1 << (s - 1) for s, a in zip(sigs, tc.sigactions, strict=True)
              if a.sigaction == 1)
    cgt = sum(1 << (s - 1) for s, a in zip(sigs, tc.sigactions, strict=True)
              if a.sigaction > 1)
    assert (ign, cgt) == (masks["SigIgn"], masks["SigCgt"])
    assert ign & (1 << (signal.SIGUSR2 - 1)) and cgt & (1 << (signal.SIGUSR1 - 1))
    assert ign & (1 << (signal.SIGTRAP - 1))
    assert tc.blk_sigset == masks["SigBlk"] and masks["SigBlk"] & (1 << (signal.SIGWINCH - 1))


def test_unsupported_fd_is_a_clear_error(started, tmp_path):
    """A netlink socket is not dumped yet: the error names pid, fd and kind, and nothing is
    left behind; --leave-out (leave_out) drops it and keeps the rest."""
    p = start("""
        import os, socket, time
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM)
        os.dup2(s.fileno(), 7)
        s.close()
        print("ready", flush=True)
        time.sleep(600)
    """)
    started.append(p)
    out = tmp_path / "set"
    with pytest.raises(Unsupported, match=rf"pid {p.pid}: fd 7 is a socket \(socket:\[\d+\]\), "
                                          "AF_NETLINK SOCK_DGRAM, not listening"):
        dump(LinuxHost(), p.pid, str(out), leave_out=frozenset({"pipe"}))
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
    dump(LinuxHost(), p.pid, str(out), leave_out=frozenset({"socket", "pipe"}))
    fds = fdinfo(out, p.pid)
    assert 7 not in [e.fd for e in fds] and {0, 2} <= {e.fd for e in fds}


def test_file_offset_and_pipe_data(started, tmp_path):
    """A regular file at an offset (its path, flags, pos, size) and a pipe holding bytes:
    pipes-data.img has them, and the pipe still holds them after the dump."""
    f = tmp_path / "data.txt"
    f.write_bytes(b"x" * 100)
    p = start(f"""
        import os, time
        fd = os.open({str(f)!r}, os.O_RDWR)
        os.lseek(fd, 42, os.SEEK_SET)
        r, w = os.pipe()
        os.write(w, b"buffered!")
        print("ready", flush=True)
        time.sleep(600)
    """)
    started.append(p)
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    files = codec.load(out / M.FILES, codec.BY_NAME["FILES"]).entries
    reg = [e.reg for e in files if e.HasField("reg") and e.reg.name == str(f) and e.reg.pos]
    assert len(reg) == 1 and reg[0].pos == 42 and reg[0].size == 100
    assert reg[0].flags & os.O_ACCMODE == os.O_RDWR
    ids = [e.pipe.pipe_id for e in files if e.HasField("pipe")]  # stdout is a pipe too
    pipes = [e.pipe for e in files if e.HasField("pipe") and ids.count(e.pipe.pipe_id) == 2]
    assert len(pipes) == 2  # both ends, one pipe
    img = codec.load(out / "pipes-data.img", codec.BY_NAME["PIPES_DATA"])
    assert img.extras == [b"buffered!"] and img.entries[0].pipe_id == pipes[0].pipe_id
    ends = [e for e in fdinfo(out, p.pid) if e.type == 2 and e.fd > 2]
    r = min(e.fd for e in ends)  # the read end was opened first
    with open(f"/proc/{p.pid}/fd/{r}", "rb", buffering=0) as rf:
        os.set_blocking(rf.fileno(), False)
        assert rf.read(100) == b"buffered!"  # not consumed by the dump


def test_injected_syscalls_leave_no_trace(started):
    """getpid by injection returns the pid; the scratch page is gone afterwards."""
    p = start(THREADS)
    started.append(p)
    settle(p.pid)
    maps = Path(f"/proc/{p.pid}/maps").read_text()
    with freeze.frozen([p.pid]):
        inj = inject.Injector(p.pid, p.pid)
        assert inj.syscall("getpid") == p.pid
        with inj.scratch() as buf:
            assert f"{buf:x}-" in Path(f"/proc/{p.pid}/maps").read_text()
            assert inject.tid_address(inj, buf) != 0
        assert inj.syscall("rt_sigaction", 0, 0, 0, 8) == -22  # EINVAL comes back negative
    assert Path(f"/proc/{p.pid}/maps").read_text() == maps


@pytest.mark.parametrize(("ax", "orig", "want_ax", "ip_back"), [
    (-512, 7, 7, 2),    # ERESTARTSYS: re-executed
    (-513, 7, 7, 2),    # ERESTARTNOINTR
    (-514, 230, 230, 2),  # ERESTARTNOHAND
    (-516, 230, -4, 0),   # ERESTART_RESTARTBLOCK: -EINTR, as CRIU
    (-11, 0, -11, 0),   # a plain error: left as it is
])
def test_restart_fixup(ax, orig, want_ax, ip_back):
    m = (1 << 64) - 1
    r = {k: 0 for k in regs.GPREGS}
    r.update(ax=ax & m, orig_ax=orig, ip=0x1000)
    fixed, _ = regs.restart_fixup(r)
    assert fixed["ax"] == want_ax & m and fixed["ip"] == 0x1000 - ip_back


def test_restart_fixup_outside_a_syscall():
    r = {k: 0 for k in regs.GPREGS}
    r.update(ax=(-512) & ((1 << 64) - 1), orig_ax=(1 << 64) - 1, ip=0x1000)
    assert regs.restart_fixup(r)[0] == r


def _crit_decodes(crit: list[str], env: dict | None, out: Path) -> list[str]:
    bad = []
    for img in sorted(out.iterdir()):
        if img.name.startswith("pages-") or img.name in (M.DUMPER, M.OBJECTS) or \
                img.name.startswith(("cow-", "guards-", "truth-")):
            continue
        r = subprocess.run([*crit, "decode", "-i", str(img)], capture_output=True, env=env,
                           timeout=60)
        if r.returncode != 0:
            bad.append(f"{img.name}: {r.stderr.decode()[-300:]}")
        else:
            json.loads(r.stdout)
    return bad


@pytest.mark.crit
def test_crit_decodes_every_state_image(started, tmp_path):
    """Debian's crit 3.17 and CRIU 4.2's crit decode every CRIU image of a live set with
    threads, a zombie, files and pipes."""
    from imagesupport import crit_env, crit_or_skip

    p = start(ZOMBIE.replace('print("ready", pid, flush=True)', """
    import threading, os
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    r, w = os.pipe(); os.write(w, b"data")
    print("ready", flush=True)"""))
    started.append(p)
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    assert {"fs", "ids", "fdinfo", "pipes"} <= {n.name.split("-")[0] for n in out.iterdir()}
    assert _crit_decodes([crit_or_skip()], crit_env(), out) == []
    if CRIT_42.exists():
        assert _crit_decodes([str(CRIT_42)], crit_env(), out) == []


def test_stopped_task_is_recorded_stopped(started, tmp_path):
    """A task SIGSTOPped before the dump is recorded stopped (task_state 3, stop_signo) —
    under our ptrace every tracee reads 't' in /proc, so the freezer's own record says so —
    and is left stopped."""
    p = start(THREADS)
    started.append(p)
    settle(p.pid)
    os.kill(p.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=ANY)
    tc = codec.load(out / M.core(p.pid), codec.BY_NAME["CORE"]).entries[0].tc
    assert (tc.task_state, tc.stop_signo) == (F.TASK_STOPPED, signal.SIGSTOP)
    # thaw() waits until a task that was group-stopped is back in the stop
    assert Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] == "T"


def test_unix_socketpair_queue_is_peeked_not_taken(started, tmp_path):
    """A socketpair with bytes queued: sk-queues.img holds them, the socket still does (and
    its SO_PEEK_OFF is as it was); a unix socket whose peer is outside the tree is refused."""
    from dumper.linux.files.socket import SO_PEEK_OFF, pidfd_getfd

    p = start("""
        import socket, time
        a, b = socket.socketpair()
        a.send(b"in the queue")
        print("ready", flush=True)
        time.sleep(600)
    """)
    started.append(p)
    out = tmp_path / "set"
    dump(LinuxHost(), p.pid, str(out), leave_out=frozenset({"pipe"}))
    img = codec.load(out / "sk-queues.img", codec.BY_NAME["SK_QUEUES"])
    assert img.extras == [b"in the queue"]
    socks = [e for e in fdinfo(out, p.pid) if e.type == 5]  # UNIXSK
    assert len(socks) == 2
    b = socket.socket(fileno=pidfd_getfd(p.pid, max(e.fd for e in socks)))
    try:
        assert b.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == -1
        assert b.recv(100, socket.MSG_DONTWAIT) == b"in the queue"
    finally:
        b.close()
    ours, theirs = socket.socketpair()
    try:
        q = start(f"""
            import os, time
            os.dup2({theirs.fileno()}, 9)
            print("ready", flush=True)
            time.sleep(600)
        """, pass_fds=(theirs.fileno(),))
        started.append(q)
        with pytest.raises(Unsupported, match=rf"pid {q.pid}: fd 9 is a unix socket .*"
                                              r"peer, socket \d+, is outside the dumped"):
            dump(LinuxHost(), q.pid, str(tmp_path / "out2"), leave_out=frozenset({"pipe"}))
    finally:
        ours.close()
        theirs.close()
