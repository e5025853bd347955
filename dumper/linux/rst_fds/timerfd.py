"""timerfd (CRIU's timerfd.c): made here on the dumped clock, armed with the time that was
left and the interval (fdinfo shows the remaining time, so relative), and the expirations
not yet read put back with TFD_IOC_SET_TICKS (fs/timerfd.c, CONFIG_CHECKPOINT_RESTORE)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.state import FdState

SYS_timerfd_create, SYS_timerfd_settime = 283, 286
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64)
_libc = ctypes.CDLL(None, use_errno=True)


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    t = fd.timer
    ours = _libc.syscall(ctypes.c_long(SYS_timerfd_create), ctypes.c_int(t["clockid"]),
                         ctypes.c_int(os.O_CLOEXEC))
    if ours < 0:
        err = ctypes.get_errno()
        raise FileError(err, f"{where}: timerfd_create(clock {t['clockid']}): "
                        f"{os.strerror(err)}")
    fs.keep(fd, ours)
    spec = ctypes.create_string_buffer(struct.pack("<4q", t["isec"], t["insec"], t["vsec"],
                                                   t["vnsec"]))
    if _libc.syscall(ctypes.c_long(SYS_timerfd_settime), ctypes.c_int(ours), ctypes.c_int(0),
                     spec, ctypes.c_void_p(0)) < 0:
        err = ctypes.get_errno()
        raise FileError(err, f"{where}: timerfd_settime: {os.strerror(err)}")
    if t["ticks"]:
        fcntl.ioctl(ours, TFD_IOC_SET_TICKS, struct.pack("<Q", t["ticks"]))
    return ours
