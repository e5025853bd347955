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
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dumper.buffers import address
from dumper.images.records import Vma
from dumper.kabi import MAP_HUGETLB, PAGE_SIZE, PROT_WRITE
from dumper.linux.rst_inject import RestoreInjector

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


def write_task(pid: int, addr: int, data, mem_fd: Callable[[], int], vmas: list[Vma],
               uffd: Callable[[], int] | None = None) -> None:
    """Write data at addr in task pid (vmas: its VMAs, sorted): UFFDIO_COPY where the VMA is
    private anonymous and writable (uffd opens the task's userfaultfd, -1 if none), else
    process_vm_writev where it is writable, and through /proc/PID/mem the rest (and all of
    a VMA without PROT_WRITE; mem_fd opens it)."""
    view = memoryview(data).cast("B")
    end = addr + len(view)
    i = bisect.bisect_right([v.start for v in vmas], addr) - 1
    pos = addr
    for v in vmas[max(i, 0):]:
        if pos >= end:
            break
        if v.end <= pos:
            continue
        inside = v.start <= pos
        cut = min(v.end, end) if inside else min(v.start, end)
        writable = inside and bool(v.prot & PROT_WRITE)
        ufd = uffd() if uffd is not None and writable and _copyable(v) else -1
        _write_span(pid, pos, view[pos - addr : cut - addr], mem_fd, writable, ufd, v)
        pos = cut
    if pos < end:
        _write_span(pid, pos, view[pos - addr :], mem_fd, False)


def _copyable(v: Vma) -> bool:
    """Private anonymous memory in small pages: what UFFDIO_COPY fills (hugetlb wants whole
    huge pages, a file's private pages are not anonymous for userfaultfd)."""
    return v.private and v.obj is None and not v.path and not v.flags & MAP_HUGETLB


def _write_span(pid: int, addr: int, view: memoryview, mem_fd: Callable[[], int],
                writable: bool, ufd: int = -1, vma: Vma | None = None) -> None:
    base = address(view)
    if ufd >= 0 and vma is not None and not _uffd_call(ufd, UFFDIO_REGISTER, struct.pack(
            "<4Q", vma.start, vma.end - vma.start, UFFDIO_REGISTER_MODE_MISSING, 0)):
        ufd = -1

    def piece(off: int, length: int) -> None:
        done = 0
        while ufd >= 0 and done < length:
            at = addr + off + done
            n = uffdio_copy(ufd, at, base + off + done, length - done)
            if n == -errno.EEXIST:
                # A page there already (inherited copy-on-write): written alone by
                # process_vm_writev, which cannot fault into the registered range on a
                # present page; the copies go on after it. A write there that found a
                # missing page would wait in handle_userfault for ever (nobody reads the
                # userfaultfd): measured, a restore hung in D state.
                n = process_vm_writev(pid, at, base + off + done, min(PAGE_SIZE,
                                                                      length - done))
                if n <= 0:
                    raise OSError(errno.EIO, f"task {pid}: write at {at:#x} (a page there "
                                  f"already) failed: {os.strerror(-n) if n < 0 else 'none'}")
            elif n <= 0:
                raise OSError(-n, f"task {pid}: UFFDIO_COPY at {at:#x}: {os.strerror(-n)}")
            done += n
        if writable:
            while done < length:
                n = process_vm_writev(pid, addr + off + done, base + off + done, length - done)
                if n <= 0:
                    break
                done += n
        fd = mem_fd() if done < length else -1
        while done < length:
            n = os.pwrite(fd, view[off + done : off + length], addr + off + done)
            if n <= 0:
                raise OSError(errno.EIO, f"task {pid}: write at {addr + off + done:#x} "
                              "through /proc/PID/mem wrote nothing")
            done += n

    try:
        in_parallel(piece, len(view))
    finally:
        if ufd >= 0 and vma is not None:  # registered for the copy only: VMAs as they were
            _uffd_call(ufd, UFFDIO_UNREGISTER, struct.pack("<2Q", vma.start,
                                                           vma.end - vma.start))


# include/uapi/linux/userfaultfd.h: _IOWR/_IOR(0xAA, nr, struct of 24/32/40/16 bytes)
UFFDIO_API, UFFDIO_REGISTER, UFFDIO_COPY = 0xC018AA3F, 0xC020AA00, 0xC028AA03
UFFDIO_UNREGISTER = 0x8010AA01
UFFD_API, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_COPY_MODE_DONTWAKE = 0xAA, 1, 1
SYS_pidfd_getfd, SYS_userfaultfd = 438, 323
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long


def _uffd_call(fd: int, request: int, arg: bytes) -> bool:
    buf = ctypes.create_string_buffer(arg, len(arg))
    return _libc.ioctl(fd, request, buf) == 0


def uffdio_copy(fd: int, dst: int, src: int, length: int) -> int:
    """UFFDIO_COPY (mm/userfaultfd.c mfill_atomic_copy): bytes copied into none ptes, or
    -errno where none were (EEXIST: a page is there already)."""
    buf = ctypes.create_string_buffer(struct.pack("<4Qq", dst, src, length,
                                                  UFFDIO_COPY_MODE_DONTWAKE, 0), 40)
    ret = _libc.ioctl(fd, UFFDIO_COPY, buf)
    err = ctypes.get_errno()
    copied = struct.unpack_from("<q", buf.raw, 32)[0]
    if copied > 0:
        return copied
    return -(err or errno.EIO) if ret < 0 else -errno.EIO


def open_uffd(inj: RestoreInjector) -> int:
    """A userfaultfd of the stub's mm, held by us: the stub makes it (userfaultfd binds the
    calling mm), we take it (pidfd_getfd, kernel/pid.c: we trace it) and the stub closes
    its own. Its UFFDIO_COPY fills a fresh page with the bytes without zeroing it first
    (mfill_atomic_pte_copy): 1 GiB into a new process 0.30-0.31 s here against
    process_vm_writev's 0.41-0.47 (measured side by side, one and two threads). -1 where
    the kernel refuses any step: the writes then go by process_vm_writev."""
    tfd = inj.call("userfaultfd", os.O_CLOEXEC)
    if tfd < 0:
        return -1
    try:
        pidfd = os.pidfd_open(inj.pid)
        try:
            fd = _libc.syscall(ctypes.c_long(SYS_pidfd_getfd), pidfd, tfd, 0)
        finally:
            os.close(pidfd)
    finally:
        inj.call("close", tfd)
    if fd < 0:
        return -1
    if not _uffd_call(fd, UFFDIO_API, struct.pack("<3Q", UFFD_API, 0, 0)):
        os.close(fd)
        return -1
    return fd


def write_fd(fd: int, offset: int, data) -> None:
    """pwrite data at offset of a file (a memfd, a shmem inode through map_files)."""
    view = memoryview(data).cast("B")

    def piece(off: int, length: int) -> None:
        done = 0
        while done < length:
            done += os.pwrite(fd, view[off + done : off + length], offset + off + done)

    in_parallel(piece, len(view))


def _pvw_self(addr: int, src: int, length: int) -> None:
    """process_vm_writev on ourselves until all is copied; a fault is an OSError."""
    done = 0
    while done < length:
        n = process_vm_writev(os.getpid(), addr + done, src + done, length - done)
        if n <= 0:
            err = -n if n < 0 else errno.EFAULT
            raise OSError(err, f"copy into {addr + done:#x}: {os.strerror(err)}")
        done += n


def write_self(addr: int, data) -> None:
    """Copy data to our own mapping at addr (a SysV segment or hugetlb object attached
    here, whose files take no write(2)): process_vm_writev on ourselves, so the kernel
    faults the pages in for the copy and a fault is an error, not a SIGSEGV."""
    view = memoryview(data).cast("B")
    base = address(view)
    in_parallel(lambda off, length: _pvw_self(addr + off, base + off, length), len(view))


_own_uffd: int | None = None


def copy_self(region: int, length: int, offset: int, data) -> bool:
    """Copy data to offset of our own shmem mapping at region (length bytes) by UFFDIO_COPY
    from a userfaultfd of ours (shmem_mfill_atomic_pte: no zeroing first), the region
    registered for the copy only; a piece it cannot fill goes by process_vm_writev. False
    (nothing written) where userfaultfd is not to be had."""
    global _own_uffd
    if _own_uffd is None:
        fd = _libc.syscall(ctypes.c_long(SYS_userfaultfd), os.O_CLOEXEC)
        if fd >= 0 and not _uffd_call(fd, UFFDIO_API, struct.pack("<3Q", UFFD_API, 0, 0)):
            os.close(fd)
            fd = -1
        _own_uffd = fd
    fd = _own_uffd
    if fd < 0 or not _uffd_call(fd, UFFDIO_REGISTER, struct.pack(
            "<4Q", region, length, UFFDIO_REGISTER_MODE_MISSING, 0)):
        return False
    view = memoryview(data).cast("B")
    base, dst = address(view), region + offset

    def piece(off: int, n: int) -> None:
        done = 0
        while done < n:
            got = uffdio_copy(fd, dst + off + done, base + off + done, n - done)
            if got <= 0:  # not in_parallel again: this may be its worker thread
                _pvw_self(dst + off + done, base + off + done, n - done)
                return
            done += got

    try:
        in_parallel(piece, len(view))
    finally:
        _uffd_call(fd, UFFDIO_UNREGISTER, struct.pack("<2Q", region, length))
    return True
