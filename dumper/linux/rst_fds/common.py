"""What every fd kind's restore shares: the restorer's side of the files it re-creates.

Each kind opens or makes its file here, in the restorer, once per files.img entry, and the
task takes it over with pidfd_getfd(2) on a pidfd of ours (kernel/pid.c pidfd_getfd: the
same struct file), so every fd holding one entry — dup'ed, or inherited over fork — gets
the one open file description, with its offset and status flags, as CRIU's file masters
pass theirs by SCM_RIGHTS.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from dumper.state import FdState

# What a reopen leaves out of the dumped flags: they act at creation only.
NOT_REOPENED = os.O_CREAT | os.O_TRUNC | os.O_EXCL | os.O_NOCTTY
# fcntl F_SETFL changes only these (fs/fcntl.c SETFL_MASK); the access mode is the open's.
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_NDELAY | os.O_DIRECT | os.O_NOATIME | os.O_ASYNC


class FileError(OSError):
    """A descriptor that cannot be restored; the message names the task, fd and file."""


class FdSet:
    """The restorer's files while a restore runs, kept until every task took its own:
    pipes by inode, made files by files.img id (desc), sockets by inode, and every socket
    of the set by inode (a socketpair's ends are in different tasks)."""

    def __init__(self, fds: list[FdState], shell_job: bool = False) -> None:
        self.shell_job = shell_job  # a terminal is the restorer's (criu's --shell-job)
        self.terminals: set[int] = set()  # pty indexes whose settings went in
        self.pipes: dict[int, tuple[int, int]] = {}
        self.made: dict[int, int] = {}  # files.img id -> our fd
        self.socks: dict[int, socket.socket] = {}  # socket inode -> ours
        self.sockets = {fd.ino: fd for fd in fds if fd.kind == "socket"}
        self.shutdowns: list[tuple[socket.socket, int]] = []  # once all queues are in
        self.settled: set[int] = set()  # files.img ids set up once (epoll targets)
        self.objects: dict = {}  # shmid -> LinuxObject (memfds)
        self._pidfd = -1

    def keep(self, fd: FdState, ours: int) -> int:
        """Hold our descriptor of fd's file (its status flags set as dumped) for the tasks."""
        self.made[fd.desc] = ours
        fcntl.fcntl(ours, fcntl.F_SETFL, fd.flags & SETFL_MASK)
        return ours

    def reopen(self, fd: FdState, path: str) -> int:
        """Open path here at fd's flags (what only a creation needs dropped), at its
        offset, and hold it for the tasks: one description for every fd of the entry."""
        ours = os.open(path, (fd.flags & ~NOT_REOPENED) | os.O_CLOEXEC)
        self.made[fd.desc] = ours
        if fd.pos:
            os.lseek(ours, fd.pos, os.SEEK_SET)
        return ours

    def pidfd_path(self) -> str:
        """/proc/RESTORER/fd/N of a pidfd on us: a task in any pid namespace can open it."""
        if self._pidfd < 0:
            self._pidfd = os.pidfd_open(os.getpid())
        return f"/proc/{os.getpid()}/fd/{self._pidfd}"

    def close(self) -> None:
        """Shut down what was shut down (after every queue went in), close all of ours."""
        for s, how in self.shutdowns:
            with contextlib.suppress(OSError):  # ENOTCONN: the peer is gone already
                s.shutdown(how)
        for r, w in self.pipes.values():
            os.close(r)
            os.close(w)
        socks = {s.fileno() for s in self.socks.values()}
        for ours in set(self.made.values()) - socks:
            os.close(ours)
        for s in self.socks.values():
            s.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
        self.pipes.clear()
        self.made.clear()
        self.socks.clear()
        self.shutdowns.clear()
        self._pidfd = -1
