"""Page faults: what a task's read or write of its memory does (mm/memory.c handle_mm_fault).

The per-page path follows the kernel's dispatch (do_anonymous_page, do_read_fault with
fault-around, do_cow_fault, do_shared_fault, do_swap_page, do_wp_page); ranges that are
uniformly none or uniformly mapped take vectorized fast paths with the same outcome.
"""

from __future__ import annotations

import numpy as np

from dumper.kabi import PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE, PTE_MARKER_GUARD
from dumper.kabi import PTE_MARKER_POISONED as MARKER_POISONED
from dumper.model import pte
from dumper.model.hugetlb import hugetlb_fault, is_vm_hugetlb_page
from dumper.model.mm import folio_free_swap, map_frames, swap_free, unmap_frames, vma_range
from dumper.model.shmem import PC_PAGE, pc_kinds, pc_values, shmem_get_folio
from dumper.model.shmem_large import finish_fault_folio, shmem_alloc_large
from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_UPTODATE,
    PFN_BASE,
    ZERO_PFN,
    Kernel,
    ModelError,
    Task,
    Vma,
)
from dumper.model.thp import do_huge_pmd_fault, thp_vma_allowable

U64 = np.uint64


def _set_present(k: Kernel, vma: Vma, i: int, pfn: int, write: bool) -> None:
    vma.ptes[i] = pte.make(pte.PRESENT, pfn, write=write)
    map_frames(k, np.array([pfn], dtype=U64))


def _new_anon(k: Kernel, vma: Vma, cid: int) -> int:
    """alloc_anon_folio + anon_vma_prepare: a fresh private page."""
    vma.anon_vma = True
    return int(k.frames.alloc(np.array([cid], dtype=U64), F_ANON | F_UPTODATE)[0])


# vm_ops->map_pages per object kind: should_fault_around() (mm/memory.c) returns false when
# the VMA's vm_operations_struct has none. shmem_vm_ops / shmem_anon_vm_ops and a regular
# file's generic_file_vm_ops have filemap_map_pages; a SysV segment's VMA has shm_vm_ops
# (ipc/shm.c), which wraps shmem's fault but has no map_pages: a read fault maps only the
# faulting page (measured on 6.18, tests/linux/test_differential.py "sysv-no-fault-around").
MAP_PAGES = {"shmem-anon": True, "memfd": True, "tmpfs": True, "file": True, "sysv": False}


def should_fault_around(k: Kernel, vma: Vma) -> bool:
    """should_fault_around: the VMA's ops have map_pages and fault_around_bytes > 1 page."""
    return MAP_PAGES[vma.obj.kind] and k.profile.fault_around_pages > 1


def do_fault_around(k: Kernel, vma: Vma, i: int) -> None:
    """do_fault_around -> filemap_map_pages: map the uptodate page-cache pages around index i
    whose PTEs are none, within fault_around_pages, the VMA and the page table (512)."""
    if not should_fault_around(k, vma):
        return
    nr = k.profile.fault_around_pages
    addr = vma.start + (i << PAGE_SHIFT)
    pte_off = (addr >> PAGE_SHIFT) & 511
    lo_pte = max(pte_off - pte_off % nr, pte_off - min(pte_off, i))
    hi_pte = min(lo_pte + nr, 512, pte_off + vma.npages - i)
    lo, hi = i - (pte_off - lo_pte), i + (hi_pte - pte_off)
    obj = vma.obj
    f_lo, f_hi = vma.pgoff + lo, min(vma.pgoff + hi, obj.npages, len(obj.cache))
    if f_hi <= f_lo:
        return
    cache = obj.cache[f_lo:f_hi]
    cand = pc_kinds(cache) == PC_PAGE
    pfns = pc_values(cache)
    fi = pfns.astype(np.int64) - PFN_BASE
    cand &= np.where(cand, (k.frames.flags.a[np.where(cand, fi, 0)] & F_UPTODATE) != 0, False)
    ptes = vma.ptes[lo : lo + len(cache)]
    cand &= ptes == 0
    if k.migrating:  # next_uptodate_folio: a locked (migrating) folio is skipped
        cand &= ~np.isin(pfns, np.array(sorted(k.migrating), dtype=U64))
    if not cand.any():
        return
    write = vma.shared and bool(vma.prot & PROT_WRITE)
    ptes[cand] = pte.make_array(pte.PRESENT, pfns[cand], write=write)
    map_frames(k, pfns[cand])


def swap_vma_readahead(k: Kernel, vma: Vma, i: int) -> None:
    """swap_vma_readahead: read the swap entries of the PTEs around page i (an aligned window
    of profile.swap_readahead_pages, inside the VMA and the page table) into the swap cache,
    without mapping them."""
    nr = k.profile.swap_readahead_pages
    if nr <= 1:
        return
    pte_off = ((vma.start >> PAGE_SHIFT) + i) & 511
    lo = max(0, i - pte_off % nr, i - pte_off)
    hi = min(vma.npages, lo + nr, i + (512 - pte_off))
    window = vma.ptes[lo:hi]
    swapped = np.nonzero(pte.kinds(window) == pte.SWAP)[0]
    slots = pte.values(window[swapped]).astype(np.int64)
    slots = np.unique(slots[(k.swap.cache.a[slots] == 0) & (k.swap.count.a[slots] > 0)])
    if not len(slots):
        return
    pfns = k.frames.alloc(k.swap.content.a[slots], F_ANON | F_UPTODATE)
    k.swap.cache.a[slots] = pfns.astype(np.int64)
    k.frames.swapslot.a[pfns.astype(np.int64) - PFN_BASE] = slots


def do_swap_page(k: Kernel, vma: Vma, i: int, write: bool = False) -> None:
    """do_swap_page: take the page from the swap cache or read it from the slot, map it, and
    drop this PTE's swap reference; exclusive (and writable) once no other entry holds it.
    The folio keeps its slot in the swap cache unless should_try_to_free_swap: a write fault
    on an exclusive folio (measured on 6.18: a read-faulted page paged out again is freed at
    once, its clean data already in the slot; tests/linux/test_differential.py REPAGEOUT)."""
    slot = pte.value_of(vma.ptes[i])
    pfn = int(k.swap.cache.a[slot])
    if pfn and pfn in k.migrating:  # folio_lock_or_retry waits for the migration
        from dumper.model.migrate import settle

        settle(k, pfn)
        pfn = int(k.swap.cache.a[slot])
    # SWP_SYNCHRONOUS_IO with one reference (zram): read straight into a new folio that
    # skips the swap cache (do_swap_page's skip_swapcache path), so the slot goes with the
    # PTE's reference; a later reclaim writes the page to a new slot.
    skip_swapcache = pfn == 0 and k.swap.sync and k.swap.count.a[slot] == 1
    if pfn == 0 and not skip_swapcache:
        swap_vma_readahead(k, vma, i)  # the window holds this slot too: it comes back cached
        pfn = int(k.swap.cache.a[slot])
    if pfn == 0:
        pfn = int(k.frames.alloc(k.swap.content.a[slot : slot + 1], F_ANON | F_UPTODATE)[0])
        k.swap.cache.a[slot] = pfn
        k.frames.swapslot.a[pfn - PFN_BASE] = slot
    exclusive = k.swap.count.a[slot] == 1 and k.frames.mapcount.a[pfn - PFN_BASE] == 0
    _set_present(k, vma, i, pfn, write=exclusive and bool(vma.prot & PROT_WRITE))
    swap_free(k, np.array([slot], dtype=U64))
    if skip_swapcache or write and exclusive:
        folio_free_swap(k, np.array([pfn], dtype=U64))


def do_wp_page(k: Kernel, vma: Vma, i: int) -> None:
    """do_wp_page: a write to a read-only present PTE. Shared: make it writable. Private:
    reuse an exclusive anonymous page (wp_can_reuse_anon_folio), else copy (wp_page_copy)."""
    pfn = pte.value_of(vma.ptes[i])
    if vma.shared:
        vma.ptes[i] |= U64(pte.WRITE)
        return
    fi = pfn - PFN_BASE
    if pfn != ZERO_PFN and k.frames.flags.a[fi] & F_ANON and k.frames.mapcount.a[fi] == 1:
        slot = int(k.frames.swapslot.a[fi])
        if slot == 0 or k.swap.count.a[slot] == 0:
            if slot:  # wp_can_reuse_anon_folio: folio_free_swap, no entry needs the slot
                folio_free_swap(k, np.array([pfn], dtype=U64))
            vma.ptes[i] |= U64(pte.WRITE)
            return
    new = _new_anon(k, vma, k.frames.cid(pfn))
    unmap_frames(k, np.array([pfn], dtype=U64))
    _set_present(k, vma, i, new, write=True)


def handle_mm_fault(k: Kernel, task: Task, vma: Vma, i: int, write: bool) -> None:
    """handle_mm_fault for page i of vma: afterwards the PTE is present (and writable if
    write), or a ModelError says which signal the task would get."""
    if write and not vma.prot & PROT_WRITE or not write and not vma.prot & PROT_READ:
        raise ModelError("SIGSEGV", f"pid {task.pid}: access violates {vma.start:#x} prot")
    if is_vm_hugetlb_page(vma):
        hugetlb_fault(k, vma, i, write)
        return
    word = int(vma.ptes[i])
    kind = pte.kind_of(word)
    if kind == pte.MARKER:
        bits = pte.value_of(word)
        if bits & PTE_MARKER_GUARD:
            raise ModelError("SIGSEGV", f"pid {task.pid}: guard region at page {i}")
        if bits & MARKER_POISONED:
            raise ModelError("SIGBUS", f"pid {task.pid}: poisoned page {i}")
        vma.ptes[i] = 0  # uffd-wp or PAGEOUT marker: handled as pte_none (do_pte_missing)
        kind = pte.NONE
    if kind == pte.MIGRATION:
        from dumper.model.migrate import remove_migration_ptes

        remove_migration_ptes(k, pte.value_of(word))  # migration_entry_wait
        return handle_mm_fault(k, task, vma, i, write)
    if vma.obj is None and do_huge_pmd_fault(k, vma, i, write):
        return  # a PMD-level fault (THP or the huge zero page) did it
    if kind == pte.SWAP:
        do_swap_page(k, vma, i, write)
    elif kind == pte.NONE:
        if vma.obj is None:  # do_anonymous_page
            if write:
                _set_present(k, vma, i, _new_anon(k, vma, 0), write=True)
            else:
                vma.ptes[i] = pte.make(pte.PRESENT, ZERO_PFN)
            return
        idx = vma.pgoff + i
        if not write:  # do_read_fault: fault-around first, then __do_fault
            do_fault_around(k, vma, i)
            if int(vma.ptes[i]) != 0:
                return
            shmem_alloc_large(k, vma, i)  # a hole in an all-hole block: a large folio
            pfn = int(shmem_get_folio(k, vma.obj, idx, idx + 1, "SGP_CACHE")[0])
            if finish_fault_folio(k, vma, i, pfn, write=vma.shared and bool(
                    vma.prot & PROT_WRITE)):
                return  # finish_fault maps a large folio whole
            _set_present(k, vma, i, pfn, write=vma.shared and bool(vma.prot & PROT_WRITE))
            return
        shmem_alloc_large(k, vma, i)
        pfn = int(shmem_get_folio(k, vma.obj, idx, idx + 1, "SGP_CACHE")[0])
        if vma.shared and finish_fault_folio(k, vma, i, pfn, write=True):
            return  # do_shared_fault on a large folio: mapped whole
        if vma.shared:  # do_shared_fault
            _set_present(k, vma, i, pfn, write=True)
        else:  # do_cow_fault
            _set_present(k, vma, i, _new_anon(k, vma, k.frames.cid(pfn)), write=True)
        return
    word = int(vma.ptes[i])
    if write and not word & pte.WRITE:
        do_wp_page(k, vma, i)
    if write:  # UFFD_FEATURE_WP_ASYNC: the kernel resolves the write-protect fault itself
        vma.ptes[i] &= ~np.uint64(pte.UFFD_WP)


def _fast_write(k: Kernel, vma: Vma, lo: int, hi: int, cids: np.ndarray) -> bool:
    """Vectorized writes for the common uniform cases; False if the slow path is needed."""
    ptes = vma.ptes[lo:hi]
    if not vma.prot & PROT_WRITE:
        return False
    if vma.obj is None and not ptes.any() and not thp_vma_allowable(k, vma):
        # do_anonymous_page for a whole range (a THP-allowed VMA faults PMD by PMD)
        vma.anon_vma = True
        pfns = k.frames.alloc(cids, F_ANON | F_UPTODATE | F_DIRTY)
        ptes[:] = pte.make_array(pte.PRESENT, pfns, write=True)
        k.frames.mapcount.a[pfns.astype(np.int64) - PFN_BASE] += 1
        return True
    kinds = pte.kinds(ptes)
    if (kinds == pte.PRESENT).all() and pte.writable(ptes).all():
        fi = pte.values(ptes).astype(np.int64) - PFN_BASE
        k.frames.content.a[fi] = cids
        k.frames.flags.a[fi] |= F_DIRTY
        return True
    if vma.shared and not ptes.any() and vma.pgoff + hi <= vma.obj.npages and not \
            is_vm_hugetlb_page(vma) and k.shmem_folio_pages == 1:
        # do_shared_fault for a whole range inside i_size (past it shmem_fault is SIGBUS:
        # the slow path raises it at the first such page)
        pfns = shmem_get_folio(k, vma.obj, vma.pgoff + lo, vma.pgoff + hi, "SGP_WRITE")
        ptes[:] = pte.make_array(pte.PRESENT, pfns, write=True)
        map_frames(k, pfns)
        fi = pfns.astype(np.int64) - PFN_BASE
        k.frames.content.a[fi] = cids
        k.frames.flags.a[fi] |= F_DIRTY
        return True
    return False


def access(
    k: Kernel, pid: int, addr: int, length: int, write: bool, cids: np.ndarray | None = None
) -> None:
    """A task reading or writing [addr, addr+length): faults every page in order; a write
    stores cids (one per page; fresh seeds if None) into the pages it now maps writable."""
    task = k.task(pid)
    if addr % PAGE_SIZE or length % PAGE_SIZE:
        raise ModelError("EINVAL", "the model accesses whole pages")
    npages = length >> PAGE_SHIFT
    if write and cids is None:
        cids = k.contents.fresh_seeds(npages)
    done = 0
    for vma, lo, hi in vma_range(task, addr, addr + length):
        part = None if cids is None else cids[done : done + hi - lo]
        done += hi - lo
        if write and _fast_write(k, vma, lo, hi, part):
            continue
        if not write and vma.prot & PROT_READ and (
                pte.kinds(vma.ptes[lo:hi]) == pte.PRESENT).all():
            continue  # nothing to fault in (a PROT_NONE VMA faults: the slow path says so)
        for j, i in enumerate(range(lo, hi)):
            handle_mm_fault(k, task, vma, i, write)
            if write:
                fi = pte.value_of(vma.ptes[i]) - PFN_BASE
                k.frames.content.a[fi] = part[j]
                k.frames.flags.a[fi] |= F_DIRTY
