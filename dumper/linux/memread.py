"""Private memory of a (stopped) task through process_vm_readv, in large batches.

process_vm_readv pins the remote pages with GUP (mm/process_vm_access.c
process_vm_rw_single_vec -> pin_user_pages_remote, no FOLL_FORCE). Measured on 6.18
(tests/linux/test_private.py): reading a none pte of private anon maps the zero page into
the target (pagemap P, one PFN for all); a swapped page is swapped in; a PROT_NONE page that
holds data and a guard page both stop the copy there (the call returns the bytes before
that page, or fails with EFAULT if it was the first). So read only the pages pagemap says
hold data; the rest of the range is zeros here and the target's page tables stay as they
were.
Never /proc/PID/mem: it faults the same way and, for shmem, allocates holes (kernel.md 6).
"""

from __future__ import annotations

import ctypes
import errno

import numpy as np

from dumper.kabi import (
    PAGE_SHIFT,
    PAGE_SIZE,
)
from dumper.linux import libc
from dumper.linux.errors import ProcError
from dumper.select import holds_data, runs_of

# Bytes per process_vm_readv call: the kernel caps an iovec array's total at MAX_RW_COUNT
# (INT_MAX & PAGE_MASK) in import_iovec; 1 GiB keeps well below it.
CALL_BYTES = 1 << 30

Run = tuple[int, int, int]  # (remote start, remote end, offset in the local buffer)


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


def _batches(runs: list[Run]) -> list[Run]:
    """Split runs so that no single one exceeds CALL_BYTES."""
    out: list[Run] = []
    for s, e, off in runs:
        while e - s > CALL_BYTES:
            out.append((s, s + CALL_BYTES, off))
            s, off = s + CALL_BYTES, off + CALL_BYTES
        out.append((s, e, off))
    return out


def _readv(pid: int, base: int, runs: list[Run]) -> int:
    n = len(runs)
    local, remote = (libc.IoVec * n)(), (libc.IoVec * n)()
    for i, (s, e, off) in enumerate(runs):
        local[i].iov_base, local[i].iov_len = base + off, e - s
        remote[i].iov_base, remote[i].iov_len = s, e - s
    try:
        return libc.process_vm_readv(pid, local, n, remote, n)
    except OSError as e:
        if e.errno == errno.EFAULT:
            return 0  # the first page failed: nothing was copied
        raise ProcError.from_os(pid, f"process_vm_readv({pid})", e) from None


def read_runs(pid: int, runs: list[Run], buf: bytearray | memoryview
              ) -> list[tuple[int, int]]:
    """Read each (remote start, end, local offset) run into buf with as few calls as IOV_MAX
    and CALL_BYTES allow. Returns the page ranges that could not be read (left untouched).

    A failing page ends the call short (process_vm_rw_core returns the bytes copied so far,
    at page granularity for page-aligned iovecs); the page is retried alone, then skipped."""
    if any(off < 0 or off + (e - s) > len(buf) or s % PAGE_SIZE or e <= s
           for s, e, off in runs):
        raise ValueError("read_runs: a run is not page aligned or does not fit the buffer")
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    pending = _batches(runs)
    bad: list[tuple[int, int]] = []
    i = 0
    while i < len(pending):
        batch, size = [], 0
        for r in pending[i : i + libc.IOV_MAX]:
            if batch and size + (r[1] - r[0]) > CALL_BYTES:
                break
            batch.append(r)
            size += r[1] - r[0]
        n = _readv(pid, base, batch)
        if n == size:
            i += len(batch)
            continue
        # Find the run and page where the copy stopped.
        k = 0
        while n >= batch[k][1] - batch[k][0]:
            n -= batch[k][1] - batch[k][0]
            k += 1
        s, e, off = batch[k]
        page = s + (n & ~(PAGE_SIZE - 1))
        poff = off + (page - s)
        if _readv(pid, base, [(page, page + PAGE_SIZE, poff)]) != PAGE_SIZE:
            if bad and bad[-1][1] == page:
                bad[-1] = (bad[-1][0], page + PAGE_SIZE)
            else:
                bad.append((page, page + PAGE_SIZE))
        rest = [(page + PAGE_SIZE, e, poff + PAGE_SIZE)] if page + PAGE_SIZE < e else []
        pending[i : i + k + 1] = rest
    return bad


def read_range_into(pid: int, start: int, words: bytes, show_pfn: bool,
                    buf: bytearray | memoryview) -> list[tuple[int, int]]:
    """Fill buf with the bytes of [start, start + len(buf)) given its pagemap words: data
    pages read, every other byte zeroed. Returns the page ranges that could not be read.

    Reuse one buffer across calls: on this VM first-touching fresh memory costs ~2.6 s/GiB
    (a 1 GiB bytearray() alone), while process_vm_readv into a warm buffer runs at 3-6 GB/s."""
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
