"""/proc/PID/pagemap: raw words in large batches, and the PAGEMAP_SCAN ioctl (Linux 6.7+).

Both walk the mm captured when the file was opened (pagemap_open -> proc_mem_open with
PTRACE_MODE_READ); PFNs and swap type/offset are visible only if the opener had
CAP_SYS_ADMIN (kernel.md section 1).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from dumper.kabi import (
    PAGE_IS_GUARD,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGEMAP_SCAN_CATEGORIES,
    PAGEMAP_SCAN_IOCTL,
)
from dumper.linux.errors import ProcError

# One pread per 2 MiB of words (1 GiB of address space): pagemap_read loops internally in
# PAGEMAP_WALK_SIZE steps, so a big read costs one syscall and no extra copies here.
PAGEMAP_CHUNK_BYTES = 2 << 20


class PmScanArg(ctypes.Structure):
    """struct pm_scan_arg (include/uapi/linux/fs.h): 12 x u64 = 96 bytes."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
            "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
        )
    ]


class PageRegion(ctypes.Structure):
    """struct page_region: [start, end) with the categories masked by return_mask."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


assert ctypes.sizeof(PmScanArg) == 96 and ctypes.sizeof(PageRegion) == 24

Region = tuple[int, int, int]


def open_pagemap(pid: int | str) -> int:
    """open(/proc/PID/pagemap) -> fs/proc/task_mmu.c pagemap_open; returns the fd."""
    path = f"/proc/{pid}/pagemap"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ProcError.from_os(pid if isinstance(pid, int) else os.getpid(), path, e) from None


def read_words(fd: int, start: int, end: int) -> bytes:
    """pread(2) on a pagemap fd -> task_mmu.c pagemap_read: 8 bytes per page of [start, end).

    A read past the top of the user address space returns short; the rest is padded with
    zeros (no VMA there, which pagemap would report as 0 too)."""
    first, count = start >> PAGE_SHIFT, ((end - start) + PAGE_SIZE - 1) >> PAGE_SHIFT
    want = count * 8
    buf = bytearray(want)
    view = memoryview(buf)
    done = 0
    while done < want:
        n = os.preadv(fd, [view[done : done + PAGEMAP_CHUNK_BYTES]], first * 8 + done)
        if n == 0:
            break
        done += n
    return bytes(buf)


def read_pagemap(pid: int, start: int, end: int) -> bytes:
    """Raw little-endian u64 pagemap words for [start, end) of pid."""
    fd = open_pagemap(pid)
    try:
        return read_words(fd, start, end)
    except OSError as e:
        raise ProcError.from_os(pid, f"/proc/{pid}/pagemap", e) from None
    finally:
        os.close(fd)


def scan(
    fd: int,
    start: int,
    end: int,
    *,
    category_mask: int = 0,
    anyof: int = 0,
    inverted: int = 0,
    return_mask: int = PAGEMAP_SCAN_CATEGORIES,
    flags: int = 0,
    max_pages: int = 0,
    vec_len: int = 1024,
) -> list[Region]:
    """ioctl(PAGEMAP_SCAN) -> task_mmu.c do_pagemap_scan, resumed from walk_end until the
    whole range is walked (or max_pages matched pages are reported).

    The kernel stops early when vec_len regions are filled and walk_end says where to go
    on. Measured on 6.18: it keeps extending the last region while pages match with equal
    categories and stops at the first page that would need a new one (vec_len=1 over
    present pages 0-2 and a guard page 3: one region pg0-3, walk_end pg4). Regions that
    touch across a resume are merged anyway, so the result never depends on vec_len.
    Raises OSError (ENOTTY/EINVAL: the kernel lacks it or a category bit)."""
    vec = (PageRegion * vec_len)()
    out: list[Region] = []
    found = 0
    cur = start
    while cur < end:
        arg = PmScanArg(
            size=ctypes.sizeof(PmScanArg), flags=flags, start=cur, end=end,
            vec=ctypes.addressof(vec), vec_len=vec_len,
            max_pages=(max_pages - found) if max_pages else 0,
            category_inverted=inverted, category_mask=category_mask,
            category_anyof_mask=anyof, return_mask=return_mask,
        )
        n = fcntl.ioctl(fd, PAGEMAP_SCAN_IOCTL, arg, True)
        for i in range(n):
            r = vec[i]
            found += (r.end - r.start) >> PAGE_SHIFT
            if out and out[-1][1] == r.start and out[-1][2] == r.categories:
                out[-1] = (out[-1][0], r.end, r.categories)
            else:
                out.append((r.start, r.end, r.categories))
        if arg.walk_end <= cur and n == 0:
            raise OSError(errno.EIO, f"PAGEMAP_SCAN made no progress at {cur:#x}")
        cur = arg.walk_end
        if max_pages and found >= max_pages:
            break
    return out


def pagemap_scan(pid: int, start: int, end: int, **kw: int) -> list[Region]:
    """PAGEMAP_SCAN over [start, end) of pid (keyword arguments as for scan())."""
    fd = open_pagemap(pid)
    try:
        return scan(fd, start, end, **kw)
    except OSError as e:
        raise ProcError.from_os(pid, f"/proc/{pid}/pagemap", e, "PAGEMAP_SCAN") from None
    finally:
        os.close(fd)


def _probe(return_mask: int) -> bool:
    fd = open_pagemap("self")
    try:
        # An empty range: argument validation (pagemap_scan_get_args) runs, nothing is walked.
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), return_mask=return_mask)
        fcntl.ioctl(fd, PAGEMAP_SCAN_IOCTL, arg, True)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL):
            return False  # no ioctl (< 6.7: ENOTTY), or a category bit it does not know
        raise
    finally:
        os.close(fd)


def has_pagemap_scan() -> bool:
    """Whether this kernel has PAGEMAP_SCAN (6.7+)."""
    return _probe(PAGEMAP_SCAN_CATEGORIES & ~PAGE_IS_GUARD)


def has_page_is_guard() -> bool:
    """Whether PAGEMAP_SCAN knows PAGE_IS_GUARD (6.15+); unknown bits give EINVAL."""
    return _probe(PAGE_IS_GUARD)
