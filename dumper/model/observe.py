"""Observation in the kernel's own encodings: pagemap words, mincore vectors, lseek offsets,
maps lines, smaps Rss/Swap — and the ground truth of what every task would read.

Nothing here changes model state; each function adds what the kernel walk would cost to
k.counters (PTEs walked, page-cache lookups, syscalls).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dumper.kabi import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_FILE,
    PM_GUARD_REGION,
    PM_MMAP_EXCLUSIVE,
    PM_PRESENT,
    PM_SWAP,
    PM_UFFD_WP,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
    SEEK_DATA,
    SEEK_HOLE,
    SWP_MIGRATION_READ,
    SWP_MIGRATION_WRITE,
    SWP_PTE_MARKER,
    prot_string,
)
from dumper.model import pte
from dumper.model.content import UNREADABLE
from dumper.model.mm import vma_range
from dumper.model.shmem import PC_PAGE, PC_SWAP, object_cids, pc_kinds, pc_values
from dumper.model.state import (
    F_ANON,
    F_UPTODATE,
    PFN_BASE,
    ZERO_PFN,
    Inode,
    Kernel,
    ModelError,
    Vma,
)
from dumper.model.thp import HUGE_ZERO_PFN

U64 = np.uint64
_SHIFT = U64(5)  # MAX_SWAPFILES_SHIFT


def _frames_where(k: Kernel, pfns: np.ndarray, flag: int) -> np.ndarray:
    real = pfns != U64(ZERO_PFN)
    out = np.zeros(len(pfns), dtype=bool)
    out[real] = (k.frames.flags.a[pfns[real].astype(np.int64) - PFN_BASE] & flag) != 0
    return out


def pte_to_pagemap_entry(k: Kernel, vma: Vma, lo: int, hi: int, show_pfn: bool) -> np.ndarray:
    """pte_to_pagemap_entry for page indices [lo, hi) of a VMA (fs/proc/task_mmu.c)."""
    words = vma.ptes[lo:hi]
    kinds = pte.kinds(words)
    vals = pte.values(words)
    out = np.zeros(hi - lo, dtype=U64)
    k.counters.ptes_walked += hi - lo
    wp = pte.uffd(words)
    # present: PFN, PM_FILE unless anon, PM_MMAP_EXCLUSIVE if mapped once; the zero page has
    # no struct page for vm_normal_page, so neither F nor X.
    p = kinds == pte.PRESENT
    pf = vals[p]
    zero = pf == U64(ZERO_PFN)
    fi = np.where(zero, 0, pf.astype(np.int64) - PFN_BASE)
    flags = np.where(zero, 0, k.frames.flags.a[fi])
    mapcount = np.where(zero, 0, k.frames.mapcount.a[fi])
    w = np.full(len(pf), PM_PRESENT, dtype=U64)
    w |= np.where(~zero & ((flags & F_ANON) == 0), U64(PM_FILE), U64(0))
    w |= np.where(~zero & (mapcount == 1), U64(PM_MMAP_EXCLUSIVE), U64(0))
    # the huge zero page (pagemap_pmd_range): a folio that is not anonymous, so PM_FILE; its
    # PFN is the huge page's plus the offset in it
    hz = pte.huge_zero(words[p])
    w |= np.where(hz, U64(PM_FILE), U64(0))
    if show_pfn:
        addrs = vma.start + (np.flatnonzero(p) + lo).astype(U64) * U64(PAGE_SIZE)
        w |= np.where(hz, U64(HUGE_ZERO_PFN) + ((addrs >> U64(PAGE_SHIFT)) & U64(511)), pf)
    out[p] = w
    for pmd, state in vma.huge.items():  # pagemap_pmd_range: one answer for the whole folio
        a, b = max(lo, vma.index(pmd << 21)), min(hi, vma.index((pmd + 1) << 21))
        if state != "thp" or a >= b:
            continue
        whole = pte.values(vma.ptes[vma.index(pmd << 21) : vma.index((pmd + 1) << 21)])
        # PM_MMAP_EXCLUSIVE unless folio_maybe_mapped_shared: any page of it mapped twice
        shared = (k.frames.mapcount.a[whole.astype(np.int64) - PFN_BASE] > 1).any()
        if shared:
            out[a - lo : b - lo] &= ~U64(PM_MMAP_EXCLUSIVE)
    # swap: type 0 | offset << 5; a swap pte is anonymous (no PM_FILE).
    s = kinds == pte.SWAP
    out[s] = U64(PM_SWAP) | ((vals[s] << _SHIFT) if show_pfn else U64(0))
    # migration entries: pfn swap entries, type 28/30, offset = PFN; PM_FILE for file folios.
    m = kinds == pte.MIGRATION
    mtype = np.where(pte.writable(words[m]), SWP_MIGRATION_WRITE, SWP_MIGRATION_READ)
    mfile = ~_frames_where(k, vals[m], F_ANON)
    out[m] = (
        U64(PM_SWAP)
        | np.where(mfile, U64(PM_FILE), U64(0))
        | ((mtype.astype(U64) | (vals[m] << _SHIFT)) if show_pfn else U64(0))
    )
    # PTE markers: swap type 31, the marker bits as offset; uffd-wp -> bit 57, guard -> 58.
    mk = kinds == pte.MARKER
    bits = vals[mk]
    mw = U64(PM_SWAP) | ((U64(SWP_PTE_MARKER) | (bits << _SHIFT)) if show_pfn else U64(0))
    mw = mw | np.where((bits & U64(PTE_MARKER_UFFD_WP)) != 0, U64(PM_UFFD_WP), U64(0))
    if k.profile.pagemap_guard_bit:
        mw = mw | np.where((bits & U64(PTE_MARKER_GUARD)) != 0, U64(PM_GUARD_REGION), U64(0))
    out[mk] = mw
    out |= np.where(wp & (kinds != pte.MARKER), U64(PM_UFFD_WP), U64(0))
    # none: 0 — except in Tiberiu's series, which looks shmem indices up in the page cache.
    if k.profile.pagemap_pagecache_lookup and vma.shared and vma.obj is not None:
        none = np.nonzero(kinds == pte.NONE)[0]
        k.counters.pagecache_lookups += len(none)
        fidx = vma.pgoff + lo + none
        ok = fidx < len(vma.obj.cache)
        none, fidx = none[ok], fidx[ok]
        cache = vma.obj.cache[fidx]
        sw = pc_kinds(cache) == PC_SWAP
        out[none[sw]] = U64(PM_SWAP) | ((pc_values(cache[sw]) << _SHIFT) if show_pfn else U64(0))
    return out


def pagemap_read(k: Kernel, pid: int, start: int, end: int, show_pfn: bool = True) -> bytes:
    """pagemap_read: one little-endian u64 per page of [start, end); 0 outside VMAs
    (pagemap_pte_hole). Frames (PFN and swap type/offset) are zero unless show_pfn."""
    if start % PAGE_SIZE or end % PAGE_SIZE or end < start:
        raise ModelError("EINVAL", "pagemap range must be page aligned")
    task = k.task(pid)
    k.counters.syscalls += 1
    out = np.zeros((end - start) >> PAGE_SHIFT, dtype="<u8")
    for vma in task.vmas_in(start, end):
        a, b = max(start, vma.start), min(end, vma.end)
        lo, hi = vma.index(a), vma.index(b)
        o = (a - start) >> PAGE_SHIFT
        out[o : o + hi - lo] = pte_to_pagemap_entry(k, vma, lo, hi, show_pfn)
    return out.tobytes()


def pagecache_incore(k: Kernel, obj: Inode, fidx: np.ndarray) -> np.ndarray:
    """mincore_page / filemap_get_incore_folio: an uptodate page-cache folio, or a shmem swap
    entry whose folio is still in the swap cache."""
    k.counters.pagecache_lookups += len(fidx)
    out = np.zeros(len(fidx), dtype=bool)
    ok = fidx < len(obj.cache)
    cache = obj.cache[fidx[ok]]
    kinds = pc_kinds(cache)
    vals = pc_values(cache)
    res = np.zeros(len(cache), dtype=bool)
    pg = kinds == PC_PAGE
    res[pg] = (k.frames.flags.a[vals[pg].astype(np.int64) - PFN_BASE] & F_UPTODATE) != 0
    sw = kinds == PC_SWAP
    res[sw] = k.swap.cache.a[vals[sw].astype(np.int64)] != 0
    out[ok] = res
    return out


def can_do_mincore(k: Kernel, pid: int, vma: Vma) -> bool:
    """can_do_mincore: anonymous VMAs, or files the caller owns or could open for writing."""
    if vma.obj is None:
        return True
    task = k.task(pid)
    obj = vma.obj
    return task.uid == 0 or obj.owner_uid == task.uid or bool(obj.mode & 0o002)


def mincore_pte_range(k: Kernel, pid: int, vma: Vma, lo: int, hi: int) -> np.ndarray:
    """mincore_pte_range for page indices [lo, hi) of one VMA, from pid's point of view."""
    n = hi - lo
    if not can_do_mincore(k, pid, vma):
        return np.ones(n, dtype=np.uint8)  # do_mincore reports everything resident
    words = vma.ptes[lo:hi]
    kinds = pte.kinds(words)
    vals = pte.values(words)
    k.counters.ptes_walked += n
    out = np.zeros(n, dtype=bool)
    out[kinds == pte.PRESENT] = True
    out[kinds == pte.MIGRATION] = True  # a non-swap entry: in core
    s = kinds == pte.SWAP
    k.counters.pagecache_lookups += int(s.sum())
    out[s] = k.swap.cache.a[vals[s].astype(np.int64)] != 0  # the swap cache counts
    unmapped = kinds == pte.NONE
    mk = kinds == pte.MARKER
    if k.profile.mincore_marker_as_none:
        unmapped |= mk  # pte_none_mostly()
    else:
        out[mk] = True  # non_swap_entry(): 1
    if vma.obj is not None and vma.obj.kind != "hugetlb":
        # __mincore_unmapped_range: file VMAs look in the page cache (mincore_hugetlb: not)
        idx = np.nonzero(unmapped)[0]
        out[idx] = pagecache_incore(k, vma.obj, vma.pgoff + lo + idx)
    return out.astype(np.uint8)


def mincore(k: Kernel, pid: int, start: int, end: int) -> bytes:
    """mincore(2) in pid's address space: one byte per page, 1 if resident; ENOMEM on a gap."""
    if start % PAGE_SIZE:
        raise ModelError("EINVAL", "mincore start must be page aligned")
    k.counters.syscalls += 1
    parts = [mincore_pte_range(k, pid, vma, lo, hi)
             for vma, lo, hi in vma_range(k.task(pid), start, end)]
    return b"".join(p.tobytes() for p in parts)


def data_mask(k: Kernel, obj: Inode, lo: int, hi: int) -> np.ndarray:
    """folio_seek_hole_data per index: a swap value entry or an uptodate folio is data."""
    hi = min(hi, len(obj.cache))
    if hi <= lo:
        return np.zeros(0, dtype=bool)
    cache = obj.cache[lo:hi]
    kinds = pc_kinds(cache)
    out = kinds == PC_SWAP
    pg = kinds == PC_PAGE
    out[pg] = (k.frames.flags.a[pc_values(cache[pg]).astype(np.int64) - PFN_BASE]
               & F_UPTODATE) != 0
    if obj.disk is not None:
        out |= obj.disk[lo:hi] != 0  # a regular file: written blocks on disk (no sparse model)
    return out


def shmem_file_llseek(k: Kernel, obj: Inode, offset: int, whence: int) -> int:
    """shmem_file_llseek -> mapping_seek_hole_data with SEEK_DATA/SEEK_HOLE: swapped pages
    are data (nothing swapped in), holes and !uptodate (fallocated) folios are holes;
    ENXIO at or past i_size, or when no data follows (SEEK_DATA)."""
    k.counters.syscalls += 1
    if whence not in (SEEK_DATA, SEEK_HOLE):
        raise ModelError("EINVAL", f"whence {whence} is not SEEK_DATA/SEEK_HOLE")
    if offset < 0 or offset >= obj.size:
        raise ModelError("ENXIO", f"offset {offset} is at or past the size {obj.size}")
    if obj.kind == "hugetlb":  # hugetlbfs has default_llseek: all data, the hole at i_size
        return offset if whence == SEEK_DATA else obj.size
    npages = obj.npages
    i = offset >> PAGE_SHIFT
    chunk = 4096
    while i < npages:
        j = min(npages, i + chunk)
        mask = data_mask(k, obj, i, j)
        mask = np.concatenate([mask, np.zeros(j - i - len(mask), dtype=bool)])
        want = mask if whence == SEEK_DATA else ~mask
        hit = int(np.argmax(want)) if want.any() else -1
        # xarray walk cost: SEEK_HOLE steps through every data entry; SEEK_DATA only the
        # present entries it skips (empty slots are skipped wholesale by the xarray).
        k.counters.pagecache_lookups += (hit + 1 if hit >= 0 else j - i) if whence == SEEK_HOLE \
            else int(mask[: hit if hit >= 0 else None].sum()) + 1
        if hit >= 0:
            return max(offset, (i + hit) << PAGE_SHIFT) if whence == SEEK_DATA else \
                min(obj.size, max(offset, (i + hit) << PAGE_SHIFT))
        i = j
    if whence == SEEK_DATA:
        raise ModelError("ENXIO", f"no data at or after offset {offset}")
    return obj.size


def maps_line(vma: Vma) -> str:
    """show_map_vma: one /proc/PID/maps line (the name padded to column 73)."""
    obj = vma.obj
    major, minor, ino, name = (0, 0, 0, vma.name) if obj is None else (
        obj.dev[0], obj.dev[1], obj.ino, obj.link_name())
    head = (f"{vma.start:08x}-{vma.end:08x} {prot_string(vma.prot, vma.shared)} "
            f"{vma.pgoff << PAGE_SHIFT:08x} {major:02x}:{minor:02x} {ino} ")
    if not name:
        return head
    return head.ljust(73) + name


def show_maps(k: Kernel, pid: int) -> str:
    """The text of /proc/PID/maps."""
    return "".join(maps_line(v) + "\n" for v in k.task(pid).vmas)


def map_files_link(k: Kernel, pid: int, start: int, end: int) -> str:
    """readlink /proc/PID/map_files/START-END; ENOENT for anonymous private memory."""
    for vma in k.task(pid).vmas:
        if vma.start == start and vma.end == end:
            if vma.obj is None:
                raise ModelError("ENOENT", f"{start:x}-{end:x} has no file")
            return vma.obj.link_name()
    raise ModelError("ENOENT", f"pid {pid} has no mapping {start:x}-{end:x}")


@dataclass(frozen=True)
class SmapsEntry:
    start: int
    end: int
    rss_kb: int
    swap_kb: int


def smaps(k: Kernel, pid: int) -> list[SmapsEntry]:
    """smaps Rss and Swap per VMA (smaps_pte_entry; shmem swap by shmem_swap_usage)."""
    out = []
    for vma in k.task(pid).vmas:
        kinds = pte.kinds(vma.ptes)
        vals = pte.values(vma.ptes)
        rss = int(((kinds == pte.PRESENT) & (vals != U64(ZERO_PFN))).sum())
        if vma.shared and vma.obj is not None:
            a, b = vma.pgoff, min(vma.pgoff + vma.npages, len(vma.obj.cache))
            swap = int((pc_kinds(vma.obj.cache[a:b]) == PC_SWAP).sum()) if b > a else 0
        else:
            swap = int((kinds == pte.SWAP).sum())
        out.append(SmapsEntry(vma.start, vma.end, rss * 4, swap * 4))
    return out


def observable_vma(k: Kernel, vma: Vma, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """What a read of pages [lo, hi) of one VMA returns now, as content ids (UNREADABLE where
    the read would fault: a guard or poison marker, a shared page past EOF)."""
    hi = vma.npages if hi is None else hi
    ptes = vma.ptes[lo:hi]
    n = hi - lo
    if vma.obj is not None:
        first = vma.pgoff + lo
        base = object_cids(k, vma.obj, first, first + n)
        if first + n > vma.obj.npages:
            base[max(0, vma.obj.npages - first):] = U64(UNREADABLE)
    else:
        base = np.zeros(n, dtype=U64)
    out = base
    if pte.only_none_or_present(ptes):  # no marker to hide a page, no swap entry to read
        if not vma.shared:
            nz = np.flatnonzero(ptes)
            out[nz] = k.frames.cids(pte.values(ptes[nz]))
        return out
    kinds = pte.kinds(ptes)
    vals = pte.values(ptes)
    if not vma.shared:  # a private mapping: its own PTEs decide, the file fills the rest
        p = kinds == pte.PRESENT
        out[p] = k.frames.cids(vals[p])
        s = kinds == pte.SWAP
        out[s] = k.swap.content.a[vals[s].astype(np.int64)]
        m = kinds == pte.MIGRATION
        out[m] = k.frames.content.a[vals[m].astype(np.int64) - PFN_BASE]
    mk = kinds == pte.MARKER
    bad = mk & ((vals & U64(PTE_MARKER_GUARD | PTE_MARKER_POISONED)) != 0)
    out[bad] = U64(UNREADABLE)
    return out


def observable_memory(k: Kernel, pid: int) -> list[tuple[int, np.ndarray]]:
    """Ground truth: for every VMA of pid, (start, content id of each page)."""
    return [(vma.start, observable_vma(k, vma)) for vma in k.task(pid).vmas]


TRUTH_WINDOW = 1 << 16  # pages of a VMA observed at a time: 512 KiB of content ids, cache-sized
# (1 Mi-page windows took 0.73 s for the 64 Mi pages of bench.pipeline, these 0.44 s)


def observable_runs(k: Kernel, pid: int, window: int = TRUTH_WINDOW
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """observable_memory in windows: (address, content ids) of at most `window` pages, in
    VMA and address order; the task's VMAs are taken when the walk starts."""
    for vma in list(k.task(pid).vmas):
        for lo in range(0, vma.npages, window):
            hi = min(vma.npages, lo + window)
            yield vma.start + (lo << PAGE_SHIFT), observable_vma(k, vma, lo, hi)
