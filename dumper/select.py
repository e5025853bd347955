"""Page-selection strategies: which pages of a tree a dump saves (../shared/thread/SCENARIOS.md).

Private memory is judged from the owner's pagemap words; shared objects from the union of
their owners' pagemap (and mincore) views, or from the object itself (lseek SEEK_DATA/
SEEK_HOLE through map_files). Everything here only asks the Host questions; selection never
changes page state (no swap-in, no PTE populated, no hole allocated).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import numpy as np

from dumper.host import Host, MapEntry, ObjectHandle
from dumper.kabi import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_FILE,
    PM_GUARD_REGION,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SWAP,
    SEEK_DATA,
    SEEK_HOLE,
    SWP_PTE_MARKER,
    SWP_TYPE_MASK,
)

STRATEGIES = ("auto", "pagemap", "mincore-or", "mincore-and", "lseek", "all")
DEFAULT_STRATEGY = "auto"
PAGEMAP_WINDOW = 1 << 16  # pages per pagemap read (512 KiB of words), as CRIU's cache reads

U64 = np.uint64


@dataclass(frozen=True, eq=False)
class Owner:
    """One task's mapping of a shared object (with its pagemap words, once read)."""

    pid: int
    vma: MapEntry
    words: np.ndarray | None = None

    @property
    def first_page(self) -> int:
        """The object page behind the mapping's first page (vm_pgoff)."""
        return self.vma.pgoff >> PAGE_SHIFT


def read_pagemap(host: Host, pid: int, vma: MapEntry) -> np.ndarray:
    """The pagemap words of one VMA, read in windows."""
    return read_pagemap_range(host, pid, vma.start, vma.end)


def read_pagemap_range(host: Host, pid: int, start: int, end: int) -> np.ndarray:
    """The pagemap words of [start, end) (mapped throughout), read in windows."""
    parts = []
    for a in range(start, end, PAGEMAP_WINDOW * PAGE_SIZE):
        b = min(end, a + PAGEMAP_WINDOW * PAGE_SIZE)
        parts.append(np.frombuffer(host.pagemap(pid, a, b), dtype="<u8"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype="<u8")


def holds_data(words: np.ndarray, show_pfn: bool) -> np.ndarray:
    """Which pages of pagemap words hold data (kernel.md §9 rule 1): present, or a swap entry
    that is no PTE marker — guard markers carry bit 58; with PFNs visible, swap type 31 is a
    marker (uffd-wp, poison, the RFC's PAGEOUT) with nothing behind it. Migration entries
    (types 28-30) are pages in transit: data."""
    present = (words & U64(PM_PRESENT)) != 0
    swap = ((words & U64(PM_SWAP)) != 0) & ((words & U64(PM_GUARD_REGION)) == 0)
    if show_pfn:
        frame = words & U64(PM_PFRAME_MASK)
        swap &= (frame & U64(SWP_TYPE_MASK)) != U64(SWP_PTE_MARKER)
    return present | swap


def private_selection(strategy: str, words: np.ndarray, show_pfn: bool, zero_pfn: int | None,
                      file_backed: bool) -> np.ndarray:
    """Which pages of a private VMA to dump, from its pagemap words.

    pagemap / mincore-* / lseek: PRESENT or SWAPPED, as criu.org's Shared_memory page and
    every naive reader take them. auto (kernel.md §9 rule 1): PRESENT, or a swap entry that
    holds data — migration entries (types 28-30) included, PTE markers (type 31, visible
    only with PFNs) and guard regions (bit 58) excluded — skipping the zero page, and, in a
    private file mapping, the file's own pages (PM_FILE: restored from the object)."""
    if strategy == "all":
        return np.ones(len(words), dtype=bool)
    present = (words & U64(PM_PRESENT)) != 0
    if strategy != "auto":
        return present | ((words & U64(PM_SWAP)) != 0)
    frame = words & U64(PM_PFRAME_MASK)
    keep = holds_data(words, show_pfn)
    if show_pfn and zero_pfn is not None:
        keep &= ~(present & (frame == U64(zero_pfn)))
    if file_backed:
        keep &= ~(present & ((words & U64(PM_FILE)) != 0))
    return keep


def lseek_extents(handle: ObjectHandle, size: int) -> list[tuple[int, int]]:
    """SEEK_DATA/SEEK_HOLE walk of an object: its data extents as (first page, end page)."""
    out = []
    off = 0
    while off < size:
        try:
            data = handle.lseek(off, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        hole = handle.lseek(data, SEEK_HOLE)
        out.append((data >> PAGE_SHIFT, (hole + PAGE_SIZE - 1) >> PAGE_SHIFT))
        off = hole
    return out


def shared_selection(strategy: str, host: Host, owners: list[Owner], handle: ObjectHandle,
                     size: int) -> np.ndarray:
    """Which pages of a shared object to dump (one bool per object page).

    pagemap: the union over owners of PRESENT|SWAPPED; mincore-or / mincore-and: that union
    OR'ed / AND'ed with the union of the owners' mincore() (criu.org's Shared_memory page
    says AND; David asked whether it meant OR); lseek and auto: the object's data extents;
    all: every page up to its size."""
    npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    sel = np.zeros(npages, dtype=bool)
    if strategy == "all":
        sel[:] = True
        return sel
    if strategy in ("lseek", "auto"):
        for a, b in lseek_extents(handle, size):
            sel[a:b] = True
        return sel
    mapped = np.zeros(npages, dtype=bool)
    incore = np.zeros(npages, dtype=bool)
    for o in owners:
        words = o.words if o.words is not None else read_pagemap(host, o.pid, o.vma)
        idx = o.first_page + np.arange(len(words))
        ok = idx < npages
        mapped[idx[ok]] |= ((words[ok] & U64(PM_PRESENT | PM_SWAP)) != 0)
        if strategy.startswith("mincore"):
            vec = np.frombuffer(host.mincore(o.pid, o.vma.start, o.vma.end), dtype=np.uint8)
            incore[idx[ok]] |= (vec[ok] & 1) != 0
    if strategy == "pagemap":
        return mapped
    if strategy == "mincore-or":
        return mapped | incore
    if strategy == "mincore-and":
        return mapped & incore
    raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, count) of each run of True in a mask."""
    if not len(mask):
        return []
    if mask.all():  # the common case of a written range: one run, no diff to take
        return [(0, len(mask))]
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0]
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]
