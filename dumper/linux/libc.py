"""libc through ctypes, and the Linux ABI numbers the real host needs that dumper.kabi lacks.

Only what the model never needs lives here (ptrace, userfaultfd, syscall numbers, x86_64);
page-table and pagemap constants come from dumper.kabi.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# include/uapi/linux/ptrace.h
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F  # 5.13+: struct ptrace_rseq_configuration
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for clone children and tracees alike

# include/uapi/linux/userfaultfd.h
UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
# include/uapi/linux/fs.h: PAGEMAP_SCAN flags
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1

# arch/x86/entry/syscalls/syscall_64.tbl
SYS_userfaultfd = 323

IOV_MAX = 1024  # include/uapi/linux/uio.h UIO_MAXIOV


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _fn(name: str, restype, *argtypes):
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_ptrace = _fn(
    "ptrace", ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)
_process_vm_readv = _fn(
    "process_vm_readv",
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_mmap = _fn(
    "mmap",
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_munmap = _fn("munmap", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_madvise = _fn("madvise", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mincore = _fn("mincore", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
_fstatfs = _fn("fstatfs", ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

MAP_FAILED = ctypes.c_void_p(-1).value


def _check(ret: int, what: str) -> int:
    if ret == -1 or (what == "mmap" and ret == MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """ptrace(2) -> kernel/ptrace.c sys_ptrace (ptrace_attach for SEIZE, ptrace_request)."""
    return _check(_ptrace(request, pid, addr, data), f"ptrace({request:#x}, {pid})")


def process_vm_readv(pid: int, local: ctypes.Array, nlocal: int, remote: ctypes.Array,
                     nremote: int) -> int:
    """process_vm_readv(2) -> mm/process_vm_access.c process_vm_rw_core.

    Returns the bytes copied; a short count means the remote iovec at that point failed."""
    return _check(
        _process_vm_readv(pid, local, nlocal, remote, nremote, 0), f"process_vm_readv({pid})"
    )


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) -> mm/mmap.c do_mmap; returns the address."""
    return _check(_mmap(None, length, prot, flags, fd, offset), "mmap")


def munmap(addr: int, length: int) -> None:
    """munmap(2) -> mm/vma.c do_vmi_munmap."""
    _check(_munmap(addr, length), "munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2) -> mm/madvise.c do_madvise."""
    _check(_madvise(addr, length, advice), f"madvise({advice})")


def mincore(addr: int, length: int) -> bytes:
    """mincore(2) -> mm/mincore.c do_mincore, on the caller's own mapping; one byte per page."""
    npages = (length + 4095) >> 12
    vec = ctypes.create_string_buffer(npages)
    _check(_mincore(addr, length, vec), "mincore")
    return vec.raw


# include/uapi/linux/magic.h
TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6
HUGETLBFS_MAGIC = 0x958458F6


def fstatfs_type(fd: int) -> int:
    """fstatfs(2) -> fs/statfs.c fd_statfs; returns f_type, the first field (a long) of
    struct statfs on x86_64."""
    buf = (ctypes.c_long * 16)()  # sizeof(struct statfs) is 120 on x86_64
    _check(_fstatfs(fd, buf), "fstatfs")
    return buf[0] & 0xFFFFFFFF


def userfaultfd(flags: int) -> int:
    """userfaultfd(2) -> fs/userfaultfd.c new_userfaultfd; returns the fd."""
    return _check(_syscall(ctypes.c_long(SYS_userfaultfd), ctypes.c_int(flags)), "userfaultfd")
