"""signalfd (CRIU's signalfd.c): made here with the dumped mask and O_NONBLOCK
(fs/signalfd.c do_signalfd4); it reads the signals of whichever task reads it."""

from __future__ import annotations

import ctypes
import os

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.state import FdState

SYS_signalfd4 = 289
_libc = ctypes.CDLL(None, use_errno=True)


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    mask = ctypes.c_uint64(fd.counter)
    ours = _libc.syscall(ctypes.c_long(SYS_signalfd4), ctypes.c_int(-1), ctypes.byref(mask),
                         ctypes.c_size_t(8), ctypes.c_int(os.O_CLOEXEC))
    if ours < 0:
        err = ctypes.get_errno()
        raise FileError(err, f"{where}: signalfd: {os.strerror(err)}")
    return fs.keep(fd, ours)
