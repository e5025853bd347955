"""What this kernel offers a dumper, found by trying each feature (as `criu check` does).

Each probe runs on the dumper's own memory and cleans up after itself. Facts measured on
6.18.44 (this project's machine): soft-dirty is absent (no CONFIG_MEM_SOFT_DIRTY: bit 55
never appears, writing 4 to clear_refs is accepted and does nothing); WP_ASYNC +
PAGEMAP_SCAN(PM_SCAN_WP_MATCHING) tracks writes; guard markers read as PM_SWAP|PM_GUARD_REGION.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from dumper.kabi import (
    MADV_GUARD_INSTALL,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_IS_WRITTEN,
    PAGE_SIZE,
    PAGEMAP_SCAN_IOCTL,
    PM_GUARD_REGION,
    PM_PFRAME_MASK,
    PM_SOFT_DIRTY,
    PM_SWAP,
    PROT_READ,
    PROT_WRITE,
)
from dumper.linux import libc, memread, pagemap
from dumper.linux.errors import ProcError
from dumper.linux.mapfiles import map_files_path


class Check(NamedTuple):
    feature: str
    ok: bool
    detail: str


class _Scratch:
    """An anonymous mapping of our own for a probe, always unmapped."""

    def __init__(self, npages: int, shared: bool = False) -> None:
        self.length = npages * PAGE_SIZE
        flags = MAP_ANONYMOUS | (MAP_SHARED if shared else MAP_PRIVATE)
        self.addr = libc.mmap(self.length, PROT_READ | PROT_WRITE, flags)

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        libc.munmap(self.addr, self.length)

    def touch(self, page: int) -> None:
        ctypes.c_char.from_address(self.addr + page * PAGE_SIZE).value = b"x"

    def word(self, page: int) -> int:
        a = self.addr + page * PAGE_SIZE
        return int.from_bytes(pagemap.read_pagemap(os.getpid(), a, a + PAGE_SIZE), "little")


def check_pagemap_scan() -> Check:
    if pagemap.has_pagemap_scan():
        return Check("PAGEMAP_SCAN", True, f"ioctl {PAGEMAP_SCAN_IOCTL:#x} on pagemap")
    return Check("PAGEMAP_SCAN", False, "no (Linux < 6.7): falling back to pagemap words")


def check_page_is_guard() -> Check:
    if pagemap.has_page_is_guard():
        return Check("PAGE_IS_GUARD", True, "PAGEMAP_SCAN reports guard regions (6.15+)")
    return Check("PAGE_IS_GUARD", False, "PAGEMAP_SCAN rejects the category (< 6.15)")


def check_map_files() -> Check:
    with _Scratch(1, shared=True) as s:
        path = map_files_path(os.getpid(), s.addr, s.addr + s.length)
        try:
            os.close(os.open(path, os.O_RDONLY))
        except OSError as e:
            return Check("map_files", False, f"open {path}: {os.strerror(e.errno or 0)} "
                         "(needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)")
    return Check("map_files", True, "can open /proc/PID/map_files entries")


def check_swap() -> Check:
    with open("/proc/swaps") as f:
        devices = [line.split()[0] for line in f.read().splitlines()[1:] if line.strip()]
    if not devices:
        return Check("swap", False, "no swap configured (/proc/swaps is empty)")
    return Check("swap", True, ", ".join(devices))


def check_soft_dirty() -> Check:
    """Clear soft-dirty bits (clear_refs 4), then write a page: with CONFIG_MEM_SOFT_DIRTY the
    pte comes back soft-dirty; without it bit 55 is never set."""
    with _Scratch(1) as s:
        s.touch(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        clean = s.word(0) & PM_SOFT_DIRTY
        s.touch(0)
        dirty = s.word(0) & PM_SOFT_DIRTY
    if dirty and not clean:
        return Check("soft-dirty", True, "pagemap bit 55 tracks writes")
    return Check("soft-dirty", False, "bit 55 does not track writes (no CONFIG_MEM_SOFT_DIRTY)")


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


def check_uffd_wp_async() -> Check:
    """userfaultfd with UFFD_FEATURE_WP_ASYNC, then the dirty-tracking round trip: a
    PM_SCAN_WP_MATCHING scan write-protects, a write makes the page WRITTEN again."""
    want = libc.UFFD_FEATURE_WP_ASYNC | libc.UFFD_FEATURE_WP_UNPOPULATED
    try:
        ufd = libc.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK | libc.UFFD_USER_MODE_ONLY)
    except OSError as e:
        return Check("uffd-wp async", False, f"userfaultfd: {os.strerror(e.errno or 0)}")
    try:
        api = _UffdioApi(api=libc.UFFD_API, features=want)
        try:
            fcntl.ioctl(ufd, libc.UFFDIO_API, api, True)
        except OSError as e:
            return Check("uffd-wp async", False, f"UFFDIO_API WP_ASYNC: {os.strerror(e.errno)}")
        with _Scratch(2) as s:
            reg = _UffdioRegister(start=s.addr, len=s.length, mode=libc.UFFDIO_REGISTER_MODE_WP)
            fcntl.ioctl(ufd, libc.UFFDIO_REGISTER, reg, True)
            fd = pagemap.open_pagemap("self")
            try:
                def written() -> list[pagemap.Region]:
                    return pagemap.scan(fd, s.addr, s.addr + s.length,
                                        flags=libc.PM_SCAN_WP_MATCHING | libc.PM_SCAN_CHECK_WPASYNC,
                                        category_mask=PAGE_IS_WRITTEN, return_mask=PAGE_IS_WRITTEN)
                first = written()  # everything starts WRITTEN, and gets protected
                quiet = written()
                s.touch(1)
                after = written()
            finally:
                os.close(fd)
        page1 = (s.addr + PAGE_SIZE, s.addr + 2 * PAGE_SIZE, PAGE_IS_WRITTEN)
        if first and not quiet and after == [page1]:
            return Check("uffd-wp async", True, "WP_ASYNC + PAGEMAP_SCAN tracks writes")
        return Check("uffd-wp async", False,
                     f"write tracking inconsistent: {first} {quiet} {after}")
    finally:
        os.close(ufd)


def check_guard_regions() -> Check:
    with _Scratch(2) as s:
        try:
            libc.madvise(s.addr + PAGE_SIZE, PAGE_SIZE, MADV_GUARD_INSTALL)
        except OSError as e:
            return Check("guard regions", False,
                         f"MADV_GUARD_INSTALL: {os.strerror(e.errno or errno.EINVAL)} (< 6.13)")
        w = s.word(1)
    if w & PM_GUARD_REGION:
        return Check("guard regions", True, "MADV_GUARD_INSTALL; pagemap bit 58 marks them")
    if w & PM_SWAP:
        return Check("guard regions", True, "MADV_GUARD_INSTALL; pagemap shows them only as "
                     "PM_SWAP (no bit 58, < 6.15): do not dump them")
    return Check("guard regions", False, f"installed but pagemap shows {w:#x}")


def check_pfn() -> Check:
    with _Scratch(1) as s:
        s.touch(0)
        frame = s.word(0) & PM_PFRAME_MASK
    if frame:
        return Check("PFN visible", True, "pagemap shows frames and swap type/offset")
    return Check("PFN visible", False, "frames hidden (no CAP_SYS_ADMIN): markers and swap "
                 "entries cannot be told apart")


def check_proc_mem() -> Check:
    with _Scratch(1) as s:
        s.touch(0)
        buf = bytearray(PAGE_SIZE)
        try:
            bad = memread.read_runs(os.getpid(), [(s.addr, s.addr + PAGE_SIZE, 0)], buf)
        except ProcError as e:
            return Check("/proc/PID/mem", False, str(e))
    if bad or buf[0:1] != b"x":
        return Check("/proc/PID/mem", False, "read back the wrong bytes")
    return Check("/proc/PID/mem", True, "reads private memory without breaking COW sharing")


def check_proc_children() -> Check:
    path = f"/proc/self/task/{threading.get_native_id()}/children"
    if os.path.exists(path):
        return Check("task children", True, "/proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)")
    return Check("task children", False, "no task/TID/children: the tree is found by ppid scan")


CHECKS: list[Callable[[], Check]] = [
    check_pagemap_scan,
    check_page_is_guard,
    check_map_files,
    check_swap,
    check_soft_dirty,
    check_uffd_wp_async,
    check_guard_regions,
    check_pfn,
    check_proc_mem,
    check_proc_children,
]


def check() -> list[Check]:
    """Run every probe; a probe that fails unexpectedly is reported, not raised."""
    out: list[Check] = []
    for probe in CHECKS:
        try:
            out.append(probe())
        except OSError as e:
            name = probe.__name__.removeprefix("check_").replace("_", " ")
            out.append(Check(name, False, f"probe failed: {e}"))
    return out
