"""The executable model of Linux memory management for process trees.

``Model`` is the system-call-level face of one modelled machine: each method is what a
process (or the system) can do, and delegates to the function named after the kernel code it
mimics (mm.do_mmap, task.do_fork, fault.handle_mm_fault, vmscan.shrink_folio_list, ...).
Addresses and lengths are in bytes, page aligned.
"""

from __future__ import annotations

import numpy as np

from dumper.kabi import (
    MADV_COLD,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_NOHUGEPAGE,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_REMOVE,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from dumper.model import fault, madvise, migrate, mm, observe, shmem, task, vmscan
from dumper.model.hugetlb import hugetlb_reserve_pages
from dumper.model.kernels import DEFAULT_PROFILE, PROFILES, Profile, load_profile
from dumper.model.state import Inode, Kernel, ModelError

__all__ = ["Model", "ModelError", "Profile", "PROFILES", "load_profile", "Kernel"]

RW = PROT_READ | PROT_WRITE
HPAGE_SIZE = 2 << 20
VMA_FLAG_ADVICE = {MADV_DONTFORK: "dontfork", MADV_DOFORK: "dofork",
                   MADV_WIPEONFORK: "wipeonfork", MADV_KEEPONFORK: "keeponfork",
                   MADV_HUGEPAGE: "hugepage", MADV_NOHUGEPAGE: "nohugepage"}


class Model:
    """One modelled machine: a kernel profile, its tasks, objects, frames and swap."""

    def __init__(self, profile: Profile | str = DEFAULT_PROFILE, swap: bool = True,
                 swap_sync: bool = True, thp: str = "madvise", hugepages: int = 0,
                 shmem_folio_pages: int = 1) -> None:
        """thp: the system's transparent_hugepage/enabled (always, madvise, never);
        hugepages: vm.nr_hugepages, the hugetlb pool of 2 MiB pages; shmem_folio_pages:
        the large shmem folio shmem_enabled allows (16 for hugepages-64kB=always)."""
        if isinstance(profile, str):
            profile = load_profile(profile)
        if thp not in ("always", "madvise", "never"):
            raise ValueError(f"thp={thp!r}: always, madvise or never")
        self.k = Kernel(profile=profile, thp=thp, hugetlb_pool=hugepages,
                        shmem_folio_pages=shmem_folio_pages)
        self.k.swap.enabled = swap
        self.k.swap.sync = swap_sync

    @property
    def profile(self) -> Profile:
        return self.k.profile

    # -- tasks ------------------------------------------------------------------------------
    def spawn(self, comm: str = "init", uid: int = 0, pid: int | None = None) -> int:
        return task.spawn(self.k, comm, uid=uid, pid=pid)

    def fork(self, pid: int, comm: str | None = None, child_pid: int | None = None) -> int:
        return task.do_fork(self.k, pid, comm, child_pid)

    def exit(self, pid: int) -> None:
        task.do_exit(self.k, pid)

    # -- address space ----------------------------------------------------------------------
    def mmap(self, pid: int, length: int, prot: int = RW, shared: bool = False,
             fd: int | None = None, offset: int = 0, addr: int | None = None,
             hugetlb: bool = False) -> int:
        """mmap(2): anonymous unless fd is given; hugetlb: MAP_HUGETLB (anonymous, 2 MiB
        pages from the pool: a hugetlbfs file behind it, length rounded up, mmap's
        reservation check)."""
        flags = MAP_SHARED if shared else MAP_PRIVATE
        obj = None
        if hugetlb:
            if fd is not None or (addr or 0) % HPAGE_SIZE:
                raise ModelError("EINVAL", "MAP_HUGETLB: anonymous, at a 2 MiB boundary")
            length = -(-length // HPAGE_SIZE) * HPAGE_SIZE
            hugetlb_reserve_pages(self.k, length >> PAGE_SHIFT)
            obj = self.k.new_inode("hugetlb", length, name="/anon_hugepage (deleted)",
                                   dev=(0, 0x11))
            return mm.do_mmap(self.k, pid, length, prot, flags, obj=obj, addr=addr,
                              align=HPAGE_SIZE)
        if fd is None:
            flags |= MAP_ANONYMOUS
        else:
            obj = shmem.fd_inode(self.k, pid, fd)
        return mm.do_mmap(self.k, pid, length, prot, flags, obj=obj, pgoff=offset >> PAGE_SHIFT,
                          addr=addr)

    def munmap(self, pid: int, addr: int, length: int) -> None:
        mm.do_munmap(self.k, pid, addr, length)

    def mremap(self, pid: int, addr: int, length: int, new_addr: int | None = None,
               new_length: int | None = None, may_move: bool = True) -> int:
        """mremap(2): a move (same length), or a shrink / grow (MREMAP_MAYMOVE if may_move)."""
        return mm.do_mremap(self.k, pid, addr, length, new_addr, new_length, may_move)

    def mprotect(self, pid: int, addr: int, length: int, prot: int) -> None:
        mm.do_mprotect(self.k, pid, addr, length, prot)

    def write(self, pid: int, addr: int, length: int, data: bytes | None = None) -> None:
        """A task writes whole pages: fresh contents, or the given bytes (a multiple of 4096)."""
        cids = None if data is None else self.k.contents.intern_pages(data)
        fault.access(self.k, pid, addr, length, write=True, cids=cids)

    def read(self, pid: int, addr: int, length: int) -> bytes:
        """A task reads pages (faulting them in as the kernel would); returns the bytes."""
        fault.access(self.k, pid, addr, length, write=False)
        return self.peek(pid, addr, length)

    def peek(self, pid: int, addr: int, length: int) -> bytes:
        """The bytes a read would return, without faulting anything (ground truth)."""
        cids = self.observable_cids(pid, addr, length)
        return self.k.contents.pages_bytes(cids)

    def observable_cids(self, pid: int, addr: int, length: int) -> np.ndarray:
        parts = []
        for vma, lo, hi in mm.vma_range(self.k.task(pid), addr, addr + length):
            parts.append(observe.observable_vma(self.k, vma, lo, hi))
        return np.concatenate(parts)

    def madvise(self, pid: int, addr: int, length: int, advice: int) -> None:
        k = self.k
        if advice == MADV_DONTNEED:
            madvise.madvise_dontneed(k, pid, addr, length)
        elif advice == MADV_PAGEOUT:
            madvise.madvise_pageout(k, pid, addr, length)
        elif advice == MADV_REMOVE:
            madvise.madvise_remove(k, pid, addr, length)
        elif advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
            madvise.madvise_populate(k, pid, addr, length, write=advice == MADV_POPULATE_WRITE)
        elif advice == MADV_GUARD_INSTALL:
            madvise.madvise_guard_install(k, pid, addr, length)
        elif advice == MADV_GUARD_REMOVE:
            madvise.madvise_guard_remove(k, pid, addr, length)
        elif advice == MADV_FREE:
            madvise.madvise_free(k, pid, addr, length)
        elif advice == MADV_COLD:
            madvise.madvise_cold(k, pid, addr, length)
        elif advice in VMA_FLAG_ADVICE:
            madvise.madvise_update_vma(k, pid, addr, length, VMA_FLAG_ADVICE[advice])
        else:
            raise ModelError("EINVAL", f"madvise advice {advice} is not modelled")

    def zap(self, pid: int, addr: int, length: int) -> None:
        """Zap one task's PTEs over a range, as a THP split of a shmem PMD does."""
        madvise.split_huge_pmd(self.k, pid, addr, length)

    def uffd_writeprotect(self, pid: int, addr: int, length: int) -> None:
        madvise.uffd_writeprotect(self.k, pid, addr, length)

    def uffd_poison(self, pid: int, addr: int, length: int) -> None:
        madvise.uffd_poison(self.k, pid, addr, length)

    # -- files and shared objects ----------------------------------------------------------
    def memfd_create(self, pid: int, name: str, size: int = 0) -> int:
        return shmem.memfd_create(self.k, pid, name, size)

    def tmpfs_create(self, pid: int, path: str, size: int = 0, uid: int = 0,
                     mode: int = 0o644) -> int:
        return shmem.tmpfs_create(self.k, pid, path, size, owner_uid=uid, mode=mode)

    def file_create(self, pid: int, path: str, npages: int) -> int:
        return shmem.file_create(self.k, pid, path, npages)

    def shmget(self, key: int, size: int) -> Inode:
        return shmem.shmget(self.k, key, size)

    def shmat(self, pid: int, seg: Inode, prot: int = RW, addr: int | None = None) -> int:
        return shmem.shmat(self.k, pid, seg, prot, addr)

    def shm_rmid(self, seg: Inode) -> None:
        shmem.shm_rmid(self.k, seg)

    def ftruncate(self, pid: int, fd: int, size: int) -> None:
        shmem.shmem_setattr_size(self.k, shmem.fd_inode(self.k, pid, fd), size)

    def fallocate(self, pid: int, fd: int, offset: int, length: int, punch: bool = False) -> None:
        shmem.shmem_fallocate(self.k, shmem.fd_inode(self.k, pid, fd), offset, length, punch,
                              keep_size=punch)

    def pwrite(self, pid: int, fd: int, offset: int, length: int, data: bytes | None = None):
        """write(2) through an fd: whole pages, fresh contents or the given bytes."""
        npages = length >> PAGE_SHIFT
        cids = (self.k.contents.fresh_seeds(npages) if data is None
                else self.k.contents.intern_pages(data))
        shmem.shmem_write(self.k, shmem.fd_inode(self.k, pid, fd), offset >> PAGE_SHIFT, cids)

    def pread(self, pid: int, fd: int, offset: int, length: int) -> bytes:
        obj = shmem.fd_inode(self.k, pid, fd)
        lo = offset >> PAGE_SHIFT
        cids = shmem.shmem_file_read(self.k, obj, lo, lo + (length >> PAGE_SHIFT))
        return self.k.contents.pages_bytes(cids)

    def open_map_files(self, pid: int, target: int, addr: int) -> int:
        """open(/proc/TARGET/map_files/...) by pid: an fd on the object mapped at addr."""
        return shmem.install_fd(self.k, pid, self.object_at(target, addr))

    def send_fd(self, from_pid: int, fd: int, to_pid: int) -> int:
        return shmem.send_fd(self.k, from_pid, fd, to_pid)

    def close(self, pid: int, fd: int) -> None:
        shmem.close_fd(self.k, pid, fd)

    # -- the system -------------------------------------------------------------------------
    def reclaim(self, pid: int, addr: int, length: int, free: bool | None = None) -> None:
        """kswapd reclaims the pages behind [addr, addr+length) of pid (through the rmap)."""
        vmscan.reclaim(self.k, pid, addr, addr + length, free)

    def swapcache_drop(self) -> int:
        return vmscan.swapcache_drop_all(self.k)

    def migrate(self, pid: int, addr: int, length: int, finish: bool = True) -> None:
        """NUMA-migrate the pages pid maps at [addr, addr+length)."""
        pfns = vmscan.reclaim_range_pages(self.k, pid, addr, addr + length)
        migrate.migrate_pages(self.k, pfns, finish)

    def migrate_finish(self) -> None:
        migrate.migrate_finish(self.k)

    # -- observation --------------------------------------------------------------------
    def pagemap(self, pid: int, addr: int, length: int, show_pfn: bool = True) -> np.ndarray:
        raw = observe.pagemap_read(self.k, pid, addr, addr + length, show_pfn)
        return np.frombuffer(raw, dtype="<u8")

    def mincore(self, pid: int, addr: int, length: int) -> bytes:
        return observe.mincore(self.k, pid, addr, addr + length)

    def lseek(self, pid: int, fd: int, offset: int, whence: int) -> int:
        return observe.shmem_file_llseek(self.k, shmem.fd_inode(self.k, pid, fd), offset, whence)

    def object_at(self, pid: int, addr: int) -> Inode:
        vma = self.k.task(pid).find_vma(addr)
        if vma is None or vma.obj is None:
            raise ModelError("ENOENT", f"no object mapped at {addr:#x} in pid {pid}")
        return vma.obj

    def maps(self, pid: int) -> str:
        return observe.show_maps(self.k, pid)

    def smaps(self, pid: int) -> list[observe.SmapsEntry]:
        return observe.smaps(self.k, pid)


PAGE = PAGE_SIZE
