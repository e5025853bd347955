"""ModelHost: the Host protocol answered by the model, in the kernel's own encodings."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from dumper.host import ObjectStat, TaskInfo
from dumper.images.records import Vma
from dumper.kabi import (
    PAGE_IS_FILE,
    PAGE_IS_GUARD,
    PAGE_IS_PFNZERO,
    PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
    PAGE_IS_WRITTEN,
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_FILE,
    PM_GUARD_REGION,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SWAP,
    PM_UFFD_WP,
    PROT_READ,
    PROT_WRITE,
)
from dumper.model import Model, observe
from dumper.model.content import UNREADABLE, ZERO
from dumper.model.hugetlb import HPAGE
from dumper.model.shmem import shmem_file_read
from dumper.model.state import ZERO_PFN, Inode, ModelError
from dumper.state import TaskState


class ModelObject:
    """An open map_files entry on the model: lseek and pread on the object."""

    def __init__(self, model: Model, obj: Inode) -> None:
        self.model = model
        self.obj = obj
        self.obj.refs += 1
        self.closed = False

    def stat(self) -> ObjectStat:
        dev = (self.obj.dev[0] << 8) | self.obj.dev[1]
        # hugetlbfs_getattr: st_blksize is the huge page size (2 MiB: the model's only one)
        huge = HPAGE * PAGE_SIZE if self.obj.kind == "hugetlb" else 0
        return ObjectStat(dev=dev, ino=self.obj.ino, size=self.obj.size,
                          shmem=self.obj.is_shmem, huge_page_size=huge)

    def lseek(self, offset: int, whence: int) -> int:
        try:
            return observe.shmem_file_llseek(self.model.k, self.obj, offset, whence)
        except ModelError as e:
            raise _oserror(e) from None

    def pread(self, offset: int, length: int) -> bytes:
        """shmem_file_read_iter: holes read as zeros; swapped pages are swapped in."""
        lo = offset >> PAGE_SHIFT
        cids = shmem_file_read(self.model.k, self.obj, lo, lo + (length >> PAGE_SHIFT))
        return self.model.k.contents.pages_bytes(cids)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            from dumper.model.mm import put_inode

            put_inode(self.model.k, self.obj)


def cid_digest(cids: np.ndarray) -> np.ndarray:
    """splitmix64 of content ids: a well-spread u64 per page, cheap for 16 Mi pages."""
    z = np.asarray(cids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_ZERO_DIGEST = cid_digest(np.zeros(1, dtype=np.uint64))[0]


def truth_digest(cids: np.ndarray) -> np.ndarray:
    """cid_digest, with the pages never written (cid 0, most of a big mapping) filled with
    zero's digest instead of mixed one by one."""
    nz = np.flatnonzero(cids)
    if len(nz) == len(cids):
        return cid_digest(cids)
    out = np.full(len(cids), _ZERO_DIGEST, dtype=np.uint64)
    out[nz] = cid_digest(cids[nz])
    return out


def _oserror(e: ModelError) -> OSError:
    return OSError(getattr(errno, e.errno_name, errno.EIO), str(e))


class ModelHost:
    """The model seen through /proc: what the dump pipeline may ask of it, and (below,
    ModelRestoreMixin) what a restorer does to it."""

    kind = "model"

    def __init__(self, model: Model, privileged: bool = True) -> None:
        self.model = model
        self.privileged = privileged

    @property
    def k(self):
        return self.model.k

    def tasks(self, root: int) -> list[TaskInfo]:
        """The tree under root, parents before children, siblings in pid (fork) order."""
        self.k.task(root)
        out = []
        todo = [root]
        while todo:
            pid = todo.pop(0)
            t = self.k.tasks[pid]
            out.append(TaskInfo(pid=pid, ppid=t.ppid if pid != root else 0, comm=t.comm,
                                pgid=root, sid=root))
            todo.extend(sorted(p for p, c in self.k.tasks.items() if c.ppid == pid))
        return out

    def maps(self, pid: int) -> str:
        return observe.show_maps(self.k, pid)

    def pagemap(self, pid: int, start: int, end: int) -> bytes:
        return observe.pagemap_read(self.k, pid, start, end, show_pfn=self.privileged)

    def pagemap_scan(self, pid: int, start: int, end: int, anyof: int,
                     return_mask: int) -> list[tuple[int, int, int]] | None:
        """PAGEMAP_SCAN (do_pagemap_scan) where the profile has it: runs of pages whose
        categories & return_mask are equal, keeping those matching anyof."""
        if not self.k.profile.pagemap_scan:
            return None
        words = np.frombuffer(observe.pagemap_read(self.k, pid, start, end, True), "<u8")
        cats = np.full(len(words), PAGE_IS_WRITTEN, dtype=np.uint64)
        present = (words & np.uint64(PM_PRESENT)) != 0
        swapped = (words & np.uint64(PM_SWAP)) != 0
        cats |= np.where(present, np.uint64(PAGE_IS_PRESENT), np.uint64(0))
        cats |= np.where(swapped, np.uint64(PAGE_IS_SWAPPED), np.uint64(0))
        cats |= np.where((words & np.uint64(PM_FILE)) != 0, np.uint64(PAGE_IS_FILE), np.uint64(0))
        zero = present & ((words & np.uint64(PM_PFRAME_MASK)) == np.uint64(ZERO_PFN))
        cats |= np.where(zero, np.uint64(PAGE_IS_PFNZERO), np.uint64(0))
        guard = (words & np.uint64(PM_GUARD_REGION)) != 0
        cats |= np.where(guard, np.uint64(PAGE_IS_GUARD), np.uint64(0))
        wp = (words & np.uint64(PM_UFFD_WP)) != 0
        cats &= np.where(wp, ~np.uint64(PAGE_IS_WRITTEN), ~np.uint64(0))
        # Pages outside any VMA are not walked at all.
        inside = np.zeros(len(words), dtype=bool)
        for vma in self.k.task(pid).vmas_in(start, end):
            a = (max(start, vma.start) - start) >> PAGE_SHIFT
            b = (min(end, vma.end) - start) >> PAGE_SHIFT
            inside[a:b] = True
        keep = inside & (((cats & np.uint64(anyof)) != 0) if anyof else True)
        shown = cats & np.uint64(return_mask)
        idx = np.nonzero(keep)[0]
        if not len(idx):
            return []
        c = shown[idx]
        brk = np.nonzero((np.diff(idx) != 1) | (np.diff(c) != 0))[0] + 1
        firsts = np.concatenate([[0], brk])
        lasts = np.concatenate([brk, [len(idx)]]) - 1
        return [
            (start + int(idx[a]) * PAGE_SIZE, start + (int(idx[b]) + 1) * PAGE_SIZE, int(c[a]))
            for a, b in zip(firsts, lasts, strict=True)
        ]

    def open_object(self, pid: int, start: int, end: int) -> ModelObject:
        for vma in self.k.task(pid).vmas:
            if vma.start == start and vma.end == end:
                if vma.obj is None:
                    raise OSError(2, f"/proc/{pid}/map_files/{start:x}-{end:x}: no file")
                return ModelObject(self.model, vma.obj)
        raise OSError(2, f"/proc/{pid}/map_files/{start:x}-{end:x}: no such mapping")

    def mincore(self, pid: int, start: int, end: int) -> bytes:
        return observe.mincore(self.k, pid, start, end)

    def read_memory(self, pid: int, start: int, end: int) -> bytes:
        """The bytes of [start, end) as the task would read them, without faulting anything
        in; zeros over guard and poison markers, which hold no data — as LinuxHost reads only
        the pages pagemap says hold data through /proc/PID/mem."""
        cids = self.model.observable_cids(pid, start, end - start)
        cids = np.where(cids == np.uint64(UNREADABLE), np.uint64(ZERO), cids)
        return self.k.contents.pages_bytes(cids)

    truth_algo = "model-cid-64"

    def truth(self, pid: int) -> Iterator[tuple[int, np.ndarray]]:
        """observable_memory digested: a 64-bit mix of each page's content id (content ids
        are canonical, so equal digests mean equal bytes). Streamed in windows of each VMA
        (observe.observable_runs), so no task's whole truth is held at once."""
        for start, cids in observe.observable_runs(self.k, pid):
            yield start, truth_digest(cids)

    def zero_pfn(self) -> int | None:
        return ZERO_PFN if self.privileged else None

    @contextmanager
    def freeze(self, pids: list[int]) -> Iterator[None]:
        """The model only moves when told to: a frozen tree is the model between operations."""
        for pid in pids:
            self.k.task(pid)
        yield

    def task_states(self, tasks: list[TaskInfo], leave_out: frozenset[str] = frozenset()
                    ) -> tuple[list[TaskState], dict[str, int]]:
        """The model has memory only: one thread per task, no registers, no files (the
        images stay as a memory dump writes them)."""
        del leave_out
        return [TaskState.minimal(t.pid, t.comm) for t in tasks], {}

    def kernel_areas(self, pid: int) -> list[tuple[int, int]]:
        """The model's tasks register no rseq areas (kernel/rseq.c is not modelled)."""
        self.k.task(pid)
        return []

    @contextmanager
    def freeze_tree(self, root: int) -> Iterator[list[TaskInfo]]:
        """The tree under root, frozen as found: the model between operations."""
        yield self.tasks(root)

    def show_pfn(self) -> bool:
        return self.privileged


class ModelNewObject:
    """A shared object a restorer re-creates: written through its fd, holes left alone."""

    def __init__(self, model: Model, obj: Inode) -> None:
        self.model = model
        self.obj = obj

    def write(self, offset: int, data: bytes) -> None:
        from dumper.model.shmem import shmem_write

        cids = self.model.k.contents.intern_pages(data)
        shmem_write(self.model.k, self.obj, offset >> PAGE_SHIFT, cids)
        # The object was created at its size; a whole last page written past an i_size that
        # is no page multiple (a 56-byte SysV segment) does not grow it.
        if offset + len(data) > -(-self.obj.size // PAGE_SIZE) * PAGE_SIZE:
            self.obj.size = offset + len(data)


class ModelRestoreMixin:
    """What a restorer needs of the model: tasks with chosen pids in fork order, objects,
    mappings and bytes — each a system call a restorer would make."""

    model: Model

    def create_task(self, pid: int, ppid: int, comm: str) -> None:
        """clone3 with set_tid: a child of an already restored parent inherits its mm."""
        if ppid and ppid in self.model.k.tasks:
            self.model.fork(ppid, comm, child_pid=pid)
        else:
            self.model.spawn(comm, pid=pid)

    def create_object(self, kind: str, size: int, name: str = "", key: int = 0,
                      seals: int = 0, page_size: int = PAGE_SIZE) -> ModelNewObject:
        """memfd_create / shmget / open(O_CREAT) on tmpfs / a MAP_SHARED|MAP_ANONYMOUS inode
        (the model keeps no seals and no huge pages)."""
        from dumper.model.shmem import shmget

        del seals, page_size

        k = self.model.k
        if kind == "sysv":
            obj = shmget(k, key, size)
        elif kind == "tmpfs":
            obj = k.new_inode("tmpfs", size, name=name, dev=(0, 0x2A))
        else:
            obj = k.new_inode(kind, size, name=name)
        obj.refs += 1  # the restorer's fd, until the tree is restored
        return ModelNewObject(self.model, obj)

    def map(self, pid: int, vma: Vma, obj: ModelNewObject | None) -> None:
        """do_mmap at the VMA's address; the model has no regular files to map."""
        from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED
        from dumper.model.mm import do_mmap
        from dumper.restore import RestoreError

        if obj is None and vma.path:
            raise RestoreError(f"task {pid}: VMA {vma.start:#x} maps the regular file "
                               f"{vma.path}, which a set references but does not hold")
        start, end, prot, pgoff = vma.start, vma.end, vma.prot, vma.pgoff
        shared = bool(vma.flags & MAP_SHARED)
        flags = (MAP_SHARED if shared else MAP_PRIVATE) | (MAP_ANONYMOUS if obj is None else 0)
        do_mmap(self.model.k, pid, end - start, prot, flags, obj=None if obj is None else obj.obj,
                pgoff=pgoff >> PAGE_SHIFT, addr=start)

    def unmap(self, pid: int, start: int, end: int) -> None:
        self.model.munmap(pid, start, end - start)

    def write_memory(self, pid: int, addr: int, data: bytes) -> None:
        """Write pages into a task (the restorer's own writes, breaking COW where shared). A
        VMA mapped without PROT_WRITE is made writable for the write and given its protection
        back after (mprotect), as CRIU's restorer does for its private VMAs."""
        end = addr + len(data)
        locked = [(max(v.start, addr), min(v.end, end), v.prot)
                  for v in self.model.k.task(pid).vmas_in(addr, end) if not v.prot & PROT_WRITE]
        for a, b, _ in locked:
            self.model.mprotect(pid, a, b - a, PROT_READ | PROT_WRITE)
        self.model.write(pid, addr, len(data), data)
        for a, b, prot in locked:
            self.model.mprotect(pid, a, b - a, prot)

    def discard(self, pid: int, start: int, end: int) -> None:
        """MADV_DONTNEED: anonymous pages read zeros again, file pages the file's."""
        from dumper.kabi import MADV_DONTNEED

        self.model.madvise(pid, start, end - start, MADV_DONTNEED)

    def install_marker(self, pid: int, start: int, end: int, kind: str) -> None:
        """MADV_GUARD_INSTALL, or UFFDIO_POISON for poison."""
        from dumper.kabi import MADV_GUARD_INSTALL

        if kind == "poison":
            self.model.uffd_poison(pid, start, end - start)
        else:
            self.model.madvise(pid, start, end - start, MADV_GUARD_INSTALL)

    def remove_marker(self, pid: int, start: int, end: int, kind: str) -> None:
        """MADV_GUARD_REMOVE: the restorer only ever removes inherited guard markers."""
        from dumper.kabi import MADV_GUARD_REMOVE

        self.model.madvise(pid, start, end - start, MADV_GUARD_REMOVE)

    def release_objects(self, objs: list[ModelNewObject]) -> None:
        """close() the restorer's fds once every mapping is in place."""
        from dumper.model.mm import put_inode

        for o in objs:
            put_inode(self.model.k, o.obj)


class ModelTarget(ModelRestoreMixin, ModelHost):
    """A model to restore into (and to ask, afterwards, what it holds)."""
