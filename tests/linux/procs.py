"""Helper processes for the Linux tests, and their clean end in every outcome.

Each helper (tests/linux/helper.py) is driven over a socketpair: a command, then its reply,
so the test knows each step is done. Every process a test starts, children a helper forks
included, is recorded with a pidfd the moment its pid is known, and ProcSet.end_all() kills
exactly those (pidfd_send_signal: no pid-reuse race) and waits until each has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HELPER = Path(__file__).with_name("helper.py")
PAGE = 4096
TIMEOUT = 20.0  # a helper that does not answer fails the test instead of hanging CI


def page_pattern(tag: int, page: int) -> bytes:
    """Same as helper.page_pattern: 4 KiB distinct for every (tag, page)."""
    return struct.pack("<QQ", tag, page) * (PAGE // 16)


class HelperError(Exception):
    pass


class Proc:
    """One helper process: call(op, **args) runs an operation in it and returns the reply."""

    def __init__(self, chan: socket.socket, popen: subprocess.Popen[bytes] | None) -> None:
        self.chan = chan
        self.popen = popen
        self._buf = b""
        self.pid = self._recv()["ready"]
        self.pidfd = os.pidfd_open(self.pid)
        # Channels for children yet to be forked, shared by a helper and its descendants:
        # (our end, the helper's fd number, which every descendant inherits).
        self.pool: list[tuple[socket.socket, int]] = []

    def _recv(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.chan.recv(65536)
            if not chunk:
                raise HelperError("helper closed its channel (it died)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.chan.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        out = self._recv()
        if "error" in out:
            raise HelperError(f"helper {self.pid}: {out['error']}")
        return out

    def mmap(self, name: str, pages: int, **kw: Any) -> int:
        return self.call("mmap", name=name, pages=pages, **kw)["addr"]

    def write(self, name: str, pages: list[int] | range, tag: int) -> None:
        self.call("write", name=name, pages=list(pages), tag=tag)

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def quiesce(self) -> None:
        """Wait until the helper sleeps in read(2) on its channel (/proc/PID/syscall: nr 0).

        A helper replies, then returns through the interpreter into read(); until it gets
        there it still writes its own heap and stack. Once asleep in read() its memory stays
        put, and a freeze (PTRACE_INTERRUPT) restarts the read without running user code,
        so a dump and a later verify see the same bytes. Polls a kernel state with a
        deadline; never a sleep that guesses."""
        deadline = time.monotonic() + TIMEOUT
        path = f"/proc/{self.pid}/syscall"
        while True:
            with open(path) as f:
                nr = f.read().split(None, 1)[0]
            if nr == "0":
                return
            if time.monotonic() > deadline:
                raise HelperError(f"helper {self.pid} never blocked in read(): {nr}")
            os.sched_yield()


class ProcSet:
    """The processes a test started; end_all() ends exactly these."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, children: int = 0, fds: dict[str, int] | None = None,
              cpu: int | None = None) -> Proc:
        """A new helper; `children` spare channels let it fork that many served children."""
        ours, theirs = socket.socketpair()
        spare = [socket.socketpair() for _ in range(children)]
        fds = fds or {}
        cfg = {"chan": theirs.fileno(), "spare": [b.fileno() for _, b in spare], "fds": fds,
               "cpu": cpu}
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", str(HELPER), json.dumps(cfg)],
            pass_fds=[theirs.fileno(), *(b.fileno() for _, b in spare), *fds.values()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        helper_fds = [b.fileno() for _, b in spare]  # same numbers in the helper
        for _, b in spare:
            b.close()
        ours.settimeout(TIMEOUT)
        try:
            proc = Proc(ours, popen)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        proc.pool = [(a, fd) for (a, _), fd in zip(spare, helper_fds, strict=True)]
        self.procs.append(proc)
        return proc

    def fork(self, parent: Proc) -> Proc:
        """Make parent fork(); the child serves parent's next spare channel."""
        chan, fd = parent.pool.pop(0)
        chan.settimeout(TIMEOUT)
        parent.call("fork", chan=fd)
        child = Proc(chan, None)
        child.pool = parent.pool
        self.procs.append(child)
        return child

    def end_all(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(p.pidfd, signal.SIGKILL)
        for p in reversed(self.procs):
            if p.popen is not None:
                p.popen.wait(TIMEOUT)
            else:
                # Readable once the process has exited (it may stay a zombie of its parent
                # until that parent, also killed here, is gone).
                select.select([p.pidfd], [], [], TIMEOUT)
            os.close(p.pidfd)
            p.chan.close()
            for s, _ in p.pool:
                s.close()
            p.pool.clear()
        self.procs.clear()


def task_states(pid: int) -> dict[int, str]:
    """tid -> state letter of every thread of pid (R, S, t, T, ...)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            text = f.read()
        out[int(tid)] = text[text.rindex(")") + 2]
    return out
