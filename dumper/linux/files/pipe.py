"""Pipes (CRIU's pipes.c): both ends name the pipe's inode; the buffered bytes are read
without consuming them, by tee(2) into a pipe of our own (fs/splice.c do_tee links the
buffers, the reader still sees them)."""

from __future__ import annotations

import ctypes
import fcntl
import os

from dumper.linux.files.common import base_state
from dumper.state import FdState

F_GETPIPE_SZ, F_SETPIPE_SZ = 1032, 1031
SPLICE_F_NONBLOCK = 2
_libc = ctypes.CDLL(None, use_errno=True)
_tee = _libc.tee
_tee.restype = ctypes.c_ssize_t
_tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]


def peek(path: str) -> tuple[bytes, int]:
    """(the bytes buffered in the pipe at path, its capacity), consuming none of them.
    The pipe is opened through /proc/PID/fd (fifo_open on the same pipe inode), O_RDONLY |
    O_NONBLOCK so an empty pipe is no wait."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        size = fcntl.fcntl(fd, F_GETPIPE_SZ)
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
            n = _tee(fd, w, size, SPLICE_F_NONBLOCK)
            if n < 0:
                err = ctypes.get_errno()
                if err == 11:  # EAGAIN: nothing buffered
                    return b"", size
                raise OSError(err, f"tee {path}: {os.strerror(err)}")
            data = b""
            while len(data) < n:
                data += os.read(r, n - len(data))
            return data, size
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(fd)


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    out = base_state(fd, "pipe", link, st, info)
    out.pos = 0
    out.data, out.pipe_size = peek(f"/proc/{pid}/fd/{fd}")
    return out
