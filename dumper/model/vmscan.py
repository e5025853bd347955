"""Reclaim: the reverse map, try_to_unmap, swap-out of anonymous and shmem pages, and the
swap cache stage in between (mm/vmscan.c shrink_folio_list, mm/rmap.c, mm/shmem.c).

A page is reclaimed in two stages, both observable: first it is unmapped from every mapper
and written to a swap slot while it stays in the swap cache (mincore still reads 1 for it);
then the swap cache lets it go (__remove_mapping) and only the slot holds the data. A
synchronous device (zram) does both at once; an asynchronous one (a swapfile) leaves the
page in the swap cache until writeback ends (kernel.md §4: SwapCached, mincore 1111 vs 0000).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dumper.kabi import PTE_MARKER_PAGEOUT, PTE_MARKER_UFFD_WP
from dumper.model import pte
from dumper.model.shmem import PC_PAGE, PC_SWAP, pc_make
from dumper.model.shmem_large import reclaim_whole_folios
from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_HUGETLB,
    F_LAZYFREE,
    F_USED,
    PFN_BASE,
    ZERO_PFN,
    Inode,
    Kernel,
    Vma,
)
from dumper.model.thp import reclaim_large_folios

U64 = np.uint64


def rmap_walk(k: Kernel, pfns: np.ndarray) -> Iterator[tuple[Vma, np.ndarray]]:
    """rmap_walk: every VMA with present PTEs mapping one of pfns, and those page indices."""
    for task in k.tasks.values():
        for vma in task.vmas:
            kinds = pte.kinds(vma.ptes)
            hit = (kinds == pte.PRESENT) & np.isin(pte.values(vma.ptes), pfns)
            if hit.any():
                yield vma, np.nonzero(hit)[0]


def try_to_unmap(k: Kernel, pfns: np.ndarray) -> None:
    """try_to_unmap: clear every PTE mapping these folios. An anonymous page's PTEs become
    swap entries of the slot add_to_swap gave it (each one a swap_map reference); a shmem
    page's PTEs become none (pte_clear) — or, under the RFC, a PAGEOUT marker — and a
    uffd-wp protected one a PTE_MARKER_UFFD_WP (pte_install_uffd_wp_if_needed)."""
    for vma, idx in rmap_walk(k, pfns):
        words = vma.ptes[idx]
        vals = pte.values(words)
        fi = vals.astype(np.int64) - PFN_BASE
        anon = (k.frames.flags.a[fi] & F_ANON) != 0
        wp = pte.uffd(words)
        slots = k.frames.swapslot.a[fi].astype(U64)
        new = np.zeros(len(idx), dtype=U64)
        swapped = anon & (slots != 0)
        new[swapped] = pte.make_array(pte.SWAP, slots[swapped]) | (
            wp[swapped].astype(U64) << U64(58)
        )
        np.add.at(k.swap.count.a, slots[swapped].astype(np.int64), 1)
        if k.profile.shmem_pageout_marker and vma.shared:
            new[~anon] = U64(pte.make(pte.MARKER, PTE_MARKER_PAGEOUT))
        if k.profile.uffd_wp_markers:
            new[~anon & wp] = U64(pte.make(pte.MARKER, PTE_MARKER_UFFD_WP))
        keep = anon & (slots == 0)  # no slot: the anonymous page cannot be unmapped
        vma.ptes[idx[~keep]] = new[~keep]
        np.subtract.at(k.frames.mapcount.a, fi[~keep], 1)


def page_cache_owner(k: Kernel, pfns: np.ndarray) -> Iterator[tuple[Inode, np.ndarray, np.ndarray]]:
    """folio->mapping, folio->index: which inode indices hold these page-cache pages."""
    for obj in k.inodes:
        kinds = (obj.cache >> U64(60)).astype(np.uint8)
        vals = obj.cache & U64((1 << 55) - 1)
        hit = (kinds == PC_PAGE) & np.isin(vals, pfns)
        if hit.any():
            idx = np.nonzero(hit)[0]
            yield obj, idx, vals[idx]


def swapcache_release(k: Kernel, pfns: np.ndarray) -> None:
    """__remove_mapping after writeback: unmapped swap-cache folios leave the swap cache and
    are freed; the slot alone holds the data now."""
    if k.migrating:  # __remove_mapping cannot freeze a migrating folio's refcount
        pfns = np.asarray(pfns)[~np.isin(pfns, np.array(sorted(k.migrating)))]
    if not len(pfns):
        return
    fi = np.asarray(pfns, dtype=np.int64) - PFN_BASE
    slots = k.frames.swapslot.a[fi]
    free = (slots != 0) & (k.frames.mapcount.a[fi] == 0)
    # put_swap_folio: a slot no swap entry refers to any more goes with its folio
    k.swap.in_use -= int((free & (k.swap.count.a[slots] <= 0)).sum())
    k.swap.cache.a[slots[free]] = 0
    k.frames.swapslot.a[fi[free]] = 0
    k.frames.free(fi[free] + PFN_BASE)


def swapcache_drop_all(k: Kernel) -> int:
    """End every pending writeback: release all unmapped swap-cache folios. Returns how many."""
    cached = k.swap.cache.a[: k.swap.cache.n]
    pfns = cached[cached != 0]
    before = k.frames.allocated
    swapcache_release(k, pfns)
    return before - k.frames.allocated


def discard_lazyfree(k: Kernel, pfns: np.ndarray) -> np.ndarray:
    """The lazyfree (MADV_FREE) folios among pfns, as shrink_folio_list treats them: no
    add_to_swap (not swapbacked), then try_to_unmap_one: a clean one is discarded (every PTE
    cleared: the pages read zeros, with or without swap); a redirtied one is set swapbacked
    again and stays mapped this round (activate_locked). Returns the other folios."""
    fi = pfns.astype(np.int64) - PFN_BASE
    flags = k.frames.flags.a[fi]
    lazy = (flags & F_LAZYFREE) != 0
    if not lazy.any():
        return pfns
    k.frames.flags.a[fi[lazy]] &= ~np.uint8(F_LAZYFREE)
    gone = pfns[lazy & ((flags & F_DIRTY) == 0)]
    for vma, idx in list(rmap_walk(k, gone)):
        np.subtract.at(k.frames.mapcount.a, pte.values(vma.ptes[idx]).astype(np.int64)
                       - PFN_BASE, 1)
        vma.ptes[idx] = 0
    k.frames.free(gone)
    return pfns[~lazy]


def shrink_folio_list(k: Kernel, pfns: np.ndarray, free_now: bool | None = None) -> None:
    """shrink_folio_list for chosen folios: add_to_swap / shmem_writeout / file writeback,
    try_to_unmap, then (free_now, or a synchronous device) release from the swap cache.
    Without swap an anonymous page stays mapped and a shmem page is unmapped but redirtied
    and kept (shmem_writeout fails: kernel.md §3, verified (n))."""
    pfns = np.unique(np.asarray(pfns, dtype=U64))
    pfns = pfns[pfns != U64(ZERO_PFN)]
    # hugetlb folios are not on the LRU: reclaim never sees them
    pfns = pfns[(k.frames.flags.a[pfns.astype(np.int64) - PFN_BASE] & F_HUGETLB) == 0]
    if k.migrating:  # a folio under migration is isolated from the LRU: never reclaimed
        pfns = pfns[~np.isin(pfns, np.array(sorted(k.migrating), dtype=U64))]
    if not len(pfns):
        return
    if free_now is None:
        free_now = k.swap.sync
    pfns = discard_lazyfree(k, pfns)
    reclaim_large_folios(k, pfns)  # THP: split (zero pages remapped) or swapped whole
    pfns = reclaim_whole_folios(k, pfns)  # a large shmem folio goes whole
    pfns = pfns[(k.frames.flags.a[pfns.astype(np.int64) - PFN_BASE] & F_USED) != 0]
    if not len(pfns):
        return
    fi = pfns.astype(np.int64) - PFN_BASE
    anon = (k.frames.flags.a[fi] & F_ANON) != 0
    # A folio still in the swap cache since a read fault swapped it in (do_swap_page keeps
    # the slot) and not written since: its slot holds its data, so after try_to_unmap there
    # is nothing to write (pageout is only for dirty folios) and __remove_mapping frees it
    # at once, even on an asynchronous device (measured on 6.18: REPAGEOUT in
    # tests/linux/test_differential.py). A dirty one is written to its slot again.
    slot = k.frames.swapslot.a[fi]
    dirty = (k.frames.flags.a[fi] & F_DIRTY) != 0
    clean_cached = anon & (slot != 0) & ~dirty & (k.frames.mapcount.a[fi] > 0)
    if k.swap.enabled:  # add_to_swap for anonymous folios not yet in the swap cache
        need = anon & (slot == 0)
        slots = k.swap.alloc(k.frames.content.a[fi[need]])
        k.frames.swapslot.a[fi[need]] = slots.astype(np.int64)
        k.swap.cache.a[slots.astype(np.int64)] = pfns[need].astype(np.int64)
        rewrite = anon & (slot != 0) & dirty
        k.swap.content.a[slot[rewrite]] = k.frames.content.a[fi[rewrite]]
        k.frames.flags.a[fi[anon]] &= ~np.uint8(F_DIRTY)  # pageout: folio_clear_dirty_for_io
    try_to_unmap(k, pfns)
    swapcache_release(k, pfns[clean_cached])  # nothing to write: freed now
    released = [pfns[anon & ~clean_cached]]
    for obj, idx, pages in page_cache_owner(k, pfns[~anon]):
        mapped = k.frames.mapcount.a[pages.astype(np.int64) - PFN_BASE] > 0
        idx, pages = idx[~mapped], pages[~mapped]
        if obj.disk is not None:  # a file page: write back if dirty, then drop it
            pi = pages.astype(np.int64) - PFN_BASE
            obj.disk[idx] = k.frames.content.a[pi]
            k.frames.flags.a[pi] &= ~np.uint8(F_DIRTY)
            obj.cache[idx] = 0
            k.frames.free(pages)
            continue
        # pageout() is only for dirty folios: a shmem folio nobody wrote (a read fault's or
        # MADV_POPULATE_READ's zeroed page) goes straight to __remove_mapping and leaves a
        # hole (measured on 6.18 by tests/linux/test_differential.py, with and without swap).
        pi = pages.astype(np.int64) - PFN_BASE
        clean = (k.frames.flags.a[pi] & F_DIRTY) == 0
        if clean.any():
            obj.cache[idx[clean]] = 0
            k.frames.free(pages[clean])
            idx, pages = idx[~clean], pages[~clean]
        if not k.swap.enabled:
            continue  # shmem_writeout redirties: the page stays in the page cache
        slots = k.swap.alloc(k.frames.content.a[pages.astype(np.int64) - PFN_BASE])
        si = slots.astype(np.int64)
        k.swap.count.a[si] = 1  # the xarray value entry's reference
        k.swap.cache.a[si] = pages.astype(np.int64)
        k.frames.swapslot.a[pages.astype(np.int64) - PFN_BASE] = si
        obj.cache[idx] = pc_make(PC_SWAP, slots)
        released.append(pages)
    if free_now:
        swapcache_release(k, np.concatenate(released))


def reclaim_range_pages(k: Kernel, pid: int, start: int, end: int) -> np.ndarray:
    """The folios a reclaim of [start, end) in pid's view means: the object's page-cache pages
    behind a shared mapping (mapped or not), the frames mapped by present PTEs otherwise."""
    from dumper.model.mm import vma_range

    out = []
    for vma, lo, hi in vma_range(k.task(pid), start, end):
        if vma.shared:
            obj = vma.obj
            a, b = vma.pgoff + lo, min(vma.pgoff + hi, len(obj.cache))
            cache = obj.cache[a:b]
            pages = (cache >> U64(60)) == U64(PC_PAGE)
            out.append(cache[pages] & U64((1 << 55) - 1))
        else:
            ptes = vma.ptes[lo:hi]
            out.append(pte.values(ptes[pte.kinds(ptes) == pte.PRESENT]))
    return np.concatenate(out) if out else np.zeros(0, dtype=U64)


def reclaim(k: Kernel, pid: int, start: int, end: int, free_now: bool | None = None) -> None:
    """System reclaim (kswapd) of the pages behind [start, end) of pid, through the reverse
    map: every mapper loses its PTEs, whichever process touched the page."""
    shrink_folio_list(k, reclaim_range_pages(k, pid, start, end), free_now)
