"""Shared objects: shmem/memfd/SysV/tmpfs inodes and regular files, through their fds.

Follows mm/shmem.c: shmem_get_folio's SGP modes decide whether a hole is allocated
(SGP_CACHE/SGP_WRITE: yes; SGP_READ: no; SGP_FALLOC: allocated but !uptodate), and
shmem_swapin_folio brings a swap value entry back into the page cache.
"""

from __future__ import annotations

import numpy as np

from dumper.kabi import PAGE_SHIFT, PAGE_SIZE
from dumper.model import pte
from dumper.model.mm import do_mmap, put_inode, swap_free, unmap_frames, zap_pte_range
from dumper.model.shmem_large import split_for_punch
from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_UPTODATE,
    PC_HOLE,
    PC_PAGE,
    PC_SHIFT,
    PC_SWAP,
    PC_VALUE,
    PFN_BASE,
    Inode,
    Kernel,
    ModelError,
)

U64 = np.uint64


def pc_kinds(cache: np.ndarray) -> np.ndarray:
    return (cache >> U64(PC_SHIFT)).astype(np.uint8)


def pc_values(cache: np.ndarray) -> np.ndarray:
    return cache & U64(PC_VALUE)


def pc_make(kind: int, vals: np.ndarray) -> np.ndarray:
    return np.asarray(vals, dtype=U64) | U64(kind << PC_SHIFT)


def object_cids(k: Kernel, obj: Inode, lo: int, hi: int) -> np.ndarray:
    """What a read of object pages [lo, hi) returns, without changing anything: a page's
    content (zeros if not uptodate), a swapped page's slot, a hole's zeros, a file's disk."""
    n = hi - lo
    out = np.zeros(n, dtype=U64)
    have = min(hi, len(obj.cache)) - lo
    if have <= 0:
        return out
    cache = obj.cache[lo : lo + have]
    kinds = pc_kinds(cache)
    vals = pc_values(cache)
    pages = kinds == PC_PAGE
    idx = vals[pages].astype(np.int64) - PFN_BASE
    uptodate = (k.frames.flags.a[idx] & F_UPTODATE) != 0
    out[:have][pages] = np.where(uptodate, k.frames.content.a[idx], U64(0))
    swapped = kinds == PC_SWAP
    out[:have][swapped] = k.swap.content.a[vals[swapped].astype(np.int64)]
    if obj.disk is not None:
        holes = kinds == PC_HOLE
        out[:have][holes] = obj.disk[lo : lo + have][holes]
    return out


def shmem_alloc_pages(k: Kernel, obj: Inode, idx: np.ndarray, cids: np.ndarray, uptodate: bool):
    """shmem_alloc_and_add_folio: new page-cache folios at these indices."""
    flags = F_UPTODATE if uptodate else 0
    pfns = k.frames.alloc(cids, flags)
    obj.cache[idx] = pc_make(PC_PAGE, pfns)
    return pfns


def shmem_swapin_folio(k: Kernel, obj: Inode, idx: np.ndarray) -> None:
    """shmem_swapin_folio: swap value entries at idx back into the page cache (from the swap
    cache if the folio is still there), freeing their slots (swap_free)."""
    if not len(idx):
        return
    slots = pc_values(obj.cache[idx]).astype(np.int64)
    cached = k.swap.cache.a[slots]
    pfns = np.zeros(len(idx), dtype=U64)
    hit = cached != 0
    pfns[hit] = cached[hit].astype(U64)
    k.frames.swapslot.a[cached[hit] - PFN_BASE] = 0
    k.swap.cache.a[slots[hit]] = 0
    if (~hit).any():
        pfns[~hit] = k.frames.alloc(k.swap.content.a[slots[~hit]], F_UPTODATE)
    # The slot is freed below, so the page cache holds the only copy: folio_mark_dirty.
    k.frames.flags.a[pfns.astype(np.int64) - PFN_BASE] |= np.uint8(F_DIRTY)
    obj.cache[idx] = pc_make(PC_PAGE, pfns)
    swap_free(k, slots.astype(U64))


def _settle_range(k: Kernel, obj: Inode, lo: int, hi: int) -> None:
    """Complete the migrations of page-cache folios in [lo, hi) (see migrate.settle)."""
    if not k.migrating:
        return
    from dumper.model.migrate import settle

    cache = obj.cache[lo:hi]
    settle(k, pc_values(cache[pc_kinds(cache) == PC_PAGE]))


def shmem_get_folio(k: Kernel, obj: Inode, lo: int, hi: int, sgp: str) -> np.ndarray:
    """shmem_get_folio over [lo, hi) with sgp in SGP_READ/SGP_CACHE/SGP_WRITE/SGP_FALLOC.
    Returns the PFN per index (0 where SGP_READ found a hole: the reader gets zeros)."""
    if hi > obj.npages and sgp in ("SGP_READ", "SGP_CACHE"):
        raise ModelError("SIGBUS", f"page {hi - 1} is past the end of {obj.link_name()}")
    obj.grow_cache(hi)
    _settle_range(k, obj, lo, hi)  # folio_lock waits for a migration to finish
    cache = obj.cache[lo:hi]
    kinds = pc_kinds(cache)
    swapped = np.nonzero(kinds == PC_SWAP)[0] + lo
    if sgp != "SGP_FALLOC":
        shmem_swapin_folio(k, obj, swapped)
    kinds = pc_kinds(obj.cache[lo:hi])
    holes = np.nonzero(kinds == PC_HOLE)[0] + lo
    if sgp in ("SGP_CACHE", "SGP_WRITE") and len(holes):
        if obj.disk is not None:  # a regular file: read the page from disk
            shmem_alloc_pages(k, obj, holes, obj.disk[holes], uptodate=True)
        else:
            shmem_alloc_pages(k, obj, holes, np.zeros(len(holes), dtype=U64), uptodate=True)
    elif sgp == "SGP_FALLOC" and len(holes):
        shmem_alloc_pages(k, obj, holes, np.zeros(len(holes), dtype=U64), uptodate=False)
    elif sgp == "SGP_READ" and obj.disk is not None and len(holes):
        shmem_alloc_pages(k, obj, holes, obj.disk[holes], uptodate=True)  # readahead
    cache = obj.cache[lo:hi]
    pages = pc_kinds(cache) == PC_PAGE
    pfns = np.where(pages, pc_values(cache), U64(0))
    if sgp in ("SGP_CACHE", "SGP_WRITE"):
        # A !uptodate (fallocated) folio is zeroed and marked uptodate when faulted or written.
        idx = pfns[pages].astype(np.int64) - PFN_BASE
        k.frames.flags.a[idx] |= F_UPTODATE
    return pfns


def shmem_write(k: Kernel, obj: Inode, lo: int, cids: np.ndarray) -> None:
    """write(2) through the fd (shmem_write_begin with SGP_WRITE); extends i_size."""
    hi = lo + len(cids)
    if hi > obj.npages:
        obj.size = max(obj.size, hi << PAGE_SHIFT)
    pfns = shmem_get_folio(k, obj, lo, hi, "SGP_WRITE")
    i = pfns.astype(np.int64) - PFN_BASE
    k.frames.content.a[i] = cids
    k.frames.flags.a[i] |= F_DIRTY


def shmem_file_read(k: Kernel, obj: Inode, lo: int, hi: int) -> np.ndarray:
    """read(2)/pread through the fd (shmem_file_read_iter, SGP_READ): holes read as zeros and
    stay holes; swapped pages are swapped into the page cache (kernel.md §6)."""
    hi = min(hi, obj.npages)
    if hi <= lo:
        return np.zeros(0, dtype=U64)
    shmem_get_folio(k, obj, lo, hi, "SGP_READ")
    return object_cids(k, obj, lo, hi)


def mappers(k: Kernel, obj: Inode):
    """The i_mmap interval tree: every (task, vma) mapping this inode."""
    for task in k.tasks.values():
        if task.alive:
            for vma in task.vmas:
                if vma.obj is obj:
                    yield task, vma


def unmap_mapping_range(k: Kernel, obj: Inode, lo: int, hi: int, even_cows: bool) -> None:
    """unmap_mapping_range: zap the PTEs of object pages [lo, hi) in every mapper. Private
    COW copies (anonymous pages) are kept unless even_cows (truncate passes 1, hole punch 0)."""
    for _, vma in mappers(k, obj):
        a = max(lo, vma.pgoff) - vma.pgoff
        b = min(hi, vma.pgoff + vma.npages) - vma.pgoff
        if a >= b:
            continue
        if even_cows or vma.shared:
            zap_pte_range(k, vma, a, b, drop_markers=False)
            continue
        ptes = vma.ptes[a:b]
        kinds = pte.kinds(ptes)
        vals = pte.values(ptes)
        present = kinds == pte.PRESENT
        file_page = np.zeros(len(ptes), dtype=bool)
        idx = vals[present].astype(np.int64) - PFN_BASE
        file_page[present] = (k.frames.flags.a[idx] & F_ANON) == 0
        unmap_frames(k, vals[file_page])
        ptes[file_page] = 0
        # zap_nonpresent_ptes: a migration entry of a file folio goes too (should_zap_folio).
        mig = kinds == pte.MIGRATION
        file_mig = np.zeros(len(ptes), dtype=bool)
        file_mig[mig] = (k.frames.flags.a[vals[mig].astype(np.int64) - PFN_BASE] & F_ANON) == 0
        ptes[file_mig] = 0


def shmem_truncate_range(k: Kernel, obj: Inode, lo: int, hi: int) -> None:
    """shmem_truncate_range: free page-cache pages and swap entries of [lo, hi) (holes after)."""
    hi = min(hi, len(obj.cache))
    if hi <= lo:
        return
    _settle_range(k, obj, lo, hi)  # shmem_undo_range locks each folio
    cache = obj.cache[lo:hi]
    kinds = pc_kinds(cache)
    vals = pc_values(cache)
    pages = vals[kinds == PC_PAGE]
    if len(pages):
        i = pages.astype(np.int64) - PFN_BASE
        still = k.frames.mapcount.a[i] > 0
        if still.any():  # a private mapping still maps it: the page lives on, uncached
            k.frames.flags.a[i[still]] |= F_ANON
        k.frames.free(pages[~still])
    swap_free(k, vals[kinds == PC_SWAP])
    obj.cache[lo:hi] = 0
    if obj.disk is not None:
        obj.disk[lo:hi] = 0


def shmem_fallocate(k: Kernel, obj: Inode, offset: int, length: int, punch: bool,
                    keep_size: bool = False) -> None:
    """shmem_fallocate: PUNCH_HOLE zaps every mapper (unmap_mapping_range, even_cows=0) and
    frees pages and swap; otherwise allocates !uptodate folios that lseek reports as holes."""
    if offset % PAGE_SIZE or length % PAGE_SIZE:
        raise ModelError("EINVAL", "the model fallocates whole pages only")
    lo, hi = offset >> PAGE_SHIFT, (offset + length) >> PAGE_SHIFT
    if punch:
        a, b = split_for_punch(k, obj, lo, hi)  # a large folio cut through: split
        unmap_mapping_range(k, obj, a, b, even_cows=False)
        shmem_truncate_range(k, obj, lo, hi)
        return
    if not keep_size and offset + length > obj.size:
        obj.size = offset + length
    shmem_get_folio(k, obj, lo, hi, "SGP_FALLOC")


def shmem_setattr_size(k: Kernel, obj: Inode, size: int) -> None:
    """ftruncate: shrinking zaps every mapper beyond the new end (even COW copies) and
    truncates; growing adds holes."""
    newpages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    if size < obj.size:
        a, _ = split_for_punch(k, obj, newpages, len(obj.cache))
        unmap_mapping_range(k, obj, a, newpages, even_cows=False)
        unmap_mapping_range(k, obj, newpages, len(obj.cache), even_cows=True)
        shmem_truncate_range(k, obj, newpages, len(obj.cache))
    obj.size = size
    obj.grow_cache(newpages)


def install_fd(k: Kernel, pid: int, obj: Inode) -> int:
    """fd_install: the lowest free fd of pid, from 3."""
    task = k.task(pid)
    fd = 3
    while fd in task.fds:
        fd += 1
    task.fds[fd] = obj
    obj.refs += 1
    return fd


def fd_inode(k: Kernel, pid: int, fd: int) -> Inode:
    obj = k.task(pid).fds.get(fd)
    if obj is None:
        raise ModelError("EBADF", f"pid {pid} has no fd {fd}")
    return obj


def memfd_create(k: Kernel, pid: int, name: str, size: int = 0) -> int:
    """memfd_create: a shmem inode named "memfd:NAME" on shm_mnt; returns the fd."""
    obj = k.new_inode("memfd", size, name=name)
    return install_fd(k, pid, obj)


def tmpfs_create(k: Kernel, pid: int, path: str, size: int = 0, owner_uid: int = 0,
                 mode: int = 0o644) -> int:
    """open(O_CREAT) of a file on a tmpfs mount (dev 00:2a here); returns the fd."""
    obj = k.new_inode("tmpfs", size, name=path, dev=(0, 0x2A))
    obj.owner_uid, obj.mode = owner_uid, mode
    return install_fd(k, pid, obj)


def file_create(k: Kernel, pid: int, path: str, npages: int) -> int:
    """open() of a regular file of npages pages with fresh contents on disk (ext4, fe:00)."""
    obj = k.new_inode("file", npages << PAGE_SHIFT, name=path, dev=(0xFE, 0))
    obj.disk[:] = k.contents.fresh_seeds(npages)
    return install_fd(k, pid, obj)


def shmget(k: Kernel, key: int, size: int) -> Inode:
    """shmget(IPC_CREAT): a SysV segment, a shmem inode named SYSV<key>."""
    obj = k.new_inode("sysv", size)
    obj.sysv_key = key
    obj.sysv_id = k.next_sysv_id
    k.next_sysv_id += 1
    obj.refs += 1  # the IPC id holds it until IPC_RMID
    return obj


def shmat(k: Kernel, pid: int, obj: Inode, prot: int, addr: int | None = None) -> int:
    """do_shmat: a MAP_SHARED mapping of the segment's shmem file (at addr if given); a
    read-only attach (SHM_RDONLY) opens it O_RDONLY, so the VMA has no VM_MAYWRITE."""
    from dumper.kabi import MAP_SHARED, PROT_WRITE

    return do_mmap(k, pid, obj.npages << PAGE_SHIFT, prot, MAP_SHARED, obj=obj, addr=addr,
                   maywrite=bool(prot & PROT_WRITE))


def shm_rmid(k: Kernel, obj: Inode) -> None:
    """shmctl(IPC_RMID): the id goes; the segment lives while attached."""
    if obj.sysv_id >= 0:
        obj.sysv_id = -1
        put_inode(k, obj)


def close_fd(k: Kernel, pid: int, fd: int) -> None:
    """close(2): drop the file reference."""
    obj = fd_inode(k, pid, fd)
    del k.task(pid).fds[fd]
    put_inode(k, obj)


def send_fd(k: Kernel, from_pid: int, fd: int, to_pid: int) -> int:
    """SCM_RIGHTS: the receiver gets its own fd on the same open file."""
    return install_fd(k, to_pid, fd_inode(k, from_pid, fd))
