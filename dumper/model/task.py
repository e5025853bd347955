"""The process tree: creating a task, fork (dup_mmap / copy_page_range), exit (exit_mmap)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dumper.kabi import PTE_MARKER_GUARD, PTE_MARKER_POISONED
from dumper.model import pte
from dumper.model.mm import map_frames, release_vma, swap_duplicate, zap_pte_range
from dumper.model.shmem import close_fd
from dumper.model.state import Kernel, ModelError, Task, Vma

U64 = np.uint64


def alloc_pid(k: Kernel, pid: int | None = None) -> int:
    """alloc_pid: the next free pid, or the one asked for (as a restorer's clone3 set_tid)."""
    if pid is None:
        pid = k.next_pid
    elif pid in k.tasks:
        raise ModelError("EEXIST", f"pid {pid} is in use")
    k.next_pid = max(k.next_pid, pid + 1)
    return pid


def spawn(k: Kernel, comm: str, ppid: int = 0, uid: int = 0, pid: int | None = None) -> int:
    """A new task with an empty mm (what exec leaves once the model ignores the binary)."""
    pid = alloc_pid(k, pid)
    k.tasks[pid] = Task(pid=pid, ppid=ppid, comm=comm, uid=uid)
    return pid


def vma_needs_copy(dst: Vma, src: Vma) -> bool:
    """vma_needs_copy (mm/memory.c): copy PTEs only where a fault could not refill them — a
    uffd-wp VMA kept across fork (needs EVENT_FORK; never here), or one with an anon_vma."""
    return dst.uffd_wp or src.anon_vma


def copy_page_range(k: Kernel, dst: Vma, src: Vma) -> None:
    """copy_page_range: present pages are shared (private ones write-protected in both: COW),
    swap entries duplicated (swap_duplicate), writable migration entries of COW mappings made
    readable, markers through copy_pte_marker (poison and guard only: uffd-wp needs a uffd
    in the child, and the RFC's PAGEOUT hint is never copied)."""
    ptes = src.ptes
    if pte.only_none_or_present(ptes):  # the common case, in whole-array passes
        if not src.shared:  # wrprotect the parent's private pages too (none stays 0)
            ptes &= ~U64(pte.WRITE)
        dst.ptes = ptes & ~U64(pte.UFFD_WP)
        map_frames(k, pte.values(ptes[ptes != 0]))
        return
    kinds = pte.kinds(ptes)
    vals = pte.values(ptes)
    out = np.zeros_like(ptes)
    present = kinds == pte.PRESENT
    cow = not src.shared
    if cow:  # wrprotect the parent's private pages too
        ptes[present] &= ~U64(pte.WRITE)
    out[present] = ptes[present] & ~U64(pte.UFFD_WP)
    map_frames(k, vals[present])
    swap = kinds == pte.SWAP
    out[swap] = ptes[swap] & ~U64(pte.UFFD_WP)
    swap_duplicate(k, vals[swap])
    mig = kinds == pte.MIGRATION
    if cow:
        ptes[mig] &= ~U64(pte.WRITE)
    out[mig] = ptes[mig]
    marker = kinds == pte.MARKER
    copied = marker & ((vals & U64(PTE_MARKER_GUARD | PTE_MARKER_POISONED)) != 0)
    out[copied] = ptes[copied]
    dst.ptes = out


def dup_mmap(k: Kernel, parent: Task, child: Task) -> None:
    """dup_mmap: every VMA is duplicated (file refs taken, userfaultfd dropped as without
    UFFD_FEATURE_EVENT_FORK) except VM_DONTCOPY ones (MADV_DONTFORK); PTEs are copied only
    where vma_needs_copy says so, and never for VM_WIPEONFORK (the child's VMA starts
    empty, without an anon_vma, and keeps the flag)."""
    for src in parent.vmas:
        if src.dontcopy:
            continue
        dst = replace(src, ptes=np.zeros(src.npages, dtype=U64), uffd_wp=False,
                      anon_vma=src.anon_vma and not src.wipeonfork)
        if src.obj is not None:
            src.obj.refs += 1
        dst.huge, dst.ptables = {}, set()
        if not src.wipeonfork and vma_needs_copy(dst, src):
            copy_page_range(k, dst, src)
            dst.huge, dst.ptables = dict(src.huge), set(src.ptables)  # copy_huge_pmd
        child.vmas.append(dst)


def do_fork(k: Kernel, pid: int, comm: str | None = None, child_pid: int | None = None) -> int:
    """kernel_clone: a child with a copy of the mm (dup_mmap) and of the file table."""
    parent = k.task(pid)
    child_pid = spawn(k, comm or parent.comm, ppid=pid, uid=parent.uid, pid=child_pid)
    child = k.tasks[child_pid]
    dup_mmap(k, parent, child)
    for fd, obj in parent.fds.items():
        child.fds[fd] = obj
        obj.refs += 1
    return child_pid


def do_exit(k: Kernel, pid: int) -> None:
    """do_exit: exit_mmap (every PTE and marker dropped), files closed; children are
    reparented to the exiting task's parent (a subreaper, as the model's tree root is)."""
    task = k.task(pid)
    if task.ppid == 0:
        raise ModelError("EPERM", f"pid {pid} is the root of the tree")
    for vma in task.vmas:
        zap_pte_range(k, vma, 0, vma.npages, drop_markers=True)
        release_vma(k, vma)
    task.vmas.clear()
    for fd in list(task.fds):
        close_fd(k, pid, fd)
    for other in k.tasks.values():
        if other.ppid == pid:
            other.ppid = task.ppid
    task.alive = False
    del k.tasks[pid]
