"""eventfd (CRIU's eventfd.c): made here with the dumped count and O_NONBLOCK
(fs/eventfd.c do_eventfd), handed to the task."""

from __future__ import annotations

import os

from dumper.linux.rst_fds.common import FdSet
from dumper.state import FdState


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    ours = os.eventfd(fd.counter, os.EFD_CLOEXEC | (fd.flags & os.O_NONBLOCK))
    return fs.keep(fd, ours)
