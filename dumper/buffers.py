"""Reusable, page-aligned I/O buffers shared by the readers (dumper.linux) and the pages
writer (dumper.images.pages).

Why reuse: on this VM (Firecracker, page_reporting_order=11) memory the guest freed goes back
to the host, and first-touching it again costs ~2.6 s/GiB of host faults — a fresh 8 MiB
buffer per read made a 1 GiB dump spend ~4 s in page faults (4.7 s to read and write 1 GiB
in fresh chunks, 0.7 s with one reused buffer). Why aligned: an O_DIRECT write wants the
buffer, the length and the file offset aligned to the logical block size (at most a page);
anonymous mmaps are page aligned, so a pooled buffer goes to the disk without a copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

from dumper.kabi import PAGE_SIZE


def address(buf: object) -> int:
    """The address of a buffer's first byte (read-only buffers too)."""
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) if len(buf) else 0  # type: ignore[arg-type]


def aligned(buf: object, align: int = PAGE_SIZE) -> bool:
    """Whether buf can go to an O_DIRECT write as it is: start and length aligned."""
    n = len(buf)  # type: ignore[arg-type]
    return n % align == 0 and address(buf) % align == 0


def new_buffer(size: int) -> mmap.mmap:
    """A page-aligned anonymous buffer of size bytes (a whole number of pages)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _refcounts(items: list) -> list[int]:
    """sys.getrefcount of each item, as seen from here (the list's reference included)."""
    return [sys.getrefcount(x) for x in items]


# What _refcounts reports for an object only a list refers to. Measured, not assumed: how
# many references the call itself adds differs between Python versions (3.14 borrows them).
_FREE_REFS = _refcounts([object()])[0]


class BufferPool:
    """Buffers handed out again once nothing but the pool refers to them.

    A pooled buffer is reused only when its reference count says the caller (and anyone it
    passed it to: a memoryview, numpy, a writer or digesting thread) has let it go, so a
    caller may keep what it got for as long as it likes. Sizes >= MIN_POOLED that are whole
    pages are pooled, each size exactly (a dump reads in equal chunks), as page-aligned
    mmaps; others get a fresh bytearray."""

    MIN_POOLED = 1 << 20

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._bufs: dict[int, list[mmap.mmap]] = {}

    def get(self, size: int) -> mmap.mmap | bytearray:
        if size < self.MIN_POOLED or size % PAGE_SIZE:
            return bytearray(size)
        bufs = self._bufs.setdefault(size, [])
        for buf, refs in zip(bufs, _refcounts(bufs), strict=True):
            if refs == _FREE_REFS:
                return buf
        buf = new_buffer(size)
        if len(bufs) < self.keep:
            bufs.append(buf)
        return buf


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_vmsplice = _libc.vmsplice
_vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_uint]
_vmsplice.restype = ctypes.c_ssize_t


def vmsplice(pipe_w: int, addr: int, length: int) -> int:
    """vmsplice(2) -> fs/splice.c vmsplice_to_pipe: [addr, addr + length) of this process into
    the pipe, by reference (no SPLICE_F_GIFT: the pages stay ours and are only read), as far
    as the pipe has room; returns the bytes taken. The GIL is released (ctypes)."""
    n = _vmsplice(pipe_w, ctypes.byref(_IoVec(addr, length)), 1, 0)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"vmsplice: {os.strerror(e)}")
    return n
