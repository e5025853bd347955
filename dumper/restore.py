"""Restore: images -> a host. The tree is re-created in fork order, shared objects with their
data and holes, every mapping in place with its protection, private pages written, and
copy-on-write sharing re-established where the images say two tasks held the same page.

A child inherits its parent's restored mm (fork). An inherited VMA is kept when the child's
image has the same VMA; within it, a page stays shared with the parent when both images
resolve it to the same stored page (the child's COW run points where the parent's page
comes from), is written when the child's image has its own data, and is discarded
(MADV_DONTNEED) otherwise — CRIU's restore_priv_vma_content, with the COW runs deciding
instead of a memcmp.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dumper.host import RestoreTarget
from dumper.images import flags as F
from dumper.images.flags import VMA_AREA_VSYSCALL
from dumper.images.reader import ImageSet
from dumper.images.records import Task, Vma
from dumper.kabi import MAP_SHARED, PAGE_SHIFT, PAGE_SIZE
from dumper.progress import Progress
from dumper.restore_state import SetState
from dumper.select import runs_of
from dumper.words import count


class RestoreError(Exception):
    """A restore that cannot go on; the message names the task or object."""


@dataclass
class RestoreSummary:
    tasks: int
    objects: int
    pages_written: int
    pages_shared: int
    pages_discarded: int

    def line(self) -> str:
        return (f"restored {count(self.tasks, 'task')} and "
                f"{count(self.objects, 'shared object')}: "
                f"{self.pages_written} pages written, {self.pages_shared} kept shared "
                f"copy-on-write, {self.pages_discarded} discarded")


def _same_vma(a: Vma, b: Vma) -> bool:
    """A VMA the child inherited: the same place, protection, sharing and backing (an
    exec'd child may map another file at its parent's address)."""
    return (a.start, a.end, a.prot, a.flags & MAP_SHARED, a.obj, a.pgoff, a.path) == (
        b.start, b.end, b.prot, b.flags & MAP_SHARED, b.obj, b.pgoff, b.path)


def page_sources(t: Task, vma: Vma) -> tuple[np.ndarray, np.ndarray]:
    """For each page of a private VMA: (pid, vaddr) of the stored page it restores from,
    (-1, -1) where the image holds none (zeros, or the file's page)."""
    n = vma.npages
    spid = np.full(n, -1, dtype=np.int64)
    saddr = np.full(n, -1, dtype=np.int64)
    for r in t.pagemap:
        if not r.present:
            continue
        a, b = max(r.vaddr, vma.start), min(r.end(), vma.end)
        if a < b:
            i, j = (a - vma.start) >> PAGE_SHIFT, (b - vma.start) >> PAGE_SHIFT
            spid[i:j] = t.pid
            saddr[i:j] = np.arange(a, b, PAGE_SIZE)
    for c in t.cow:
        end = c.vaddr + c.nr_pages * PAGE_SIZE
        a, b = max(c.vaddr, vma.start), min(end, vma.end)
        if a < b:
            i, j = (a - vma.start) >> PAGE_SHIFT, (b - vma.start) >> PAGE_SHIFT
            # The source is the first task that held the page: its own image stores it.
            spid[i:j] = c.src_pid
            saddr[i:j] = c.src_vaddr + np.arange(a - c.vaddr, b - c.vaddr, PAGE_SIZE)
    return spid, saddr


def restore(images: ImageSet, target: RestoreTarget, states: SetState | None = None,
            progress: Progress | None = None) -> RestoreSummary:
    """Rebuild the image set's tree on target; with states (a live target), also every
    task's non-memory state. The whole set is validated before anything is created; a
    failure aborts the target: nothing it created stays."""
    from dumper.images.validate import check_for_restore

    # The whole set, before anything is created; a live target maps regular files itself.
    check_for_restore(images, maps_files=states is not None)
    tell = progress or Progress()
    tell.phase("restoring", sum(p.raw_size for p in images.pages.values()))
    try:
        summary, objs = _restore_memory(images, target, tell)
        images.pages_checked()  # ImageSet.open(check_later=True): before anything runs
        if states is not None:
            live: Any = target
            live.set_objects(objs)
            for pid, st in states.tasks.items():
                live.set_state(pid, st)
        target.release_objects(list(objs.values()))  # every task holds what it maps now
    except BaseException:
        if hasattr(target, "abort"):
            target.abort()
        raise
    tell.done()
    return summary


def _restore_memory(images: ImageSet, target: RestoreTarget, tell: Progress
                    ) -> tuple[RestoreSummary, dict[int, Any]]:
    """Objects, tasks in fork order, mappings and pages; returns the summary and the
    objects created (by shmid), which the caller releases once the tasks hold them."""
    # A target that is done with each chunk when its write returns takes views of the
    # image files' page cache, in large pieces (no copy, no fresh buffer per chunk).
    views = getattr(target, "page_views", False)
    chunk = 16384 if views else 256
    objs = {}
    for shmid, o in images.objects.items():
        h = target.create_object(o.kind, o.size, o.name, o.ino, o.seals, o.page_size)
        for off, data in images.iter_object_pages(shmid, chunk, views):
            h.write(off, data)
            tell.advance(len(data))
        objs[shmid] = h
    written = shared = discarded = 0
    restored: dict[int, Task] = {}
    for t in images.tasks.values():  # pstree order: parents before children
        # The vsyscall gate is the kernel's (get_gate_vma): recorded, never mapped back.
        t = replace(t, vmas=[v for v in t.vmas if not v.status & VMA_AREA_VSYSCALL])
        parent = restored.get(t.ppid)
        target.create_task(t.pid, t.ppid if parent else 0, t.comm)
        if t.state in (F.TASK_DEAD, F.TASK_ZOMBIE):
            restored[t.pid] = t
            continue  # a zombie has no mm: it only exits (set_state), with its code
        kept: list[Vma] = []
        if parent is not None:
            for pv in parent.vmas:
                if any(_same_vma(pv, v) for v in t.vmas):
                    kept.append(pv)
                else:
                    target.unmap(t.pid, pv.start, pv.end)
        for v in t.vmas:
            if any(_same_vma(v, k) for k in kept):
                continue
            if v.obj is not None and v.obj not in objs:
                raise RestoreError(f"task {t.pid}: VMA {v.start:#x} maps object {v.obj}, "
                                   "which the image set does not hold")
            target.map(t.pid, v, objs.get(v.obj) if v.obj is not None else None)
        inherited = _inherited_guards(t, parent, kept)
        _drop_stale_guards(target, t, inherited)
        for v in t.vmas:
            if not v.private:
                continue
            spid, saddr = page_sources(t, v)
            same = np.zeros(v.npages, dtype=bool)
            if any(_same_vma(v, k) for k in kept):
                ppid_src, paddr_src = page_sources(parent, v)
                same = (spid == ppid_src) & (saddr == paddr_src)
                shared += int((same & (spid >= 0)).sum())
                for i, n in runs_of(~same & (spid < 0)):
                    target.discard(t.pid, v.start + (i << PAGE_SHIFT),
                                   v.start + ((i + n) << PAGE_SHIFT))
                    discarded += n
            # Pages stored in another task's image and not inherited: copied, page by page.
            for i, n in runs_of((spid >= 0) & (spid != t.pid) & ~same):
                for x in range(i, i + n):
                    page = images.read_page(int(spid[x]), int(saddr[x])).data
                    target.write_memory(t.pid, v.start + (x << PAGE_SHIFT), page)
                written += n
        for vaddr, data in images.iter_pages(t.pid, chunk, views):  # own pages, streamed
            tell.advance(len(data))
            for a, piece in _outside_markers(t, vaddr, data):
                target.write_memory(t.pid, a, piece)
                written += len(piece) // PAGE_SIZE
        _install_guards(target, t, inherited)
        restored[t.pid] = t
    return RestoreSummary(len(restored), len(objs), written, shared, discarded), objs


def _inherited_guards(t: Task, parent: Task | None, kept: list[Vma]) -> set:
    """The parent's marker runs a kept VMA brought along. fork copies a VMA's ptes, and its
    markers with them (copy_pte_marker: guard and poison), only where vma_needs_copy says
    so: a private VMA holding a marker has an anon_vma (UFFDIO_POISON and guard install
    prepare one); a shared one only once a guard was installed in it
    (madvise_guard_install's anon_vma_prepare, 6.13-6.18). A poison marker alone in a
    shared VMA stays the parent's (measured on 6.18; the model's dup_mmap agrees)."""
    if parent is None:
        return set()
    out = set()
    for k in kept:
        runs = [g for g in parent.guards if k.start <= g.vaddr < k.end]
        if k.private or any(g.kind == "guard" for g in runs):
            out |= {(g.vaddr, g.nr_pages, g.kind) for g in runs}
    return out


def _drop_stale_guards(target: Any, t: Task, inherited: set) -> None:
    """Before any write: remove inherited markers the child did not have."""
    mine = {(g.vaddr, g.nr_pages, g.kind) for g in t.guards}
    for vaddr, n, kind in sorted(inherited - mine):
        target.remove_marker(t.pid, vaddr, vaddr + n * PAGE_SIZE, kind)


def _install_guards(target: Any, t: Task, inherited: set) -> None:
    """After the pages: install the child's markers it did not inherit."""
    for vaddr, n, kind in sorted({(g.vaddr, g.nr_pages, g.kind) for g in t.guards} - inherited):
        target.install_marker(t.pid, vaddr, vaddr + n * PAGE_SIZE, kind)


def _outside_markers(t: Task, vaddr: int, data: bytes) -> list[tuple[int, bytes]]:
    """Split stored pages around the task's guard/poison runs: a naive strategy may have
    stored them (as zeros, since they fault), and a write there would fault too."""
    end = vaddr + len(data)
    cuts = [(g.vaddr, g.vaddr + g.nr_pages * PAGE_SIZE) for g in t.guards
            if g.vaddr < end and g.vaddr + g.nr_pages * PAGE_SIZE > vaddr]
    if not cuts:
        return [(vaddr, data)]
    out, pos = [], vaddr
    for a, b in sorted(cuts):
        if a > pos:
            out.append((pos, data[pos - vaddr : a - vaddr]))
        pos = max(pos, b)
    if pos < end:
        out.append((pos, data[pos - vaddr :]))
    return out
