"""Pipes (CRIU's pipes.c): one pipe per dumped pipe inode, made here with the bytes the dump
found buffered; each files.img entry is an open of the end it names through our own
/proc/self/fd/N (fifo_open on the same pipe inode: a description of its own, with its
flags, shared by the tasks that hold it)."""

from __future__ import annotations

import fcntl
import os

from dumper.linux.files.pipe import F_SETPIPE_SZ
from dumper.linux.rst_fds.common import FdSet
from dumper.state import FdState


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    ends = fs.pipes.get(fd.ino)
    if ends is None:
        r, w = os.pipe2(os.O_CLOEXEC)
        if fd.pipe_size:
            fcntl.fcntl(w, F_SETPIPE_SZ, max(fd.pipe_size, len(fd.data)))
        if fd.data:
            os.set_blocking(w, False)
            os.write(w, fd.data)
        ends = fs.pipes[fd.ino] = (r, w)
    end = ends[0] if fd.flags & os.O_ACCMODE == os.O_RDONLY else ends[1]
    fd.pos = 0
    return fs.reopen(fd, f"/proc/self/fd/{end}")
