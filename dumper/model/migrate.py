"""NUMA migration of pages (mm/migrate.c): try_to_migrate leaves migration entries, and
remove_migration_ptes later maps the new page in their place.

While the entries are out the page is in RAM, but pagemap reads PM_SWAP (with swap type
28-30 and the PFN as offset; Peter Xu in the thread, kernel.md §1), and mincore reads 1.
"""

from __future__ import annotations

import numpy as np

from dumper.model import pte
from dumper.model.shmem import PC_PAGE, pc_make
from dumper.model.state import F_HUGETLB, PFN_BASE, ZERO_PFN, Kernel
from dumper.model.vmscan import page_cache_owner, rmap_walk

U64 = np.uint64


def try_to_migrate(k: Kernel, pfns: np.ndarray) -> None:
    """try_to_migrate: every present PTE of these folios becomes a migration entry (WRITE if
    the PTE was writable, READ otherwise) and stops counting as a mapping."""
    pfns = np.unique(np.asarray(pfns, dtype=U64))
    pfns = pfns[pfns != U64(ZERO_PFN)]
    for vma, idx in rmap_walk(k, pfns):
        words = vma.ptes[idx]
        vals = pte.values(words)
        write = pte.writable(words)
        vma.ptes[idx] = pte.make_array(pte.MIGRATION, vals) | (write.astype(U64) << U64(59))
        np.subtract.at(k.frames.mapcount.a, vals.astype(np.int64) - PFN_BASE, 1)
    k.migrating.update(int(p) for p in pfns)


def settle(k: Kernel, pfns) -> None:
    """Wait for the migrations of these folios: a fault, a truncation or a swap-in that meets
    a folio under migration sleeps on its lock (migration_entry_wait, folio_lock) until
    migrate_pages is done with it — in the model, the migration completes first."""
    if not k.migrating:
        return
    for p in np.atleast_1d(np.asarray(pfns, dtype=U64)):
        if int(p) in k.migrating:
            remove_migration_ptes(k, int(p))


def remove_migration_ptes(k: Kernel, old_pfn: int) -> int:
    """migrate_folio + remove_migration_ptes: copy the folio to a new frame, point the page
    cache (or swap cache) at it, turn every migration entry into a present PTE. Returns the
    new PFN — or 0 when nothing refers to the folio any more (every entry was zapped while it
    moved, and no cache holds it): migrate_pages' last folio_put frees it."""
    oi = old_pfn - PFN_BASE
    cached = any(True for _ in page_cache_owner(k, np.array([old_pfn], dtype=U64)))
    mapped = any(
        ((pte.kinds(v.ptes) == pte.MIGRATION) & (pte.values(v.ptes) == U64(old_pfn))).any()
        for t in k.tasks.values() for v in t.vmas)
    if not (cached or mapped or k.frames.swapslot.a[oi]):
        k.frames.free(np.array([old_pfn], dtype=U64))
        k.migrating.discard(old_pfn)
        return 0
    new = int(k.frames.alloc(k.frames.content.a[oi : oi + 1], int(k.frames.flags.a[oi]))[0])
    ni = new - PFN_BASE
    for task in k.tasks.values():
        for vma in task.vmas:
            kinds = pte.kinds(vma.ptes)
            hit = (kinds == pte.MIGRATION) & (pte.values(vma.ptes) == U64(old_pfn))
            if hit.any():
                idx = np.nonzero(hit)[0]
                write = pte.writable(vma.ptes[idx]).astype(U64) << U64(59)
                vma.ptes[idx] = pte.make_array(pte.PRESENT, np.full(len(idx), new, U64)) | write
                k.frames.mapcount.a[ni] += len(idx)
    for obj, idx, _ in page_cache_owner(k, np.array([old_pfn], dtype=U64)):
        obj.cache[idx] = pc_make(PC_PAGE, np.full(len(idx), new, dtype=U64))
    slot = int(k.frames.swapslot.a[oi])
    if slot:
        k.swap.cache.a[slot] = new
        k.frames.swapslot.a[ni] = slot
    k.frames.free(np.array([old_pfn], dtype=U64))
    k.migrating.discard(old_pfn)
    if slot and not mapped and not cached:  # every mapping was zapped while it moved:
        from dumper.model.mm import put_anon_frames  # free_swap_cache, as the zap would have

        put_anon_frames(k, np.array([new], dtype=U64))
    return new


def migrate_pages(k: Kernel, pfns: np.ndarray, finish: bool = True) -> None:
    """migrate_pages: unmap to migration entries; finish=False leaves them out (the stage a
    dumper may observe); finish completes the move. hugetlb folios are left where they are
    (the model does not migrate them)."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    pfns = pfns[pfns != U64(ZERO_PFN)]
    pfns = pfns[(k.frames.flags.a[pfns.astype(np.int64) - PFN_BASE] & F_HUGETLB) == 0]
    try_to_migrate(k, pfns)
    if finish:
        migrate_finish(k)


def migrate_finish(k: Kernel) -> None:
    """Complete every migration in flight."""
    for old in sorted(k.migrating):
        remove_migration_ptes(k, old)
