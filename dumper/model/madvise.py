"""madvise() and its relatives (mm/madvise.c), userfaultfd write-protect and poison markers
(mm/userfaultfd.c), and the split of a huge PMD that zaps one task's PTEs."""

from __future__ import annotations

import numpy as np

from dumper.kabi import (
    PAGE_SHIFT,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
)
from dumper.model import pte
from dumper.model.fault import handle_mm_fault
from dumper.model.hugetlb import HPAGE, hugetlb_align, is_vm_hugetlb_page
from dumper.model.mm import (
    folio_free_swap,
    isolate_range,
    swap_free,
    vma_merge_range,
    vma_range,
    zap_pte_range,
)
from dumper.model.shmem import shmem_fallocate
from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_LAZYFREE,
    PFN_BASE,
    ZERO_PFN,
    Inode,
    Kernel,
    ModelError,
    Task,
)
from dumper.model.thp import anon_folio_heads, split_anon_folio
from dumper.model.vmscan import shrink_folio_list

U64 = np.uint64


def madvise_dontneed(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_DONTNEED: zap_page_range_single over the caller's PTEs only; shared pages stay in
    the page cache, guard and uffd-wp markers stay (no ZAP_FLAG_DROP_MARKER). A hugetlb
    range is whole huge pages (hugetlb_align)."""
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        if is_vm_hugetlb_page(vma):
            a, b = hugetlb_align(vma, vma.start + (lo << PAGE_SHIFT),
                                 vma.start + (hi << PAGE_SHIFT), "MADV_DONTNEED")
            lo, hi = vma.index(a), vma.index(b)
        zap_pte_range(k, vma, lo, hi, drop_markers=False)


def split_huge_pmd(k: Kernel, pid: int, start: int, length: int) -> None:
    """__split_huge_pmd_locked on a file/shmem VMA: the PMD is cleared and no PTEs are
    installed (kernel.md §3, verified (m)) — any zap of one task's PTEs looks the same."""
    madvise_dontneed(k, pid, start, length)


def madvise_remove(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_REMOVE: needs a shared mapping that may be written (vma_is_shared_maywrite: VM_SHARED
    and VM_MAYWRITE, which a read-only mprotect keeps; else EACCES); punches the object's
    pages (vfs_fallocate PUNCH_HOLE|KEEP_SIZE), zapping every mapper."""
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        if not (vma.shared and vma.maywrite) or vma.obj is None:
            raise ModelError("EACCES", f"MADV_REMOVE on a non-shared-writable VMA {vma.start:#x}")
        if is_vm_hugetlb_page(vma):  # hugetlbfs_punch_hole: whole huge pages only
            lo, hi = -(-lo // HPAGE) * HPAGE, hi // HPAGE * HPAGE
            if hi <= lo:
                continue
        shmem_fallocate(k, vma.obj, (vma.pgoff + lo) << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT,
                        punch=True, keep_size=True)


def can_do_file_pageout(task: Task, obj: Inode) -> bool:
    """can_do_file_pageout: the inode's owner, a capable caller, or one who may write it."""
    return task.uid == 0 or obj.owner_uid == task.uid or bool(obj.mode & 0o002)


def madvise_pageout(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_PAGEOUT (madvise_cold_or_pageout_pte_range + reclaim_pages): only pages the
    caller maps (pte_none skipped), only folios mapped exactly once (others are skipped), and
    of a file/shmem mapping only if can_do_file_pageout (else silently nothing)."""
    task = k.task(pid)
    chosen = []
    ranges = vma_range(task, start, start + length)
    lru_advice_valid(ranges, "MADV_PAGEOUT")
    for vma, lo, hi in ranges:
        ptes = vma.ptes[lo:hi]
        present = pte.kinds(ptes) == pte.PRESENT
        pfns = pte.values(ptes[present])
        pfns = pfns[pfns != U64(ZERO_PFN)]
        fi = pfns.astype(np.int64) - PFN_BASE
        pfns = pfns[k.frames.mapcount.a[fi] == 1]
        if vma.obj is not None and not can_do_file_pageout(task, vma.obj):
            if vma.shared:
                continue
            anon = (k.frames.flags.a[pfns.astype(np.int64) - PFN_BASE] & F_ANON) != 0
            pfns = pfns[anon]  # pageout_anon_only_filter
        chosen.append(pfns)
    if chosen:
        shrink_folio_list(k, np.concatenate(chosen))


def madvise_populate(k: Kernel, pid: int, start: int, length: int, write: bool) -> None:
    """MADV_POPULATE_READ/WRITE: fault in every page as GUP would (faultin_page), without
    changing contents; read faults on file pages do fault-around."""
    task = k.task(pid)
    for vma, lo, hi in vma_range(task, start, start + length):
        for i in range(lo, hi):
            word = int(vma.ptes[i])
            if pte.kind_of(word) == pte.PRESENT and (not write or word & pte.WRITE):
                continue
            handle_mm_fault(k, task, vma, i, write)


def madvise_guard_install(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_GUARD_INSTALL (6.13+): anon_vma_prepare on the VMA (so fork copies its PTEs, even
    on shmem, until 6.19), zap the range, install PTE_MARKER_GUARD in every PTE."""
    if not k.profile.guard_regions:
        raise ModelError("EINVAL", f"{k.profile.name} has no MADV_GUARD_INSTALL")
    for vma, _, _ in vma_range(k.task(pid), start, start + length):
        if is_vm_hugetlb_page(vma):  # is_valid_guard_vma
            raise ModelError("EINVAL", f"MADV_GUARD_INSTALL on a hugetlb VMA {vma.start:#x}")
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        if k.profile.guard_install_anon_vma or vma.obj is None:
            vma.anon_vma = True
        zap_pte_range(k, vma, lo, hi, drop_markers=True)
        vma.ptes[lo:hi] = U64(pte.make(pte.MARKER, PTE_MARKER_GUARD))


def madvise_guard_remove(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_GUARD_REMOVE: guard markers become none."""
    if not k.profile.guard_regions:
        raise ModelError("EINVAL", f"{k.profile.name} has no MADV_GUARD_REMOVE")
    guard = U64(pte.make(pte.MARKER, PTE_MARKER_GUARD))
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        ptes = vma.ptes[lo:hi]
        ptes[ptes == guard] = 0


def uffd_writeprotect(k: Kernel, pid: int, start: int, length: int) -> None:
    """UFFDIO_REGISTER(WP) with WP_ASYNC|WP_UNPOPULATED, then UFFDIO_WRITEPROTECT: present and
    swap PTEs get the uffd-wp bit, none PTEs a PTE_MARKER_UFFD_WP (6.7+)."""
    if not k.profile.uffd_wp_markers:
        raise ModelError("EINVAL", f"{k.profile.name} has no uffd-wp markers")
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        vma.uffd_wp = True
        ptes = vma.ptes[lo:hi]
        kinds = pte.kinds(ptes)
        live = (kinds == pte.PRESENT) | (kinds == pte.SWAP)
        ptes[live] = (ptes[live] | U64(pte.UFFD_WP)) & ~U64(pte.WRITE)
        ptes[ptes == 0] = U64(pte.make(pte.MARKER, PTE_MARKER_UFFD_WP))


def uffd_poison(k: Kernel, pid: int, start: int, length: int) -> None:
    """UFFDIO_POISON (6.6+): a PTE_MARKER_POISONED in each none PTE (EEXIST otherwise)."""
    if not k.profile.uffd_wp_markers:
        raise ModelError("EINVAL", f"{k.profile.name} has no poison markers")
    for vma, lo, hi in vma_range(k.task(pid), start, start + length):
        if vma.ptes[lo:hi].any():
            raise ModelError("EEXIST", f"UFFDIO_POISON over populated PTEs at {vma.start:#x}")
        vma.ptes[lo:hi] = U64(pte.make(pte.MARKER, PTE_MARKER_POISONED))


def madvise_free(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_FREE (madvise_free_pte_range), private anonymous VMAs only (else EINVAL): a swap
    entry is freed and its PTE cleared (the page reads zeros at once), a poison marker too;
    a present page (not the zero page) is cleaned and marked lazyfree (folio_mark_lazyfree),
    after folio_free_swap if it is in the swap cache (skipped if its slot is still needed).
    A folio in the swap cache or dirty is skipped when mapped more than once; a clean shared
    one is marked lazyfree but keeps its other mappers' dirty bits, which the model holds on
    the frame: it stays dirty, so reclaim keeps it (try_to_unmap_one sees a dirty PTE)."""
    ranges = vma_range(k.task(pid), start, start + length)
    for vma, _, _ in ranges:  # a hugetlb VMA has a file: EINVAL too
        if vma.obj is not None or vma.shared:
            raise ModelError("EINVAL", f"MADV_FREE on a non-anonymous VMA {vma.start:#x}")
    for vma, lo, hi in ranges:
        ptes = vma.ptes[lo:hi]
        # a THP only partly in the range is split (split_folio: zero-filled pages go to the
        # zero page, measured); one wholly in it stays whole (madvise_free_huge_pmd)
        for head in anon_folio_heads(k, pte.values(ptes[pte.kinds(ptes) == pte.PRESENT])):
            inside = pte.values(ptes)
            if ((inside >= U64(head)) & (inside < U64(head + k.large[head]))).sum() < \
                    k.large[head]:
                split_anon_folio(k, head)
        kinds = pte.kinds(ptes)
        vals = pte.values(ptes)
        swapped = kinds == pte.SWAP
        swap_free(k, vals[swapped])
        poisoned = (kinds == pte.MARKER) & ((vals & U64(PTE_MARKER_POISONED)) != 0)
        ptes[swapped | poisoned] = 0
        pfns = vals[(kinds == pte.PRESENT) & (vals != U64(ZERO_PFN))]
        for pfn in pfns.tolist():
            fi = pfn - PFN_BASE
            shared = k.frames.mapcount.a[fi] > 1
            if k.frames.swapslot.a[fi]:  # folio_test_swapcache
                if shared:
                    continue
                folio_free_swap(k, np.array([pfn], dtype=U64))
                if k.frames.swapslot.a[fi]:  # a swap entry still needs the slot
                    continue
            if not shared:  # folio_clear_dirty and this PTE's dirty bit
                k.frames.flags.a[fi] &= ~np.uint8(F_DIRTY)
            k.frames.flags.a[fi] |= np.uint8(F_LAZYFREE)


def madvise_cold(k: Kernel, pid: int, start: int, length: int) -> None:
    """MADV_COLD (madvise_cold_or_pageout_pte_range without pageout): the pages move to the
    inactive LRU and lose their young bits. The model has no LRU and reclaims only when told
    (reclaim, pageout), so nothing it shows changes; the range must be mapped (ENOMEM) and
    not hugetlb (EINVAL)."""
    lru_advice_valid(vma_range(k.task(pid), start, start + length), "MADV_COLD")


def lru_advice_valid(ranges, what: str) -> None:
    """can_madv_lru_vma: no LRU advice on a hugetlb VMA (EINVAL)."""
    for vma, _, _ in ranges:
        if is_vm_hugetlb_page(vma):
            raise ModelError("EINVAL", f"{what} on a hugetlb VMA {vma.start:#x}")


VMA_FLAG_ADVICE = {  # advice -> (Vma field, value): madvise_update_vma's new vm_flags
    "dontfork": ("dontcopy", True), "dofork": ("dontcopy", False),
    "wipeonfork": ("wipeonfork", True), "keeponfork": ("wipeonfork", False),
    "hugepage": ("hugepage", True), "nohugepage": ("nohugepage", True),
}
OPPOSITE = {"hugepage": "nohugepage", "nohugepage": "hugepage"}  # hugepage_madvise


def madvise_update_vma(k: Kernel, pid: int, start: int, length: int, advice: str) -> None:
    """MADV_DONTFORK / DOFORK (VM_DONTCOPY), MADV_WIPEONFORK / KEEPONFORK (VM_WIPEONFORK,
    private anonymous VMAs only: EINVAL for a file or shared one) and MADV_HUGEPAGE /
    NOHUGEPAGE (hugepage_madvise: each sets its flag and clears the other's):
    madvise_update_vma splits the VMAs to the range, sets the flag and merges what it can
    (vma_modify_flags)."""
    task = k.task(pid)
    field, value = VMA_FLAG_ADVICE[advice]
    ranges = vma_range(task, start, start + length)
    if field == "wipeonfork" and value:
        for vma, _, _ in ranges:
            if vma.obj is not None or vma.shared:
                raise ModelError("EINVAL", f"MADV_WIPEONFORK on a file or shared VMA "
                                 f"{vma.start:#x}")
    for vma in isolate_range(task, start, start + length):
        setattr(vma, field, value)
        if field in OPPOSITE:
            setattr(vma, OPPOSITE[field], False)
    vma_merge_range(k, task, start, start + length)
