"""hugetlb mappings (mm/hugetlb.c, fs/hugetlbfs): MAP_HUGETLB, shared and private.

Every such mapping has a hugetlbfs file ("/anon_hugepage (deleted)", dev 00:11 here), even a
private one. Memory comes from the pool (vm.nr_hugepages): mmap reserves the huge pages it
may need (hugetlb_reserve_pages, ENOMEM without them) and a fault that finds the pool empty
is SIGBUS. Measured on 6.18 (tests/linux/test_differential.py "hugetlb-*"):
- a fault, read or write, maps the whole 2 MiB page (hugetlb_no_page): shared ones from the
  file's page cache (PM_FILE), private ones as a new anonymous page (no zero page);
- fork copies a private mapping's PTEs for COW and leaves a shared one's for faults
  (copy_hugetlb_page_range runs only where vma_needs_copy); a write to a shared private
  page copies the whole huge page (hugetlb_wp);
- MADV_DONTNEED needs a huge-aligned start (EINVAL) and rounds the end down (a range under
  2 MiB does nothing); MADV_PAGEOUT, COLD and FREE are EINVAL; MADV_REMOVE punches whole
  pages of a shared mapping (EACCES for a private one); nothing is ever reclaimed;
- mincore reads the PTE only (mincore_hugetlb: a page left in the page cache reads 0).
"""

from __future__ import annotations

import numpy as np

from dumper.kabi import PAGE_SHIFT, PROT_WRITE
from dumper.model import pte
from dumper.model.state import (
    F_ANON,
    F_HUGETLB,
    F_UPTODATE,
    F_USED,
    PC_PAGE,
    PC_SHIFT,
    PFN_BASE,
    Kernel,
    ModelError,
    Vma,
)

HPAGE = 512  # pages in a 2 MiB huge page
U64 = np.uint64


def is_vm_hugetlb_page(vma: Vma) -> bool:
    return vma.obj is not None and vma.obj.kind == "hugetlb"


def hugetlb_used(k: Kernel) -> int:
    """Huge pages in use: the pool's frames allocated (private, or in a file's page cache)."""
    flags = k.frames.flags.a[: k.frames.flags.n]
    return int(np.count_nonzero((flags & (F_HUGETLB | F_USED)) == (F_HUGETLB | F_USED))) // HPAGE


def hugetlb_reserve_pages(k: Kernel, npages: int) -> None:
    """mmap's reservation check: ENOMEM unless the pool has the huge pages the mapping may
    need free now (the model keeps no reservation counts: a later fault that finds the pool
    empty is SIGBUS, as an unreserved one would be)."""
    need = -(-npages // HPAGE)
    free = k.hugetlb_pool - hugetlb_used(k)
    if need > free:
        raise ModelError("ENOMEM", f"{need} huge pages wanted, the pool (nr_hugepages="
                         f"{k.hugetlb_pool}) has {free} free")


def alloc_hugetlb_folio(k: Kernel, cids: np.ndarray, anon: bool) -> np.ndarray:
    """alloc_hugetlb_folio: one huge page from the pool (its reservation first); SIGBUS if
    the pool is empty."""
    if hugetlb_used(k) >= k.hugetlb_pool:
        raise ModelError("SIGBUS", "no free huge page in the pool")
    return k.frames.alloc(cids, (F_ANON if anon else 0) | F_UPTODATE | F_HUGETLB)


def hugetlb_fault(k: Kernel, vma: Vma, i: int, write: bool) -> None:
    """hugetlb_fault for page i: the whole huge page around it is mapped (hugetlb_no_page),
    or a write to a read-only private one is copied or reused (hugetlb_wp)."""
    lo = i - ((vma.start >> PAGE_SHIFT) + i) % HPAGE
    hi = lo + HPAGE
    if lo < 0 or hi > vma.npages:
        raise ModelError("SIGBUS", "a huge page not wholly inside its VMA")
    ptes = vma.ptes[lo:hi]
    writable = bool(vma.prot & PROT_WRITE)
    obj = vma.obj
    if not ptes.any():
        idx = vma.pgoff + lo
        if idx + HPAGE > obj.npages:
            raise ModelError("SIGBUS", f"page {i} is past the end of {obj.link_name()}")
        obj.grow_cache(idx + HPAGE)
        cache = obj.cache[idx : idx + HPAGE]
        have = (cache >> U64(PC_SHIFT)) == U64(PC_PAGE)
        if vma.shared:
            if not have.all():
                pfns = alloc_hugetlb_folio(k, np.zeros(HPAGE, dtype=U64), anon=False)
                cache[:] = pfns | U64(PC_PAGE << PC_SHIFT)
            pfns = cache & U64((1 << 55) - 1)
        elif have.all() and not write:  # a private read of a file page: maps it read-only
            pfns, writable = cache & U64((1 << 55) - 1), False
        else:  # a private page of its own: the file's bytes, or zeros
            base = k.frames.content.a[(cache & U64((1 << 55) - 1)).astype(np.int64)
                                      - PFN_BASE] if have.all() else np.zeros(HPAGE, dtype=U64)
            vma.anon_vma = True
            pfns = alloc_hugetlb_folio(k, base, anon=True)
        ptes[:] = pte.make_array(pte.PRESENT, pfns, write=writable)
        k.frames.mapcount.a[pfns.astype(np.int64) - PFN_BASE] += 1
        return
    if not write or pte.writable(ptes[i - lo : i - lo + 1])[0]:
        return
    pfns = pte.values(ptes)
    fi = pfns.astype(np.int64) - PFN_BASE
    if vma.shared:
        ptes |= U64(pte.WRITE)
        return
    if (k.frames.mapcount.a[fi] == 1).all() and (k.frames.flags.a[fi] & F_ANON).all():
        ptes |= U64(pte.WRITE)  # hugetlb_wp: the only mapper of an anonymous page reuses it
        return
    from dumper.model.mm import unmap_frames

    new = alloc_hugetlb_folio(k, k.frames.content.a[fi].copy(), anon=True)
    unmap_frames(k, pfns)  # the old page goes back to the pool if nobody maps it
    ptes[:] = pte.make_array(pte.PRESENT, new, write=True)
    k.frames.mapcount.a[new.astype(np.int64) - PFN_BASE] += 1


def hugetlb_align(vma: Vma, start: int, end: int, what: str) -> tuple[int, int]:
    """madvise_dontneed_free_valid_vma for hugetlb: a huge-aligned start (else EINVAL), the
    end rounded down to a huge page."""
    size = HPAGE << PAGE_SHIFT
    if start % size:
        raise ModelError("EINVAL", f"{what} of a hugetlb range at {start:#x}: not 2 MiB aligned")
    return start, end - (end % size)
