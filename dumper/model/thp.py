"""Transparent huge pages on private anonymous memory (mm/huge_memory.c).

A PMD-mapped THP is 512 frames allocated together (a folio, k.large) and mapped by one PMD;
the model keeps its per-page PTE words (so every observation and per-page rule stays as it
is) and records the PMD's state on the VMA (vma.huge). What THP changes, as measured on this
kernel (6.18, enabled=madvise, tests/linux/test_differential.py "thp-*"):
- a fault in a PMD-aligned 2 MiB range inside a THP-allowed VMA whose PMD is none maps the
  whole range: a write a new huge folio (do_huge_pmd_anonymous_page), a read the huge zero
  page (pagemap P and F: it is no anonymous folio); a write to the huge zero page maps a new
  huge folio (do_huge_zero_wp_pmd);
- a zap of part of the PMD splits it (__split_huge_pmd: the rest stays mapped by PTEs), a
  zap of all of it clears it (zap_huge_pmd: a later fault maps a THP again);
- fork copies the PMD (copy_huge_pmd); a write to a shared THP splits the PMD and copies the
  one page (do_huge_pmd_wp_page falls back to do_wp_page), an exclusive one is reused;
- reclaim of a THP holding data in every page swaps it out whole; otherwise the folio is
  split and its zero-filled pages are mapped to the shared zero page ("mm: remap unused
  subpages to shared zeropage when splitting isolated thp", 6.12) before the rest is
  reclaimed page by page; a MADV_FREE through part of a THP splits it the same way.
Not modelled: khugepaged collapsing ranges back and the deferred-split shrinker splitting
partly mapped or underused THPs when memory is short (both asynchronous: the tests keep them
from acting, tests/linux/conftest.py THP_SETTINGS).
"""

from __future__ import annotations

import numpy as np

from dumper.model import pte
from dumper.model.state import F_ANON, F_UPTODATE, F_USED, PFN_BASE, ZERO_PFN, Kernel, Vma

HUGE_ZERO_PFN = 0xFFE00  # the model's huge zero page: 512 frames below its own frames

HPAGE_PMD_NR = 512
PMD_SHIFT = 21
U64 = np.uint64


def thp_vma_allowable(k: Kernel, vma: Vma) -> bool:
    """thp_vma_allowable_order for a PMD of private anonymous memory: never under
    VM_NOHUGEPAGE; under enabled=madvise only with VM_HUGEPAGE; always under always."""
    if vma.obj is not None or vma.shared or vma.nohugepage or k.thp == "never":
        return False
    return k.thp == "always" or vma.hugepage


def pmd_span(vma: Vma, i: int) -> tuple[int, int, int] | None:
    """(PMD number, first page index, end page index) of the PMD holding page i, if the PMD
    lies wholly inside the VMA (transhuge_vma_suitable)."""
    addr = vma.start + (i << 12)
    pmd = addr >> PMD_SHIFT
    lo = vma.index(pmd << PMD_SHIFT)
    if lo < 0 or lo + HPAGE_PMD_NR > vma.npages:
        return None
    return pmd, lo, lo + HPAGE_PMD_NR


def pmd_none(vma: Vma, pmd: int, lo: int, hi: int) -> bool:
    """No PMD entry: neither PMD-mapped nor a PTE table (none PTEs alone are not enough)."""
    return pmd not in vma.huge and pmd not in vma.ptables and not vma.ptes[lo:hi].any()


def alloc_huge_folio(k: Kernel, vma: Vma, lo: int, hi: int) -> None:
    """vma_alloc_anon_folio_pmd + map_anon_folio_pmd: 512 zeroed frames, one folio, mapped
    writable by this VMA's PMD."""
    vma.anon_vma = True
    pfns = k.frames.alloc(np.zeros(hi - lo, dtype=U64), F_ANON | F_UPTODATE)
    k.large[int(pfns[0])] = hi - lo
    vma.ptes[lo:hi] = pte.make_array(pte.PRESENT, pfns, write=True)
    k.frames.mapcount.a[pfns.astype(np.int64) - PFN_BASE] += 1


def do_huge_pmd_fault(k: Kernel, vma: Vma, i: int, write: bool) -> bool:
    """The PMD-level fault paths (create_huge_pmd / wp_huge_pmd); False if the fault is a
    PTE-level one."""
    if not thp_vma_allowable(k, vma):
        return False
    span = pmd_span(vma, i)
    if span is None:
        return False
    pmd, lo, hi = span
    state = vma.huge.get(pmd)
    if state is None:
        if not pmd_none(vma, pmd, lo, hi):
            return False
        if write:  # do_huge_pmd_anonymous_page
            alloc_huge_folio(k, vma, lo, hi)
            vma.huge[pmd] = "thp"
        else:  # ... a read maps the huge zero page (use_zero_page)
            vma.anon_vma = True
            vma.ptes[lo:hi] = U64(pte.make(pte.PRESENT, ZERO_PFN) | pte.HUGE_ZERO)
            vma.huge[pmd] = "zero"
        return True
    if not write or pte.writable(vma.ptes[i : i + 1])[0]:
        return False
    if state == "zero":  # do_huge_zero_wp_pmd: a new huge folio replaces the zero page
        alloc_huge_folio(k, vma, lo, hi)
        vma.huge[pmd] = "thp"
        return True
    fi = pte.values(vma.ptes[lo:hi]).astype(np.int64) - PFN_BASE
    if (k.frames.mapcount.a[fi] == 1).all():  # do_huge_pmd_wp_page: exclusive, reused
        vma.ptes[lo:hi] |= U64(pte.WRITE)
        return True
    split_huge_pmd(vma, pmd)  # shared: split, and do_wp_page copies the one page
    return False


def split_huge_pmd(vma: Vma, pmd: int, at: int | None = None) -> None:
    """__split_huge_pmd: the PMD becomes a PTE table mapping the same pages (the huge zero
    page's become the small zero page's). at: the VMA's start the PMD number refers to."""
    if vma.huge.pop(pmd, None) is None:
        return
    vma.ptables.add(pmd)
    lo = ((pmd << PMD_SHIFT) - (vma.start if at is None else at)) >> 12
    vma.ptes[max(0, lo) : max(0, lo + HPAGE_PMD_NR)] &= ~U64(pte.HUGE_ZERO)


def zap_pmds(k: Kernel, vma: Vma, lo: int, hi: int) -> None:
    """What a zap of page indices [lo, hi) does to PMDs: a PMD-mapped range zapped whole is
    cleared (zap_huge_pmd), one zapped in part is split first; a PTE table stays (tracked in
    THP-allowed VMAs only, where it decides whether a fault may map a THP)."""
    if not vma.huge and not thp_vma_allowable(k, vma):
        return
    first, last = (vma.start >> 12) + lo, (vma.start >> 12) + hi  # page numbers
    for pmd in range(first >> 9, ((last - 1) >> 9) + 1 if hi > lo else first >> 9):
        a, b = pmd << 9, (pmd + 1) << 9
        if pmd in vma.huge:
            if first <= a and b <= last:
                del vma.huge[pmd]
            else:
                split_huge_pmd(vma, pmd)
        else:
            s, e = max(a, first) - (vma.start >> 12), min(b, last) - (vma.start >> 12)
            if vma.ptes[s:e].any():
                vma.ptables.add(pmd)


def free_empty_ptables(vma: Vma, lo: int, hi: int) -> None:
    """try_to_free_pte (CONFIG_PT_RECLAIM, 6.14): a zap that leaves a PTE table with every
    entry none frees it, so the PMD is none again and a fault may map a THP there (measured:
    "thp-fault-split-fork", a whole-PMD MADV_DONTNEED after a split)."""
    if not vma.ptables:
        return
    first, last = (vma.start >> 12) + lo, (vma.start >> 12) + hi
    for pmd in range(first >> 9, ((last - 1) >> 9) + 1):
        if pmd in vma.ptables:
            span = pmd_span(vma, vma.index(pmd << PMD_SHIFT)) if (
                pmd << PMD_SHIFT) >= vma.start else None
            if span is not None and not vma.ptes[span[1] : span[2]].any():
                vma.ptables.discard(pmd)


def split_vma_pmds(lower: Vma, upper: Vma) -> None:
    """vma_adjust_trans_huge: a PMD the cut runs through is split; each part keeps the PMD
    state of its own range."""
    cut = upper.start >> PMD_SHIFT
    huge, tables = dict(lower.huge), set(lower.ptables)
    if upper.start & ((1 << PMD_SHIFT) - 1) and cut in huge:
        split_huge_pmd(lower, cut)
        inside = (((cut + 1) << PMD_SHIFT) - upper.start) >> 12
        upper.ptes[:inside] &= ~U64(pte.HUGE_ZERO)
        huge.pop(cut)
        tables.add(cut)
    lower.huge = {p: s for p, s in huge.items() if p < cut}
    upper.huge = {p: s for p, s in huge.items() if p >= cut}
    lower.ptables = {p for p in tables if p <= cut}
    upper.ptables = {p for p in tables if p >= cut}


def move_pmds(vma: Vma, old_start: int) -> None:
    """move_page_tables: a PMD moved by a multiple of 2 MiB stays PMD-mapped (move_huge_pmd);
    otherwise it is split first."""
    delta = vma.start - old_start
    if delta % (1 << PMD_SHIFT):
        for pmd in list(vma.huge):
            split_huge_pmd(vma, pmd, at=old_start)
        vma.ptables = set()
        return
    shift = delta >> PMD_SHIFT
    vma.huge = {p + shift: s for p, s in vma.huge.items()}
    vma.ptables = {p + shift for p in vma.ptables}


def folio_of(k: Kernel, pfn: int) -> int | None:
    """The head PFN of the THP folio holding pfn, if any."""
    for head, n in k.large.items():
        if head <= pfn < head + n:
            return head
    return None


def reclaim_large_folios(k: Kernel, pfns: np.ndarray) -> None:
    """shrink_folio_list's part for THP folios among pfns: one holding data in every page is
    swapped out whole, any other is split and its zero-filled pages are remapped to the
    shared zero page in every mapper (6.12's remap on split of an isolated THP); either way
    the PMDs become PTE tables and the caller reclaims what is left page by page."""
    if not k.large or not len(pfns):
        return
    for head in anon_folio_heads(k, pfns):
        split_anon_folio(k, head)


def anon_folio_heads(k: Kernel, pfns: np.ndarray) -> set[int]:
    """The THP folios (anonymous) holding any of pfns."""
    return {h for h in (folio_of(k, int(p)) for p in np.unique(pfns))
            if h is not None and k.frames.flags.a[h - PFN_BASE] & F_ANON}


def split_anon_folio(k: Kernel, head: int) -> None:
    """split_folio of a THP: every mapper's PMD becomes a PTE table, and zero-filled pages
    are remapped to the shared zero page (measured after reclaim and after a MADV_FREE of
    part of a THP)."""
    from dumper.model.mm import unmap_frames

    n = k.large.pop(head)
    fi = np.arange(head, head + n, dtype=np.int64) - PFN_BASE
    zero = ((k.frames.flags.a[fi] & F_USED) != 0) & (k.frames.content.a[fi] == 0)
    for task in k.tasks.values():
        for vma in task.vmas:
            if vma.obj is not None or vma.shared:
                continue
            vals = pte.values(vma.ptes)
            idx = np.flatnonzero((pte.kinds(vma.ptes) == pte.PRESENT) & (vals >= U64(head))
                                 & (vals < U64(head + n)))
            for pmd in {(vma.start + (int(j) << 12)) >> PMD_SHIFT for j in idx}:
                split_huge_pmd(vma, pmd)
            z = idx[zero[(vals[idx] - U64(head)).astype(np.int64)]]
            if len(z):
                gone = pte.values(vma.ptes[z])
                vma.ptes[z] = U64(pte.make(pte.PRESENT, ZERO_PFN))
                unmap_frames(k, gone)
