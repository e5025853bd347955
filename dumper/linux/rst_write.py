"""Page writes of a restore: private pages into a stub, shared objects through the restorer's
handle, a large write split between the calling thread and one worker.

Why process_vm_writev for private pages: it copies straight from our buffer (a view of the
image file's page cache) into the target's pages (mm/process_vm_access.c
process_vm_rw_single_vec: pin_user_pages_remote(FOLL_WRITE), then copy_page_from_iter),
where a write to /proc/PID/mem bounces every page through a kernel page of its own
(fs/proc/base.c mem_rw: copy_from_user into it, then access_remote_vm). The pin lasts the
copy only, and FOLL_WRITE breaks copy-on-write as the /proc/PID/mem write does (the page is
the task's own from now on, which is what writing it means). It has no FOLL_FORCE: a VMA
without PROT_WRITE (or a page the kernel refuses) ends it short, and the rest goes through
/proc/PID/mem, which writes through the protection (restore.md §2.3).

Why two threads: on this VM the cost is the target's fresh pages (zeroing, page tables), not
the copy; the kernel faults them in for each writer separately (per-VMA locks), so halves of
a large write go at once on two cores (1 GiB, measured: 0.43 s in one thread, 0.23-0.27 s in
two; a copy into pre-populated pages alone took 0.25 s, the zeroing alone 0.22 s).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dumper.buffers import address
from dumper.images.records import Vma
from dumper.kabi import PAGE_SIZE, PROT_WRITE

SPLIT = 4 << 20  # below this, one thread: the hand-off costs more than it saves

_libc = ctypes.CDLL(None, use_errno=True)


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_pvw = _libc.process_vm_writev
_pvw.restype = ctypes.c_ssize_t
_pvw.argtypes = [ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.POINTER(IoVec),
                 ctypes.c_ulong, ctypes.c_ulong]
_pool: ThreadPoolExecutor | None = None


def _halves(length: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of a write: two page-aligned halves of a large one."""
    if length < SPLIT:
        return [(0, length)]
    mid = (length // 2) // PAGE_SIZE * PAGE_SIZE
    return [(0, mid), (mid, length - mid)]


def in_parallel(piece: Callable[[int, int], None], length: int) -> None:
    """piece(offset, length) over [0, length): the second half in the worker thread."""
    global _pool
    parts = _halves(length)
    if len(parts) == 1:
        piece(*parts[0])
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(1, "rst-write")
    other = _pool.submit(piece, *parts[1])
    try:
        piece(*parts[0])
    finally:
        other.result()  # its error too; and the buffer is not let go while it copies


def process_vm_writev(pid: int, addr: int, src: int, length: int) -> int:
    """process_vm_writev(2) of one local and one remote range -> mm/process_vm_access.c
    process_vm_rw_core; the bytes copied (short where the target refused), -errno if none."""
    local, remote = IoVec(src, length), IoVec(addr, length)
    n = _pvw(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return n if n >= 0 else -ctypes.get_errno()


def write_task(pid: int, addr: int, data, mem_fd: Callable[[], int], vmas: list[Vma]) -> None:
    """Write data at addr in task pid (vmas: its VMAs, sorted): process_vm_writev where the
    VMA is writable, the rest (and all of a VMA without PROT_WRITE) through /proc/PID/mem
    (mem_fd opens it)."""
    view = memoryview(data).cast("B")
    end = addr + len(view)
    i = bisect.bisect_right([v.start for v in vmas], addr) - 1
    pos = addr
    for v in vmas[max(i, 0):]:
        if pos >= end:
            break
        if v.end <= pos:
            continue
        cut = min(v.end, end) if v.start <= pos else min(v.start, end)
        writable = v.start <= pos and bool(v.prot & PROT_WRITE)
        _write_span(pid, pos, view[pos - addr : cut - addr], mem_fd, writable)
        pos = cut
    if pos < end:
        _write_span(pid, pos, view[pos - addr :], mem_fd, False)


def _write_span(pid: int, addr: int, view: memoryview, mem_fd: Callable[[], int],
                writable: bool) -> None:
    base = address(view)

    def piece(off: int, length: int) -> None:
        done = 0
        if writable:
            while done < length:
                n = process_vm_writev(pid, addr + off + done, base + off + done, length - done)
                if n <= 0:
                    break
                done += n
        fd = mem_fd()
        while done < length:
            n = os.pwrite(fd, view[off + done : off + length], addr + off + done)
            if n <= 0:
                raise OSError(errno.EIO, f"task {pid}: write at {addr + off + done:#x} "
                              "through /proc/PID/mem wrote nothing")
            done += n

    in_parallel(piece, len(view))


def write_fd(fd: int, offset: int, data) -> None:
    """pwrite data at offset of a file (a memfd, a shmem inode through map_files)."""
    view = memoryview(data).cast("B")

    def piece(off: int, length: int) -> None:
        done = 0
        while done < length:
            done += os.pwrite(fd, view[off + done : off + length], offset + off + done)

    in_parallel(piece, len(view))


def write_self(addr: int, data) -> None:
    """Copy data to our own mapping at addr (a SysV segment or hugetlb object attached
    here, whose files take no write(2)): process_vm_writev on ourselves, so the kernel
    faults the pages in for the copy and a fault is an error, not a SIGSEGV."""
    view = memoryview(data).cast("B")
    base = address(view)
    me = os.getpid()

    def piece(off: int, length: int) -> None:
        done = 0
        while done < length:
            n = process_vm_writev(me, addr + off + done, base + off + done, length - done)
            if n <= 0:
                err = -n if n < 0 else errno.EFAULT
                raise OSError(err, f"copy into {addr + off + done:#x}: {os.strerror(err)}")
            done += n

    in_parallel(piece, len(view))
