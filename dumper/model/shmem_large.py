"""Large shmem folios (mm/shmem.c with per-size shmem_enabled, e.g. hugepages-64kB=always).

With k.shmem_folio_pages = n > 1 (16 for 64 KiB folios), measured on 6.18 (tests/linux/
test_differential.py "shmem-large-folios"):
- a fault on a hole allocates an n-page folio when the n-aligned block of the object around
  it is all holes, inside i_size, and the VMA covers the block at an n-aligned address
  (shmem_allowable_huge_orders / thp_vma_suitable_order); finish_fault then maps the whole
  folio (a write or a read: every page of it is data for lseek from then on). Otherwise, and
  for write(2), the page is a small folio;
- reclaim takes the folio whole: every mapper loses the folio's PTEs, and it is dirty if
  any page of it was written (folio_mark_dirty is folio-wide): clean it leaves n holes,
  dirty it goes to swap whole;
- a hole punch or truncate through part of a folio splits it: every mapper loses the PTEs
  of the whole folio, the punched pages become holes, the rest stay as small folios.
"""

from __future__ import annotations

import numpy as np

from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_UPTODATE,
    PC_PAGE,
    PC_SHIFT,
    PFN_BASE,
    Inode,
    Kernel,
    Vma,
)

U64 = np.uint64


def finish_fault_folio(k: Kernel, vma: Vma, i: int, pfn: int, write: bool) -> bool:
    """finish_fault on a page of a large page-cache folio (new or already there): the whole
    folio is mapped if the VMA covers it and its PTEs are all none (False: the caller maps
    the one page)."""
    for head, n in large_folio_heads(k, np.array([pfn], dtype=U64)).items():
        base = vma.pgoff + i - (pfn - head)
        first = base - vma.pgoff
        if first >= 0 and first + n <= vma.npages:
            return map_large_folio(k, vma, base, n, write)
    return False


def map_large_folio(k: Kernel, vma: Vma, base: int, n: int, write: bool) -> bool:
    """Every page of the folio at object index base gets its PTE in this VMA, if all of them
    are none (else nothing: False)."""
    from dumper.model import pte
    from dumper.model.mm import map_frames

    first = base - vma.pgoff
    if vma.ptes[first : first + n].any():
        return False
    pfns = vma.obj.cache[base : base + n] & U64((1 << 55) - 1)
    vma.ptes[first : first + n] = pte.make_array(pte.PRESENT, pfns, write=write)
    map_frames(k, pfns)
    return True


def shmem_alloc_large(k: Kernel, vma: Vma, i: int) -> int | None:
    """shmem_alloc_and_add_folio with a large order for page i's fault: the head of the new
    folio's index block, or None when a small folio it is."""
    n = k.shmem_folio_pages
    obj = vma.obj
    if n <= 1 or obj is None or not obj.is_shmem:
        return None
    idx = vma.pgoff + i
    base = idx - idx % n
    first = base - vma.pgoff  # the block's first page in the VMA
    if first < 0 or first + n > vma.npages or ((vma.start >> 12) + first) % n:
        return None
    if base + n > obj.npages:
        return None
    obj.grow_cache(base + n)
    if obj.cache[base : base + n].any():
        return None
    pfns = k.frames.alloc(np.zeros(n, dtype=U64), F_UPTODATE)
    obj.cache[base : base + n] = pfns | U64(PC_PAGE << PC_SHIFT)
    k.large[int(pfns[0])] = n
    return base


def large_folio_heads(k: Kernel, pfns: np.ndarray) -> dict[int, int]:
    """The page-cache (not anonymous) large folios holding any of pfns: head -> pages."""
    if not k.large or not len(pfns):
        return {}
    out = {}
    heads = np.array(sorted(k.large), dtype=U64)
    at = np.searchsorted(heads, np.asarray(pfns, dtype=U64), side="right") - 1
    for h in np.unique(at[at >= 0]).tolist():
        head = int(heads[h])
        n = k.large[head]
        if not k.frames.flags.a[head - PFN_BASE] & F_ANON and (
                (np.asarray(pfns) >= head) & (np.asarray(pfns) < head + n)).any():
            out[head] = n
    return out


def reclaim_whole_folios(k: Kernel, pfns: np.ndarray) -> np.ndarray:
    """shrink_folio_list takes a large shmem folio whole, dirty if any page is: pfns with
    every page of such folios added (and the folios no longer large: reclaimed, they leave
    holes or swap entries index by index)."""
    heads = large_folio_heads(k, pfns)
    if not heads:
        return pfns
    extra = []
    for head, n in heads.items():
        del k.large[head]
        fi = np.arange(head - PFN_BASE, head - PFN_BASE + n)
        if (k.frames.flags.a[fi] & F_DIRTY).any():
            k.frames.flags.a[fi] |= np.uint8(F_DIRTY)
        extra.append(np.arange(head, head + n, dtype=U64))
    return np.unique(np.concatenate([np.asarray(pfns, dtype=U64), *extra]))


def split_for_punch(k: Kernel, obj: Inode, lo: int, hi: int) -> tuple[int, int]:
    """truncate_inode_partial_folio: a large folio that [lo, hi) cuts through is split, and
    every mapper loses the PTEs of the whole folio. Returns the index range to unmap."""
    from dumper.model.shmem import pc_kinds, pc_values

    a, b = lo, hi
    for edge in (lo, hi - 1):
        if not 0 <= edge < len(obj.cache) or pc_kinds(obj.cache[edge : edge + 1])[0] != PC_PAGE:
            continue
        pfn = int(pc_values(obj.cache[edge : edge + 1])[0])
        for head, n in large_folio_heads(k, np.array([pfn], dtype=U64)).items():
            start = edge - (pfn - head)
            if start < lo or start + n > hi:  # cut through: split
                del k.large[head]
            a, b = min(a, start), max(b, start + n)
    for head in large_folio_heads(k, _cache_pfns(obj, lo, hi)):
        k.large.pop(head, None)  # wholly punched: its pages go
    return a, b


def _cache_pfns(obj: Inode, lo: int, hi: int) -> np.ndarray:
    from dumper.model.shmem import pc_kinds, pc_values

    cache = obj.cache[lo : min(hi, len(obj.cache))]
    return pc_values(cache[pc_kinds(cache) == PC_PAGE])
