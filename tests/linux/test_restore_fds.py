"""dumper restores every kind of descriptor the dump records (dumper/linux/rst_fds): unix
sockets (socketpairs across the tree with data queued both ways, a shut-down end, a bound
datagram socket with its queue and a client connected to it, listeners), TCP listeners and
UDP sockets with their addresses and options, epoll sets with their targets, eventfd,
signalfd and timerfd; at their numbers, with O_NONBLOCK and FD_CLOEXEC.

Each self-checking C program sets up its state, prints READY, waits for SIGUSR1 and checks
everything itself after the restore (rst_cycle.py: dump, kill, reap, `dumper restore -d`,
signal). The same programs dumped by CRIU 4.2 are restored by dumper too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .rst_build import build
from .test_linux_restore import CPROGS, CRIU, HERE, ROOT, cycle

PROGRAMS = {
    # this programs
    "rst_sockpair": "socketpairs across the tree and inside one task, data queued both ways "
                    "(stream and datagram), O_NONBLOCK, FD_CLOEXEC at fd 40, SO_SNDBUF, a "
                    "shut-down end, a bound datagram socket's queue and its connected client",
    "rst_inet": "a TCP listener (O_NONBLOCK, TCP_NODELAY, TCP_KEEPIDLE, no SO_REUSEADDR) "
                "accepting after the restore; UDP bound (SO_BROADCAST, IP_TTL, SO_RCVBUF), "
                "UDP connected to it (its port kept), UDP on ::1 (IPV6_V6ONLY)",
    "rst_epoll": "epoll over a pipe, a socket at fd 60, an eventfd and an empty pipe "
                 "(EPOLLET), each with its data; an epoll watching it; MOD and DEL after",
    "rst_shared_fd": "a listener, an eventfd, a pipe end and a file (also dup'ed) shared by "
                     "parent and child: one open file description each (O_NONBLOCK set by "
                     "one shows in the other, one offset); two more eventfds, own counts",
    "rst_unix_accept": "unix stream connections accepted from listeners of the tree (a "
                       "relative path, an abstract name; the client bound to a name of its "
                       "own), data queued both ways; names kept, listeners accept again",
    # the dump's own fd programs (issue 11), now through dumper's restore
    "epoll_eventfd": "an eventfd with a count, an epoll set on it and a pipe",
    "socketpair": "stream and datagram socketpairs across the tree, queued data",
    "listen_tcp": "listening TCP sockets, IPv4 and IPv6, accept after the restore",
    "listen_unix": "listening unix sockets, a path (mode kept) and an abstract name",
    "signalfd_timerfd": "a signalfd on a blocked SIGUSR2, a periodic timerfd",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("fdprogs"), {name: (name,) for name in PROGRAMS})


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_dumper_restores_fds_it_dumped(name, built, tmp_path):
    res = cycle(built / name, tmp_path, "dumper")
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_dumper_restores_fds_criu_dumped(name, built, tmp_path):
    """CRIU 4.2's own images of the same programs (its files.img, sk-queues.img, epoll
    targets as it records them)."""
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU} (.ci/run builds it with "
                    "../shared/vendor/build-criu.sh)")
    res = cycle(built / name, tmp_path, "criu", "--shell-job")
    if res["stage"] == "dump":
        pytest.skip(f"CRIU 4.2 cannot dump {name}: {res['log']}"[:500])
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"


OWN = sorted(n for n in PROGRAMS if n.startswith("rst_"))


@pytest.mark.parametrize("name", OWN)
def test_criu_restores_what_dumper_dumped(name, built, tmp_path):
    """The images of this issue's programs (UDP sockets among them) are CRIU's: CRIU 4.2
    restores dumper's set and the program PASSes (criu_cycle.py), where CRIU restores its
    own dump of it (it restores accepted unix connections without their names)."""
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    theirs = _criu_cycle(built / name, tmp_path / "criu", "criu")
    if not theirs["ok"]:
        why = (theirs["log"] or theirs["out"]).replace("\n", " | ")
        pytest.skip(f"CRIU 4.2 cannot restore {name} from its own dump either "
                    f"({theirs['stage']}): {why}"[:500])
    res = _criu_cycle(built / name, tmp_path / "dumper", "dumper")
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"


def _criu_cycle(program: Path, work: Path, how: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(HERE / "criu_cycle.py"), str(CRIU), str(program),
                        str(work), how], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _start(code: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def _dump(pid: int, images: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid), "--tree",
                        "-o", str(images)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def _restore(images: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper.cli", "restore", str(images), "-d"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def _gone(pid: int) -> bool:
    """The pid is free again (the failed restore killed and reaped its stub)."""
    end = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        time.sleep(0.02)
    return not os.path.exists(f"/proc/{pid}")


def test_a_port_taken_fails_atomically_naming_task_fd_and_socket(tmp_path):
    """The listener's port is someone else's at restore time: one line naming the task, the
    fd and the socket, exit 2, and the stub that was made is killed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = _start(f"""
        import os, socket, sys, time
        s = socket.socket()
        s.bind(("127.0.0.1", {port}))
        s.listen(4)
        os.dup2(s.fileno(), 9)
        s.close()
        print("ready", flush=True)
        time.sleep(600)
    """)
    try:
        _dump(p.pid, tmp_path / "images")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        r = _restore(tmp_path / "images")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"dumper: error: task {p.pid} fd 9: AF_INET SOCK_STREAM "
                                f"socket on port {port}: Address already in use"), r.stderr
    assert _gone(p.pid), "the failed restore left its stub behind"


def test_a_tty_without_shell_job_fails_atomically_naming_it(tmp_path):
    """A shell job's pty slave comes back only with --shell-job (as the restorer's
    terminal): without it, one line naming the task, the fd and the tty, exit 2, and the
    stub that was made is gone."""
    master, slave = os.openpty()
    p = subprocess.Popen(["sleep", "60"], stdin=slave, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(slave)
    try:
        time.sleep(0.2)
        _dump(p.pid, tmp_path / "images")
    finally:
        p.kill()
        p.wait()
        os.close(master)
    r = _restore(tmp_path / "images")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dumper: error: task {p.pid} fd 0: a tty "
                                                   "(/dev/pts/"), r.stderr
    assert "is restored only with --shell-job" in lines[0], r.stderr
    assert _gone(p.pid), "the failed restore left its stub behind"


@pytest.mark.parametrize("how", ["dumper", "criu"])
@pytest.mark.parametrize("name", ["rst_tty", "sleep_sig"])
def test_shell_job_on_a_pty_gets_the_restorers_terminal(name, how, tmp_path, monkeypatch):
    """A shell job on a pty (session leader, stdio on it), restored with --shell-job from
    a second terminal: its stdio is that terminal, with the window size and termios it had
    set (rst_tty), and it runs on (sleep_sig); from dumper's set and from CRIU 4.2's."""
    if how == "criu" and not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    binary = tmp_path / name
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(binary),
                    str(CPROGS / f"{name}.c")], check=True, capture_output=True)
    monkeypatch.setenv("CYCLE_PTY", "1")
    res = cycle(binary, tmp_path / "w", how, "--shell-job")
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"
    if name == "rst_tty":
        assert re.search(r"terminal /dev/pts/\d+, then /dev/pts/\d+", res["out"]), res["out"]


def test_a_kind_no_restore_knows_is_one_line_before_anything_is_created(tmp_path):
    """CRIU 4.2 dumps an inotify instance; dumper's restore has no module for it: one
    line naming the task, the fd and the kind, exit 2, before any task is made."""
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    p = _start("""
        import ctypes, os, time
        fd = ctypes.CDLL(None).inotify_init1(0)
        print("ready", flush=True)
        time.sleep(600)
    """)
    images = tmp_path / "images"
    images.mkdir()
    try:
        d = subprocess.run([str(CRIU), "dump", "-t", str(p.pid), "-D", str(images),
                            "--shell-job", "-o", "dump.log"], capture_output=True, text=True)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    if d.returncode != 0:
        pytest.skip(f"CRIU 4.2 cannot dump an inotify here: {d.stderr[-300:]}")
    r = _restore(images)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dumper: error: "), r.stderr
    assert re.search(rf"task {p.pid} fd \d+: an inotify cannot be restored on Linux yet",
                     lines[0]), r.stderr
    assert not os.path.exists(f"/proc/{p.pid}")


@pytest.mark.parametrize("what,code,error", [
    ("udp", """
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", u.getsockname())
        time.sleep(0.1)
     """, r"fd \d+: a UDP socket with \d+ bytes of datagrams queued: those are not dumped"),
    ("listener", """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        c = socket.create_connection(s.getsockname())
     """, r"fd \d+: listening TCP socket \(port \d+\) with 1 connections not yet accepted"),
    ("semaphore", """
        e = os.eventfd(3, os.EFD_SEMAPHORE)
     """, r"fd \d+: an eventfd in semaphore mode \(EFD_SEMAPHORE\)"),
])
def test_what_a_restore_could_not_give_back_is_not_dumped(what, code, error, tmp_path):
    """Datagrams waiting in a UDP socket (their senders are not dumped; CRIU drops them),
    connections a listener has not accepted, an eventfd's semaphore mode (no image field:
    CRIU restores a plain counter): the dump refuses, naming pid and fd."""
    p = _start("import os, socket, time\n" + textwrap.dedent(code) +
               "print('ready', flush=True)\ntime.sleep(600)\n")
    try:
        r = subprocess.run([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(p.pid),
                            "--tree", "-q", "-o", str(tmp_path / "images")],
                           capture_output=True, text=True, cwd=ROOT)
    finally:
        p.kill()
        p.wait()
    assert r.returncode == 2, r.stderr
    assert re.search(rf"^dumper: error: pid {p.pid}: {error}", r.stderr, re.M), r.stderr
    assert not (tmp_path / "images").exists()
