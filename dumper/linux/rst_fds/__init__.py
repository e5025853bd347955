"""How a restore re-creates each kind of descriptor, one module per kind, one table keyed
by the fdinfo type (CRIU's FdTypes, as criustate.fd_type gives it): the restore half of
dumper.linux.files, as CRIU's file_desc_ops (criu/files.c) pairs each dump with an open.

Each kind gives `open_fd(fdset, fd, where) -> int`, our descriptor of the file it opened or
made here (the task takes it over), and may give `settle(inj, fdset, fd, where, placed)`,
run in the task once all its descriptors are at their numbers (epoll targets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dumper.images.proto import criu_images_pb2 as criu
from dumper.linux.rst_fds import (
    eventfd,
    eventpoll,
    inet,
    memfd,
    pipe,
    reg,
    signalfd,
    timerfd,
    tty,
    unix,
)
from dumper.linux.rst_fds.common import FdSet, FileError

__all__ = ["KINDS", "FdSet", "FileError", "Kind"]


@dataclass(frozen=True)
class Kind:
    name: str  # for messages
    open_fd: Callable[..., int]
    settle: Callable[..., None] | None = None


KINDS: dict[int, Kind] = {
    criu.REG: Kind("regular file", reg.open_fd),
    criu.PIPE: Kind("pipe", pipe.open_fd),
    criu.MEMFD: Kind("memfd", memfd.open_fd),
    criu.UNIXSK: Kind("unix socket", unix.open_fd),
    criu.INETSK: Kind("inet socket", inet.open_fd),
    criu.EVENTFD: Kind("eventfd", eventfd.open_fd),
    criu.EVENTPOLL: Kind("epoll", eventpoll.open_fd, eventpoll.settle),
    criu.SIGNALFD: Kind("signalfd", signalfd.open_fd),
    criu.TIMERFD: Kind("timerfd", timerfd.open_fd),
    criu.TTY: Kind("tty", tty.open_fd),
}
