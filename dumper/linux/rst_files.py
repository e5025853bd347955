"""A restored task's file descriptors (restore.md §7): each descriptor's kind (rst_fds, by
fdinfo type) opens or makes its file in the restorer, once per files.img entry, and this
puts it at its number in the task: taken with pidfd_getfd(2) on a pidfd of ours the task
opened through /proc/RESTORER/fd/N (the same open file description in every fd that
shares the entry, in any pid namespace), then dup3 to its number with its FD_CLOEXEC;
once every descriptor is in place, each kind's settle step (epoll targets, added by the
task on its own numbers).
"""

from __future__ import annotations

import errno
import os
import resource

from dumper.images.criustate import fd_type
from dumper.linux.rst_fds import KINDS, FdSet, FileError
from dumper.linux.rst_inject import AT_FDCWD, RestoreInjector
from dumper.state import FdState

__all__ = ["FdSet", "FileError", "restore_fds"]

O_CLOEXEC = os.O_CLOEXEC
F_SETFD, F_DUPFD_CLOEXEC = 2, 1030


def restore_fds(inj: RestoreInjector, fds: list[FdState], fdset: FdSet,
                objects: dict | None = None) -> None:
    """Open every descriptor in the task and put it at its number (the stub has none); a
    memfd held open is the object the memory restore made (objects, by shmid)."""
    fdset.objects = objects or {}
    placed: dict[int, FdState] = {}
    pidfd = -1
    top = max((fd.fd for fd in fds), default=0) + 1
    _room_for(inj.pid, top + 1)
    for fd in fds:
        where = f"task {inj.pid} fd {fd.fd}"
        kind = KINDS.get(fd_type(fd))
        if kind is None:
            raise FileError(errno.ENOTSUP, f"{where}: a {fd.kind} ({fd.path}) cannot be "
                            "restored yet")
        ours = _open(kind, fdset, fd, where)
        if pidfd < 0:
            pidfd = _our_pidfd(inj, fdset, top, where)
        got = inj.call("pidfd_getfd", pidfd, ours, 0)
        if got < 0:
            raise FileError(-got, f"{where}: pidfd_getfd of the restorer's {kind.name}: "
                            f"{os.strerror(-got)}")
        if got != fd.fd:
            inj.check("dup3", got, fd.fd, O_CLOEXEC if fd.cloexec else 0)
            inj.check("close", got)
        else:
            inj.check("fcntl", fd.fd, F_SETFD, int(fd.cloexec))
        placed[fd.fd] = fd
    if pidfd >= 0:
        inj.check("close", pidfd)
    for fd in fds:
        kind = KINDS[fd_type(fd)]
        if kind.settle is not None:
            kind.settle(inj, fdset, fd, f"task {inj.pid} fd {fd.fd}", placed)


def _open(kind, fdset: FdSet, fd: FdState, where: str) -> int:
    """Our descriptor of fd's file: the kind's open, once per files.img entry; an OS error
    names the task, fd and kind."""
    if fd.desc in fdset.made:
        return fdset.made[fd.desc]
    try:
        return kind.open_fd(fdset, fd, where)
    except FileError:
        raise
    except (OSError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise FileError(getattr(e, "errno", None) or errno.EINVAL,
                        f"{where}: {kind.name}: {msg}") from None


def _room_for(pid: int, n: int) -> None:
    """RLIMIT_NOFILE of the stub at least n, as far as its hard limit goes (the dumped
    limits are set after the files; raising a hard limit needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    if soft < n:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(n, hard), hard))


def _our_pidfd(inj: RestoreInjector, fdset: FdSet, top: int, where: str) -> int:
    """A pidfd on the restorer in the task, above every descriptor it will hold."""
    got = inj.call("openat", AT_FDCWD & ((1 << 64) - 1), inj.put_str(fdset.pidfd_path(), 1024),
                   os.O_RDONLY, 0)
    if got < 0:
        raise FileError(-got, f"{where}: open the restorer's pidfd: {os.strerror(-got)}")
    high = inj.call("fcntl", got, F_DUPFD_CLOEXEC, top)
    inj.check("close", got)
    if high < 0:
        raise FileError(-high, f"{where}: a descriptor above {top}: {os.strerror(-high)}")
    return high
