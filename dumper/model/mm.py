"""Address spaces: mmap, munmap, mremap, and the PTE bookkeeping under them (zap_pte_range).

Every PTE that maps a frame holds one mapcount on it; a swap PTE holds one swap_map count on
its slot. The helpers here keep those counts exact, as mm/memory.c and mm/swapfile.c do.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dumper.kabi import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_WRITE,
    PTE_MARKER_PAGEOUT,
    PTE_MARKER_UFFD_WP,
)
from dumper.model import pte
from dumper.model.state import (
    F_ANON,
    PFN_BASE,
    ZERO_PFN,
    Inode,
    Kernel,
    ModelError,
    Task,
    Vma,
)
from dumper.model.thp import free_empty_ptables, move_pmds, split_vma_pmds, zap_pmds


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _fidx(pfns: np.ndarray) -> np.ndarray:
    return pfns.astype(np.int64) - PFN_BASE


def folio_free_swap(k: Kernel, pfns: np.ndarray) -> None:
    """folio_free_swap (mm/swapfile.c): a swap-cache folio whose slot no swap entry refers to
    any more (!folio_swapped) leaves the swap cache, and the slot is freed."""
    i = _fidx(np.asarray(pfns))
    slots = k.frames.swapslot.a[i]
    free = (slots != 0) & (k.swap.count.a[slots] <= 0)
    if free.any():
        k.swap.cache.a[slots[free]] = 0
        k.frames.swapslot.a[i[free]] = 0
        k.swap.in_use -= int(free.sum())


def put_anon_frames(k: Kernel, pfns: np.ndarray) -> None:
    """folio_put for anonymous frames: free those no longer mapped nor in the swap cache. An
    unmapped swap-cache folio is first offered to free_swap_cache (mm/swap_state.c, from the
    zap's tlb batch and wp_page_copy): it leaves the swap cache if no swap entry needs it."""
    if not len(pfns):
        return
    i = _fidx(np.unique(pfns))
    anon = (k.frames.flags.a[i] & F_ANON) != 0
    unmapped = (k.frames.mapcount.a[i] <= 0) & anon
    cached = unmapped & (k.frames.swapslot.a[i] != 0)
    if cached.any():
        folio_free_swap(k, i[cached] + PFN_BASE)
    dead = unmapped & (k.frames.swapslot.a[i] == 0)
    k.frames.free(i[dead] + PFN_BASE)


def unmap_frames(k: Kernel, pfns: np.ndarray) -> None:
    """page_remove_rmap for present PTEs being torn down: drop mapcounts, free dead anon pages."""
    pfns = pfns[pfns != np.uint64(ZERO_PFN)]
    if not len(pfns):
        return
    np.subtract.at(k.frames.mapcount.a, _fidx(pfns), 1)
    put_anon_frames(k, pfns)


def map_frames(k: Kernel, pfns: np.ndarray) -> None:
    """page_add_*_rmap: one more mapcount per PTE installed."""
    pfns = pfns[pfns != np.uint64(ZERO_PFN)]
    if len(pfns):
        np.add.at(k.frames.mapcount.a, _fidx(pfns), 1)


def swap_free(k: Kernel, slots: np.ndarray) -> None:
    """swap_free / free_swap_and_cache: drop one swap_map count per entry; a slot whose count
    reaches 0 is freed, and its swap-cache page too if nothing maps it. A slot whose
    swap-cache folio is mapped stays allocated (SWAP_HAS_CACHE; __try_to_reclaim_swap only
    takes unmapped folios): reclaim can unmap that folio again without writing it, if clean."""
    if not len(slots):
        return
    s = slots.astype(np.int64)
    np.subtract.at(k.swap.count.a, s, 1)
    u = np.unique(s)
    dead = u[k.swap.count.a[u] <= 0]
    cached = k.swap.cache.a[dead]
    held = cached != 0
    # Mapped, or isolated by migrate_pages (its migration entries stand for mappings): the
    # swap cache keeps the slot; remove_migration_ptes settles it once the folio has moved.
    held[held] = (k.frames.mapcount.a[cached[held] - PFN_BASE] > 0) | np.isin(
        cached[held], np.array(sorted(k.migrating), dtype=np.int64))
    dead = dead[~held]
    if len(dead):
        k.swap.in_use -= len(dead)
        cached = k.swap.cache.a[dead]
        k.swap.cache.a[dead] = 0
        cached = cached[cached != 0]
        if len(cached):
            # A swap-cache folio whose slot is gone and that nothing maps is garbage.
            ci = cached - PFN_BASE
            k.frames.swapslot.a[ci] = 0
            k.frames.free(cached[k.frames.mapcount.a[ci] <= 0].astype(np.uint64))


def swap_duplicate(k: Kernel, slots: np.ndarray) -> None:
    """swap_duplicate: one more reference to each slot (fork copying a swap PTE)."""
    if len(slots):
        np.add.at(k.swap.count.a, slots.astype(np.int64), 1)


def zap_pte_range(k: Kernel, vma: Vma, lo: int, hi: int, drop_markers: bool) -> None:
    """zap_pte_range over page indices [lo, hi) of one VMA: present pages lose a mapcount,
    swap entries a swap count; markers survive unless drop_markers (ZAP_FLAG_DROP_MARKER, as
    munmap and exit pass). The RFC's PAGEOUT hint is dropped by any zap (best effort)."""
    zap_pmds(k, vma, lo, hi)
    ptes = vma.ptes[lo:hi]
    kinds = pte.kinds(ptes)
    vals = pte.values(ptes)
    unmap_frames(k, vals[kinds == pte.PRESENT])
    swap_free(k, vals[kinds == pte.SWAP])
    clear = kinds != pte.MARKER
    if drop_markers:
        clear[:] = True
    else:
        clear |= (kinds == pte.MARKER) & (vals == np.uint64(PTE_MARKER_PAGEOUT))
    # zap_install_uffd_wp_if_needed: in a file VMA a write-protected PTE leaves a uffd-wp
    # marker behind, so the protection survives the zap.
    keep_wp = (
        (vma.obj is not None) & (not drop_markers) & (kinds != pte.MARKER) & pte.uffd(ptes)
    )
    ptes[clear] = 0
    ptes[keep_wp] = np.uint64(pte.make(pte.MARKER, PTE_MARKER_UFFD_WP))
    free_empty_ptables(vma, lo, hi)


def get_unmapped_area(k: Kernel, task: Task, length: int, align: int = PAGE_SIZE) -> int:
    """arch_get_unmapped_area_topdown: the highest gap below mmap_base that fits (aligned:
    hugetlb_get_unmapped_area asks for huge-page alignment)."""
    top = k.mmap_base
    for vma in sorted(task.vmas, key=lambda v: -v.start):
        if vma.end <= (top - length) // align * align:
            break
        top = min(top, vma.start)
    return (top - length) // align * align


def do_mmap(
    k: Kernel,
    pid: int,
    length: int,
    prot: int,
    flags: int,
    obj: Inode | None = None,
    pgoff: int = 0,
    addr: int | None = None,
    name: str = "",
    maywrite: bool = True,
    align: int = PAGE_SIZE,
) -> int:
    """do_mmap: a new VMA; MAP_SHARED|MAP_ANONYMOUS gets its own shmem inode
    (shmem_zero_setup, "/dev/zero (deleted)"). Returns the address."""
    task = k.task(pid)
    length = page_align(length)
    if length <= 0:
        raise ModelError("EINVAL", "mmap of length 0")
    shared = bool(flags & MAP_SHARED)
    if not (flags & (MAP_SHARED | MAP_PRIVATE)):
        raise ModelError("EINVAL", "mmap needs MAP_SHARED or MAP_PRIVATE")
    if flags & MAP_ANONYMOUS:
        if obj is not None:
            raise ModelError("EINVAL", "MAP_ANONYMOUS with a file")
        if shared:
            obj = k.new_inode("shmem-anon", length)
            pgoff = 0
    elif obj is None:
        raise ModelError("EBADF", "mmap of a file needs an fd")
    if addr is None:
        addr = get_unmapped_area(k, task, length, align)
    elif addr & (PAGE_SIZE - 1):
        raise ModelError("EINVAL", f"address {addr:#x} is not page aligned")
    else:
        do_munmap(k, pid, addr, length)  # MAP_FIXED replaces what was there
    vma = Vma(
        start=addr,
        end=addr + length,
        prot=prot,
        shared=shared,
        obj=obj,
        pgoff=pgoff,
        ptes=np.zeros(length >> PAGE_SHIFT, dtype=np.uint64),
        name=name,
        maywrite=maywrite,
    )
    if obj is not None:
        obj.refs += 1
    task.insert_vma(vma)
    return addr


def split_vma(task: Task, vma: Vma, addr: int) -> Vma:
    """__split_vma: cut vma at addr; returns the upper part (already in the task's list)."""
    cut = vma.index(addr)
    upper = replace(vma, start=addr, pgoff=vma.pgoff + cut, ptes=vma.ptes[cut:].copy())
    vma.ptes = vma.ptes[:cut].copy()
    vma.end = addr
    split_vma_pmds(vma, upper)
    if vma.obj is not None:
        vma.obj.refs += 1
    task.insert_vma(upper)
    return upper


def can_vma_merge(prev: Vma, nxt: Vma) -> bool:
    """is_mergeable_vma + is_mergeable_anon_vma (mm/vma.c): adjacent, the same flags, file
    and name, contiguous pgoff. The model keeps no anon_vma identity: pieces of one VMA share
    theirs, and a VMA without one merges with any (as a NULL anon_vma does)."""
    return (prev.end == nxt.start and prev.prot == nxt.prot and prev.shared == nxt.shared
            and prev.obj is nxt.obj and prev.pgoff + prev.npages == nxt.pgoff
            and prev.uffd_wp == nxt.uffd_wp and prev.name == nxt.name
            and prev.dontcopy == nxt.dontcopy and prev.wipeonfork == nxt.wipeonfork
            and prev.maywrite == nxt.maywrite and prev.hugepage == nxt.hugepage
            and prev.nohugepage == nxt.nohugepage)


def vma_merge_range(k: Kernel, task: Task, start: int, end: int) -> None:
    """vma_modify's merge: the VMAs touching [start, end) merge with their neighbours where
    can_vma_merge allows (mprotect or madvise putting back what a split took apart)."""
    i = 0
    while i + 1 < len(task.vmas):
        a, b = task.vmas[i], task.vmas[i + 1]
        if start <= a.end <= end and can_vma_merge(a, b):
            a.ptes = np.concatenate([a.ptes, b.ptes])
            a.end = b.end
            a.anon_vma = a.anon_vma or b.anon_vma
            a.huge = {**a.huge, **b.huge}
            a.ptables = a.ptables | b.ptables
            del task.vmas[i + 1]
            release_vma(k, b)
            continue
        i += 1


def do_mprotect(k: Kernel, pid: int, start: int, length: int, prot: int) -> None:
    """mprotect_fixup over [start, start+length): VMAs split to the range, vm_flags set, then
    change_protection: taking PROT_WRITE away write-protects the present PTEs (giving it
    leaves them read-only: the next write fault upgrades them); PROT_NONE PTEs stay present
    (pte_present is true for a protnone PTE: pagemap and mincore still see the page). A
    split VMA bounds fault-around (do_fault_around clips to the VMA)."""
    task = k.task(pid)
    if start & (PAGE_SIZE - 1):
        raise ModelError("EINVAL", f"mprotect address {start:#x} is not page aligned")
    end = start + page_align(length)
    for vma, _, _ in vma_range(task, start, end):  # ENOMEM on a gap, before any change
        if vma.obj is not None and vma.obj.kind == "hugetlb" and (start | end) % (2 << 20):
            raise ModelError("EINVAL", f"mprotect of a hugetlb VMA at {start:#x}: not 2 MiB "
                             "aligned")
        if prot & PROT_WRITE and vma.shared and not vma.maywrite:
            raise ModelError("EACCES", f"mprotect(PROT_WRITE) of {vma.start:#x}: no VM_MAYWRITE")
    for vma in isolate_range(task, start, end):
        if not prot & PROT_WRITE:
            present = pte.kinds(vma.ptes) == pte.PRESENT
            vma.ptes[present] &= ~np.uint64(pte.WRITE)
        vma.prot = prot
    vma_merge_range(k, task, start, end)


def isolate_range(task: Task, start: int, end: int) -> list[Vma]:
    """Split VMAs so [start, end) is covered by whole VMAs; return those."""
    for vma in task.vmas_in(start, end):
        if vma.start < start:
            split_vma(task, vma, start)
    for vma in task.vmas_in(start, end):
        if vma.end > end:
            split_vma(task, vma, end)
    return task.vmas_in(start, end)


def release_vma(k: Kernel, vma: Vma) -> None:
    """remove_vma: drop the file reference; an unreferenced shmem inode is evicted."""
    if vma.obj is not None:
        put_inode(k, vma.obj)


def put_inode(k: Kernel, obj: Inode) -> None:
    """iput: the last reference gone, shmem_evict_inode frees pages and swap."""
    obj.refs -= 1
    if obj.refs <= 0 and (obj.is_shmem or obj.kind == "hugetlb"):
        from dumper.model.shmem import shmem_truncate_range

        shmem_truncate_range(k, obj, 0, len(obj.cache))
        if obj in k.inodes:
            k.inodes.remove(obj)


def do_munmap(k: Kernel, pid: int, start: int, length: int) -> None:
    """do_vmi_munmap: remove [start, start+length); PTEs and markers are dropped
    (unmap_vmas with ZAP_FLAG_DROP_MARKER|ZAP_FLAG_UNMAP)."""
    task = k.task(pid)
    if start & (PAGE_SIZE - 1):
        raise ModelError("EINVAL", f"munmap address {start:#x} is not page aligned")
    end = start + page_align(length)
    for vma in task.vmas_in(start, end):  # hugetlb_split: only whole huge pages
        if vma.obj is not None and vma.obj.kind == "hugetlb" and (start | end) % (2 << 20):
            raise ModelError("EINVAL", f"munmap of {start:#x}-{end:#x}: a hugetlb VMA is "
                             "unmapped in whole 2 MiB pages")
    for vma in isolate_range(task, start, end):
        zap_pte_range(k, vma, 0, vma.npages, drop_markers=True)
        task.vmas.remove(vma)
        release_vma(k, vma)


def do_mremap(k: Kernel, pid: int, old: int, old_len: int, new_addr: int | None = None,
              new_len: int | None = None, may_move: bool = True) -> int:
    """mremap. Same length: move_vma with move_page_tables (MREMAP_MAYMOVE|MREMAP_FIXED),
    which carries every PTE (swap entries and markers included) to the new address. Shorter:
    the tail is unmapped in place (do_vmi_munmap). Longer (one VMA, vma_to_resize, else
    EFAULT): vma_expand in place when the range
    ends its VMA and the pages after it are free, else (MREMAP_MAYMOVE) move_vma to a new
    area of the new length; the new pages are none (a shmem object does not grow: a page
    past its size is SIGBUS). Returns the address."""
    task = k.task(pid)
    old_len = page_align(old_len)
    new_len = old_len if new_len is None else page_align(new_len)
    if new_len <= 0:
        raise ModelError("EINVAL", "mremap to length 0")
    if new_len != old_len:
        vma = task.find_vma(old)
        if vma is None:
            raise ModelError("EFAULT", f"mremap of {old:#x}: not mapped")
        if vma.obj is not None and vma.obj.kind == "hugetlb":
            raise ModelError("EINVAL", "the model resizes no hugetlb mapping")
        if new_len < old_len:  # always allowed, across VMAs: the tail is unmapped
            do_munmap(k, pid, old + new_len, old_len - new_len)
            return old
        if old + old_len > vma.end:  # vma_to_resize: a growing range is one VMA
            raise ModelError("EFAULT", f"mremap of {old:#x}+{old_len:#x}: not in one VMA")
        grow = new_len - old_len
        if old + old_len == vma.end and not task.vmas_in(vma.end, vma.end + grow):
            vma.ptes = np.concatenate([vma.ptes, np.zeros(grow >> PAGE_SHIFT, dtype=np.uint64)])
            vma.end += grow
            return old
        if not may_move:
            raise ModelError("ENOMEM", f"mremap of {old:#x}: no room to grow in place")
    vmas = isolate_range(task, old, old + old_len)
    if not vmas or vmas[0].start != old or sum(v.npages for v in vmas) << PAGE_SHIFT != old_len:
        raise ModelError("EFAULT", f"mremap of {old:#x}+{old_len:#x}: not one mapped range")
    if new_addr is None:
        new_addr = get_unmapped_area(k, task, new_len)
    else:
        do_munmap(k, pid, new_addr, new_len)
    for vma in vmas:
        task.vmas.remove(vma)
    for vma in vmas:
        delta, was = vma.start - old, vma.start
        vma.end = new_addr + delta + (vma.end - vma.start)
        vma.start = new_addr + delta
        move_pmds(vma, was)
        task.insert_vma(vma)
    if new_len > old_len:  # the moved VMA (one, as vma_to_resize checked) grows at its end
        last = vmas[-1]
        last.ptes = np.concatenate([last.ptes, np.zeros((new_len - old_len) >> PAGE_SHIFT,
                                                        dtype=np.uint64)])
        last.end += new_len - old_len
    return new_addr


def vma_range(task: Task, start: int, end: int) -> list[tuple[Vma, int, int]]:
    """The (vma, lo, hi) page-index slices covering [start, end); ENOMEM on a gap."""
    out = []
    addr = start
    for vma in task.vmas_in(start, end):
        if vma.start > addr:
            raise ModelError("ENOMEM", f"{addr:#x} is not mapped in pid {task.pid}")
        lo = vma.index(max(start, vma.start))
        hi = vma.index(min(end, vma.end))
        out.append((vma, lo, hi))
        addr = vma.end
    if addr < end:
        raise ModelError("ENOMEM", f"{addr:#x} is not mapped in pid {task.pid}")
    return out
