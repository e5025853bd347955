"""Private memory of a (stopped) task through /proc/PID/mem, only of pages that hold data.

Why /proc/PID/mem and not process_vm_readv (kernel.md §10, measured on 6.18): process_vm_readv
pins what it reads (mm/process_vm_access.c process_vm_rw_single_vec -> pin_user_pages_remote,
FOLL_PIN), and since 5.19 a read-only pin of an anonymous page that may be shared triggers an
unshare fault (mm/gup.c gup_must_unshare, FAULT_FLAG_UNSHARE): every copy-on-write page read
got a private copy in the target (256 of 256 pages of a forked child lost their shared PFN,
the tree's PSS grew by the region). /proc/PID/mem (fs/proc/base.c mem_rw -> access_remote_vm,
GUP with FOLL_FORCE and no FOLL_PIN) leaves the sharing as it was, and reads through the
protection (a PROT_NONE or write-only page that holds data reads its bytes, restore.md §2.3).
Measured here: 5.3-5.7 GB/s in 8 MiB reads against process_vm_readv's 5.8-6.9 (1 GiB, warm
buffer, the target stopped).

It still faults in what it reads: a none pte of private anon would get the zero page, a
swapped page is swapped in (the data must be read). So read only the pages pagemap says hold
data; the rest of the range is zeros here and the target's page tables stay as they were. A
page the kernel refuses (a guard marker, VM_IO/VM_PFNMAP) ends a read short (mem_rw returns
what it copied, -EIO if nothing); it is retried alone, then reported.
Never for shared mappings: for shmem a read there allocates holes (kernel.md 6); objects are
read through map_files (dumper.linux.mapfiles).
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

from dumper.kabi import (
    PAGE_SHIFT,
    PAGE_SIZE,
)
from dumper.linux.errors import ProcError
from dumper.select import holds_data, runs_of

# Bytes per pread: mem_rw copies through one page of its own whatever the size; 8 MiB keeps
# the caller's buffer warm in cache and a failing page cheap to find.
CALL_BYTES = 8 << 20

Run = tuple[int, int, int]  # (remote start, remote end, offset in the local buffer)


def open_mem(pid: int) -> int:
    """open(/proc/PID/mem) -> fs/proc/base.c mem_open (PTRACE_MODE_ATTACH: root, or our
    tracee)."""
    path = f"/proc/{pid}/mem"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ProcError.from_os(pid, path, e) from None


def data_page_mask(words: bytes, show_pfn: bool) -> np.ndarray:
    """Which pages of a pagemap word array hold data worth reading (kernel.md section 9.1).

    Present pages, and swap entries that are not PTE markers: guard markers carry bit 58;
    with PFNs visible, swap type 31 is a marker (uffd-wp/poison) with nothing behind it.
    Without PFNs a uffd-wp marker looks like a swapped page; reading it costs a zero page."""
    return holds_data(np.frombuffer(words, dtype="<u8"), show_pfn)


def mask_runs(mask: np.ndarray, start: int) -> list[Run]:
    """Contiguous True runs of a per-page mask as (remote start, end, local offset)."""
    return [(start + (a << PAGE_SHIFT), start + ((a + n) << PAGE_SHIFT), a << PAGE_SHIFT)
            for a, n in runs_of(mask)]


def _pread(fd: int, pid: int, view: memoryview, addr: int) -> int:
    """Bytes read at addr into view, short where a page fails; 0 if the first page does."""
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], addr + done)
        except OSError as e:
            if e.errno in (errno.EIO, errno.EFAULT):  # mem_rw: nothing copied at addr + done
                return done
            raise ProcError.from_os(pid, f"/proc/{pid}/mem", e) from None
        if n == 0:
            return done
        done += n
    return done


def read_runs(pid: int, runs: list[Run], buf: bytearray | memoryview
              ) -> list[tuple[int, int]]:
    """Read each (remote start, end, local offset) run into buf through /proc/PID/mem, in
    CALL_BYTES pieces. Returns the page ranges that could not be read (left untouched).

    A failing page ends a read short (mem_rw stops at the first page access_remote_vm cannot
    copy); the page is retried alone, then skipped."""
    if any(off < 0 or off + (e - s) > len(buf) or s % PAGE_SIZE or e <= s
           for s, e, off in runs):
        raise ValueError("read_runs: a run is not page aligned or does not fit the buffer")
    view = memoryview(buf).cast("B")
    bad: list[tuple[int, int]] = []
    fd = open_mem(pid)
    try:
        for s, e, off in runs:
            a = s
            while a < e:
                b = min(e, a + CALL_BYTES)
                n = _pread(fd, pid, view[off + a - s : off + b - s], a)
                a += n & ~(PAGE_SIZE - 1)
                if a >= b:
                    continue
                # The page at a failed; a page's worth of retry tells it from a short read.
                got = _pread(fd, pid, view[off + a - s : off + a - s + PAGE_SIZE], a)
                if got != PAGE_SIZE:
                    if bad and bad[-1][1] == a:
                        bad[-1] = (bad[-1][0], a + PAGE_SIZE)
                    else:
                        bad.append((a, a + PAGE_SIZE))
                a += PAGE_SIZE
    finally:
        os.close(fd)
    return bad


def read_range_into(pid: int, start: int, words: bytes, show_pfn: bool,
                    buf: bytearray | memoryview) -> list[tuple[int, int]]:
    """Fill buf with the bytes of [start, start + len(buf)) given its pagemap words: data
    pages read, every other byte zeroed. Returns the page ranges that could not be read.

    Reuse one buffer across calls: on this VM first-touching fresh memory costs ~2.6 s/GiB
    (a 1 GiB bytearray() alone), while a read into a warm buffer runs at 3-6 GB/s."""
    runs = mask_runs(data_page_mask(words, show_pfn), start)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    pos = 0
    for s, e, off in runs:  # the gaps between data runs read as zeros
        ctypes.memset(base + pos, 0, off - pos)
        pos = off + (e - s)
    ctypes.memset(base + pos, 0, len(buf) - pos)
    bad = read_runs(pid, runs, buf) if runs else []
    for s, e in bad:
        ctypes.memset(base + (s - start), 0, e - s)
    return bad
