"""ModelHost: the Host protocol answered by the model, in the kernel's own encodings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from dumper.host import ObjectStat, TaskInfo
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
)
from dumper.model import Model, observe
from dumper.model.shmem import shmem_file_read
from dumper.model.state import ZERO_PFN, Inode, ModelError


class ModelObject:
    """An open map_files entry on the model: lseek and pread on the object."""

    def __init__(self, model: Model, obj: Inode) -> None:
        self.model = model
        self.obj = obj
        self.obj.refs += 1
        self.closed = False

    def stat(self) -> ObjectStat:
        dev = (self.obj.dev[0] << 8) | self.obj.dev[1]
        return ObjectStat(dev=dev, ino=self.obj.ino, size=self.obj.size)

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


def _oserror(e: ModelError) -> OSError:
    import errno

    return OSError(getattr(errno, e.errno_name, errno.EIO), str(e))


class ModelHost:
    """The model seen through /proc: what the dump pipeline may ask of it."""

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
        in (the model's process_vm_readv never changes the target)."""
        return self.model.peek(pid, start, end - start)

    @contextmanager
    def freeze(self, pids: list[int]) -> Iterator[None]:
        """The model only moves when told to: a frozen tree is the model between operations."""
        for pid in pids:
            self.k.task(pid)
        yield

    def show_pfn(self) -> bool:
        return self.privileged
