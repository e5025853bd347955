"""A restored task's file descriptors (restore.md §7): regular files reopened by path at
their flags and offsets, pipes re-created once by the restorer with their buffered bytes
and opened by every task that held an end (through /proc/RESTORER/fd: the same pipe), each
moved to its number with dup3 and its FD_CLOEXEC.
"""

from __future__ import annotations

import errno
import fcntl
import os

from dumper.linux.files.pipe import F_SETPIPE_SZ
from dumper.linux.rst_inject import AT_FDCWD, RestoreInjector
from dumper.linux.rst_mm import check_file
from dumper.state import FdState

O_CLOEXEC = os.O_CLOEXEC
NOT_REOPENED = os.O_CREAT | os.O_TRUNC | os.O_EXCL | os.O_NOCTTY
F_SETFD = 2


class FileError(OSError):
    """A descriptor that cannot be restored; the message names the task, fd and file."""


class Pipes:
    """The restorer's pipes, one per dumped pipe inode, filled with what the dump found
    buffered; closed once every task opened its ends."""

    def __init__(self) -> None:
        self.ends: dict[int, tuple[int, int]] = {}

    def get(self, fd: FdState) -> tuple[int, int]:
        ends = self.ends.get(fd.ino)
        if ends is None:
            r, w = os.pipe2(O_CLOEXEC)
            if fd.pipe_size:
                fcntl.fcntl(w, F_SETPIPE_SZ, max(fd.pipe_size, len(fd.data)))
            if fd.data:
                os.set_blocking(w, False)
                os.write(w, fd.data)
            ends = self.ends[fd.ino] = (r, w)
        return ends

    def close(self) -> None:
        for r, w in self.ends.values():
            os.close(r)
            os.close(w)
        self.ends.clear()


def restore_fds(inj: RestoreInjector, fds: list[FdState], pipes: Pipes,
                files: dict[str, tuple[int | None, int]], objects: dict | None = None
                ) -> None:
    """Open every descriptor in the task and put it at its number (the stub has none); a
    memfd held open is the object the memory restore made (objects, by shmid), opened
    through /proc/RESTORER/fd/N: the same file."""
    for fd in fds:
        where = f"task {inj.pid} fd {fd.fd}"
        if fd.kind == "reg":
            if fd.path.endswith(" (deleted)"):
                raise FileError(errno.ENOENT, f"{where}: {fd.path}: the file was deleted")
            if os.path.isfile(fd.path) and fd.size is not None:
                check_file(fd.path, {fd.path: (fd.size, 0)}, where)
            path = fd.path
        elif fd.kind == "pipe":
            r, w = pipes.get(fd)
            end = r if fd.flags & os.O_ACCMODE == os.O_RDONLY else w
            path = f"/proc/{os.getpid()}/fd/{end}"
        elif fd.kind == "memfd":
            obj = (objects or {}).get(fd.ino)
            if obj is None or obj.fd < 0:
                raise FileError(errno.ENOENT, f"{where}: {fd.path}: its object was not "
                                "re-created")
            path = obj.task_path
        else:
            raise FileError(errno.ENOTSUP, f"{where}: a {fd.kind} cannot be restored yet")
        got = inj.call("openat", AT_FDCWD & ((1 << 64) - 1), inj.put_str(path, 1024),
                       fd.flags & ~NOT_REOPENED, 0)
        if got < 0:
            raise FileError(-got, f"{where}: open {fd.path}: {os.strerror(-got)}")
        if got != fd.fd:
            inj.check("dup3", got, fd.fd, O_CLOEXEC if fd.cloexec else 0)
            inj.check("close", got)
        elif fd.cloexec:
            inj.check("fcntl", fd.fd, F_SETFD, 1)
        if fd.kind in ("reg", "memfd") and fd.pos:
            inj.check("lseek", fd.fd, fd.pos, os.SEEK_SET)
