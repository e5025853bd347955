"""epoll sets (CRIU's eventpoll.c): the instance is made here and handed over; its targets
are added by the task itself once every one of its descriptors is at its number: an epoll
item is keyed by (file, fd number) (fs/eventpoll.c ep_find), so EPOLL_CTL_ADD must name the
task's own fd, with the events and data recorded. An instance two tasks share gets its
targets once."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.linux.rst_inject import RestoreInjector
from dumper.state import FdState

EPOLL_CTL_ADD = 1
EPOLL_EVENT = struct.Struct("<IQ")  # struct epoll_event, packed on x86-64
_libc = ctypes.CDLL(None, use_errno=True)


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    ours = _libc.epoll_create1(os.O_CLOEXEC)
    if ours < 0:
        err = ctypes.get_errno()
        raise FileError(err, f"{where}: epoll_create1: {os.strerror(err)}")
    return fs.keep(fd, ours)


def settle(inj: RestoreInjector, fs: FdSet, fd: FdState, where: str,
           placed: dict[int, FdState]) -> None:
    """EPOLL_CTL_ADD of each target, by the task (ep_insert on its own fd numbers)."""
    if fd.desc in fs.settled:
        return
    fs.settled.add(fd.desc)
    for tfd, events, data, _pos, ino, _dev in fd.targets:
        target = placed.get(tfd)
        if target is None:
            raise FileError(errno.EBADF, f"{where}: epoll target fd {tfd} is not one the "
                            "task holds in the images")
        if ino and target.kind in ("socket", "pipe") and ino & 0xFFFFFFFF != target.ino:
            raise FileError(errno.EBADF, f"{where}: epoll target fd {tfd} (inode {ino:#x}) "
                            f"is now another file ({target.path})")
        got = inj.call("epoll_ctl", fd.fd, EPOLL_CTL_ADD, tfd,
                       inj.put(EPOLL_EVENT.pack(events, data), 2048))
        if got < 0:
            raise FileError(-got, f"{where}: epoll_ctl(ADD, fd {tfd}, events {events:#x}): "
                            f"{os.strerror(-got)}")
