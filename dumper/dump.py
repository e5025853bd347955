"""The dump pipeline: tree -> VMAs -> shared-object grouping -> selection -> images.

Written once against the Host protocol: it never asks whether it runs on the model or on
Linux. Shared objects are grouped across all sharers by device/inode and dumped once
(pagemap-shmem with offsets); private pages shared copy-on-write between tasks (the same
PFN, or the same swap slot) are stored once, in the first task that holds them, and recorded
as COW runs in the others (CRIU stores them once per process: its issue #2386).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dumper.host import Host, MapEntry, ObjectHandle, TaskInfo, parse_maps
from dumper.images import criustate
from dumper.images.records import CowRun, GuardRun, SharedObject, Vma
from dumper.images.writer import ImageSetWriter
from dumper.kabi import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_GUARD_REGION,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SWAP,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    SWP_PTE_MARKER,
    SWP_TYPE_MASK,
)
from dumper.select import (
    STRATEGIES,
    Owner,
    private_selection,
    read_pagemap,
    runs_of,
    shared_selection,
)
from dumper.state import DEAD, TaskState

CHUNK = 8 << 20  # bytes per read of target memory or object
U64 = np.uint64


class DumpError(Exception):
    """A dump that cannot go on; the message names the pid or object."""


@dataclass
class SharedInfo:
    """One shared object found behind the tree's mappings."""

    shmid: int
    kind: str
    name: str
    dev: int
    ino: int
    size: int
    handle: ObjectHandle
    owners: list[Owner] = field(default_factory=list)  # MAP_SHARED mappers
    selected: np.ndarray | None = None


@dataclass
class PrivateVma:
    """One private VMA of a task: which pages the strategy keeps, and the physical page behind
    each (cow_keys; the pagemap words themselves are not kept, for memory at scale)."""

    vma: MapEntry
    keys: np.ndarray
    selected: np.ndarray
    stored: np.ndarray | None = None  # selected and not a COW copy of an earlier task's page


@dataclass
class TaskDump:
    info: TaskInfo
    maps: list[MapEntry]
    private: list[PrivateVma] = field(default_factory=list)
    cow: list[CowRun] = field(default_factory=list)
    objects: dict[int, SharedInfo] = field(default_factory=dict)  # VMA start -> its object
    guards: list[GuardRun] = field(default_factory=list)


@dataclass
class DumpSummary:
    path: str
    strategy: str
    profile: str
    tasks: int
    vmas: int
    private_pages: int
    cow_pages: int
    shared_objects: int
    shared_pages: int
    bytes_written: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        mib = self.bytes_written / (1 << 20)
        return (
            f"dumped {self.tasks} tasks, {self.vmas} VMAs: {self.private_pages} private pages "
            f"({self.cow_pages} COW-shared stored once), {self.shared_pages} pages of "
            f"{self.shared_objects} shared objects; {mib:.1f} MiB written in "
            f"{self.seconds:.2f} s [{self.strategy}, {self.profile}] -> {self.path}"
        )


def object_kind(entry: MapEntry) -> str:
    """shmem-anon / memfd / sysv from the maps name; any other shmem file is tmpfs."""
    return entry.shmem_kind or "tmpfs"


def cow_keys(words: np.ndarray, show_pfn: bool, zero_pfn: int | None) -> np.ndarray:
    """A key per page naming the physical page behind it: PFN (bit 63 clear) or swap slot
    (bit 63 set); 0 where there is none to share (PFNs hidden, the zero page, markers)."""
    keys = np.zeros(len(words), dtype=U64)
    if not show_pfn:
        return keys
    frame = words & U64(PM_PFRAME_MASK)
    present = (words & U64(PM_PRESENT)) != 0
    if zero_pfn is not None:
        present &= frame != U64(zero_pfn)
    swp = ((words & U64(PM_SWAP)) != 0) & ~present & ((frame & U64(SWP_TYPE_MASK)) < U64(28))
    keys[present] = frame[present]
    keys[swp] = frame[swp] | U64(1 << 63)
    return keys


def marker_runs(pid: int, vma: MapEntry, words: np.ndarray, show_pfn: bool) -> list[GuardRun]:
    """Guard and poison markers of a VMA: PM_GUARD_REGION (6.15+), or with PFNs visible a swap
    type 31 entry with the GUARD or POISONED bit (kernel.md §1, §9 rule 1)."""
    frame = words & U64(PM_PFRAME_MASK)
    marker = ((words & U64(PM_SWAP)) != 0) & show_pfn & (
        (frame & U64(SWP_TYPE_MASK)) == U64(SWP_PTE_MARKER))
    bits = frame >> U64(5)
    guard = ((words & U64(PM_GUARD_REGION)) != 0) | (
        marker & ((bits & U64(PTE_MARKER_GUARD)) != 0))
    poison = marker & ((bits & U64(PTE_MARKER_POISONED)) != 0) & ~guard
    out = []
    for kind, mask in (("guard", guard), ("poison", poison)):
        out += [GuardRun(pid, vma.start + (a << PAGE_SHIFT), n, kind) for a, n in runs_of(mask)]
    return sorted(out, key=lambda g: g.vaddr)


def find_cow(tasks: list[TaskDump], show_pfn: bool, zero_pfn: int | None) -> int:
    """Mark which selected private pages are copies of an earlier task's (same key): those
    become COW runs pointing at the first holder, which stores the page. Vectorized: sort all
    keyed pages by (key, fork order, address); the first of each key is the source. The
    pages are gathered in fork order and address order already, so a stable sort by key
    alone gives that order (a third of a three-key lexsort's time)."""
    del show_pfn, zero_pfn  # the keys were taken when the pagemap was read
    keys, owner, addr = [], [], []
    for ti, t in enumerate(tasks):
        for pv in t.private:
            k = pv.keys
            idx = np.nonzero(pv.selected & (k != 0))[0]
            keys.append(k[idx])
            owner.append(np.full(len(idx), ti, dtype=np.int64))
            addr.append(U64(pv.vma.start) + (idx.astype(U64) << U64(PAGE_SHIFT)))
            pv.stored = pv.selected.copy()
    if not keys or not sum(len(k) for k in keys):
        return 0
    keys_a, owner_a, addr_a = np.concatenate(keys), np.concatenate(owner), np.concatenate(addr)
    srt = np.sort(keys_a)  # a plain sort is ~6x cheaper than the stable argsort below
    if not (srt[1:] == srt[:-1]).any():
        return 0  # no physical page behind two selected pages: nothing is shared
    order = np.argsort(keys_a, kind="stable")
    ks = keys_a[order]
    first = np.concatenate([[True], ks[1:] != ks[:-1]])
    src_pos = np.maximum.accumulate(np.where(first, np.arange(len(ks)), 0))
    dup = np.nonzero(~first)[0]
    if not len(dup):
        return 0
    j, s = order[dup], order[src_pos[dup]]
    d_owner, d_addr = owner_a[j], addr_a[j]
    s_pid = np.array([t.info.pid for t in tasks], dtype=np.int64)[owner_a[s]]
    s_addr = addr_a[s]
    for ti, t in enumerate(tasks):
        mine = np.nonzero(d_owner == ti)[0]
        if not len(mine):
            continue
        mine = mine[np.argsort(d_addr[mine], kind="stable")]
        a, sp, sa = d_addr[mine], s_pid[mine], s_addr[mine]
        for pv in t.private:
            inside = (a >= U64(pv.vma.start)) & (a < U64(pv.vma.end))
            pv.stored[((a[inside] - U64(pv.vma.start)) >> U64(PAGE_SHIFT)).astype(np.int64)] = False
        brk = np.nonzero((np.diff(a) != U64(PAGE_SIZE)) | (np.diff(sp) != 0)
                         | (np.diff(sa) != U64(PAGE_SIZE)))[0] + 1
        starts = np.concatenate([[0], brk])
        ends = np.concatenate([brk, [len(a)]])
        t.cow = [CowRun(t.info.pid, int(a[x]), int(y - x), int(sp[x]), int(sa[x]))
                 for x, y in zip(starts, ends, strict=True)]
    return len(dup)


def read_runs(read: Callable[[int, int], bytes], runs: list[tuple[int, int]],
              warn: Callable[[str], None]) -> Iterator[bytes]:
    """Bytes of (address, pages) runs, read in CHUNK pieces; a piece that faults (EFAULT:
    a guard page a naive strategy selected) is read page by page, zeros where it faults."""
    for start, npages in runs:
        end = start + npages * PAGE_SIZE
        for a in range(start, end, CHUNK):
            b = min(end, a + CHUNK)
            try:
                yield read(a, b)
            except OSError:
                for p in range(a, b, PAGE_SIZE):
                    try:
                        yield read(p, p + PAGE_SIZE)
                    except OSError as e:
                        warn(f"{p:#x}: unreadable, saved as zeros ({e.strerror or e})")
                        yield bytes(PAGE_SIZE)


def tree_of(host: Host, root: int, tree: bool = True) -> list[TaskInfo]:
    """The tasks to dump: the tree under root, or root alone (as the root of its own set)."""
    tasks = host.tasks(root)
    if tree:
        return tasks
    t = tasks[0]
    return [TaskInfo(t.pid, 0, t.comm, t.pgid, t.sid)]


def collect(host: Host, infos: list[TaskInfo], strategy: str, warn: Callable[[str], None]
            ) -> tuple[list[TaskDump], dict[tuple[int, int], SharedInfo]]:
    """Everything the dump needs from a frozen tree: maps, selections, shared objects."""
    show_pfn, zero_pfn = host.show_pfn(), host.zero_pfn()
    tasks = [TaskDump(info=t, maps=parse_maps(host.maps(t.pid))) for t in infos]
    objects: dict[tuple[int, int], SharedInfo] = {}
    for t in tasks:
        for e in t.maps:
            # Every VMA's pagemap is read once: guard/poison markers live in any VMA, and
            # private selection and the pagemap/mincore strategies' owner views need it.
            words = read_pagemap(host, t.info.pid, e)
            t.guards += marker_runs(t.info.pid, e, words, show_pfn)
            if e.ino != 0 or e.shared:
                handle = host.open_object(t.info.pid, e.start, e.end)
                st = handle.stat()
                key = (st.dev, st.ino)
                if not st.shmem:
                    handle.close()
                    if e.shared:
                        warn(f"pid {t.info.pid}: {e.start:#x}-{e.end:#x} maps "
                             f"{e.path or 'a file'} MAP_SHARED: a regular file is referenced, "
                             "not copied")
                else:
                    info = objects.get(key)
                    if info is None:
                        info = objects[key] = SharedInfo(st.ino, object_kind(e),
                                                         _object_name(e), st.dev, st.ino,
                                                         st.size, handle)
                    else:
                        handle.close()
                    t.objects[e.start] = info
                    if e.shared:  # only the pagemap/mincore strategies look at owners' words
                        keep = words if strategy in ("pagemap", "mincore-or", "mincore-and") \
                            else None
                        info.owners.append(Owner(t.info.pid, e, keep))
            if not e.shared:  # a file's own pages come from the object, or the file itself
                backed = e.start in t.objects or e.ino != 0
                t.private.append(PrivateVma(e, cow_keys(words, show_pfn, zero_pfn),
                                            private_selection(strategy, words, show_pfn,
                                                              zero_pfn, backed)))
    for info in objects.values():
        info.selected = shared_selection(strategy, host, info.owners, info.handle, info.size)
    return tasks, objects


def _object_name(e: MapEntry) -> str:
    name = e.path.removesuffix(" (deleted)")
    return name.removeprefix("/memfd:") if e.shmem_kind == "memfd" else name


def dump(host: Host, root: int, out: str, strategy: str = "auto", *, profile: str = "",
         compress: str | None = None, level: int = 3, threads: int = 0, force: bool = False,
         warn: Callable[[str], None] | None = None, tree: bool = True,
         truth: bool = True, sync: bool = True,
         leave_out: frozenset[str] = frozenset(), for_criu: bool = False) -> DumpSummary:
    """Dump the tree rooted at root into the image set directory out; sync=False leaves
    the files to the kernel's writeback (ImageSetWriter). leave_out: fd kinds (e.g.
    "socket") left out of the images instead of refused. for_criu=True writes what
    CRIU 4.2's restore needs beyond dumper's format: every task's COW-shared pages in its
    own pagemap (CRIU reads no cow-PID.img: an inherited page missing from a child's
    pagemap is zeroed) and the whole [vdso] (its restorer parses the dumped vdso's ELF)."""
    if strategy not in STRATEGIES:
        raise DumpError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    t0 = time.perf_counter()
    warnings: list[str] = []

    def note(msg: str) -> None:
        warnings.append(msg)
        if warn:
            warn(msg)

    # The tree is frozen as it is found: a process forking meanwhile is stopped before its
    # children are listed, so none can be missed (or dumped while running).
    freezing = host.freeze_tree(root) if tree else host.freeze([root])
    with freezing as frozen:
        infos = frozen if tree else tree_of(host, root, tree=False)
        tasks, objects = collect(host, infos, strategy, note)
        try:
            states, own_ns = host.task_states(infos, leave_out)  # threads, registers, files
            cow_pages = 0 if for_criu else find_cow(tasks, host.show_pfn(), host.zero_pfn())
            writer = ImageSetWriter(out, force=force, compress=compress, level=level,
                                    threads=threads, strategy=strategy, profile=profile,
                                    host_kind=host.kind, root_pid=root, sync=sync)
            with writer:
                shared_pages = _write_objects(writer, objects, note)
                private_pages = _write_tasks(host, writer, tasks, note, truth,
                                             {s.pid: s for s in states}, own_ns, for_criu)
            written = _dir_bytes(out)
        finally:
            for info in objects.values():
                info.handle.close()
    return DumpSummary(
        path=out, strategy=strategy, profile=profile or host.kind, tasks=len(tasks),
        vmas=sum(len(t.maps) for t in tasks), private_pages=private_pages, cow_pages=cow_pages,
        shared_objects=len(objects), shared_pages=shared_pages, bytes_written=written,
        seconds=time.perf_counter() - t0, warnings=warnings,
    )


def _write_objects(writer: ImageSetWriter, objects: dict[tuple[int, int], SharedInfo],
                   warn: Callable[[str], None]) -> int:
    total = 0
    for info in objects.values():
        runs = [(a << PAGE_SHIFT, n) for a, n in runs_of(info.selected)]
        total += sum(n for _, n in runs)
        writer.add_shared_object(
            SharedObject(shmid=info.shmid, kind=info.kind, size=info.size, dev=info.dev,
                         ino=info.ino, name=info.name),
            runs, read_runs(lambda a, b, h=info.handle: h.pread(a, b - a), runs, warn),
        )
    return total


def _vma_record(e: MapEntry, info: SharedInfo | None) -> Vma:
    """The VMA as the images record it: an object's shmid, a referenced regular file's path
    (its pages are the file's, not the dump's), or anonymous memory."""
    file = info is None and e.ino != 0
    anon = info.kind == "shmem-anon" if info is not None else not file
    flags = (MAP_SHARED if e.shared else MAP_PRIVATE) | (MAP_ANONYMOUS if anon else 0)
    return Vma(e.start, e.end, e.prot, flags, pgoff=e.pgoff,
               obj=info.shmid if info is not None else None, path=e.path if file else "")


def _write_tasks(host: Host, writer: ImageSetWriter, tasks: list[TaskDump],
                 warn: Callable[[str], None], truth: bool = True,
                 states: dict[int, TaskState] | None = None,
                 own_ns: dict[str, int] | None = None, for_criu: bool = False) -> int:
    total = 0
    states = states or {}
    ns = criustate.NsIds()
    if any(s.live for s in states.values()):
        writer.root_ids = criustate.own_ids(ns, own_ns or {}, states.values())
    for t in tasks:
        pid = t.info.pid
        vmas = [_vma_record(e, t.objects.get(e.start)) for e in t.maps]
        st = states.get(pid)
        if st is not None and st.live:
            for r in criustate.task_images(writer, st, ns, t.info, t.maps, vmas):
                warn(r)
            if st.state == DEAD:
                continue
        else:
            writer.add_task(pid, t.info.ppid, t.info.comm, vmas,
                            pgid=t.info.pgid or None, sid=t.info.sid or None)
        runs = []
        vdso = st.vdso if st is not None and for_criu else None
        for pv in t.private:
            mask = pv.stored if pv.stored is not None else pv.selected
            if vdso is not None and pv.vma.start == vdso[0]:
                mask = np.ones(pv.vma.npages, dtype=bool)  # whole, as CRIU stores it
            runs += [(pv.vma.start + (a << PAGE_SHIFT), n) for a, n in runs_of(mask)]
        total += sum(n for _, n in runs)

        def read(a: int, b: int, p: int = pid, vdso=vdso) -> bytes:
            if vdso is not None and vdso[0] <= a < vdso[0] + len(vdso[1]):
                return vdso[1][a - vdso[0] : b - vdso[0]]
            return host.read_memory(p, a, b)

        writer.add_private_pages(pid, runs, read_runs(read, runs, warn))
        if t.cow:
            writer.add_cow(pid, t.cow)
        if t.guards:
            writer.add_guards(pid, t.guards)
        if truth:  # the ground truth a model restore is verified against (truth-PID.img)
            writer.add_truth(pid, host.truth(pid), algo=host.truth_algo)
    if states:
        criustate.write_pipes_data(writer, ns)
        criustate.write_sk_queues(writer, ns)
        criustate.write_tty_info(writer, ns)
    return total


def _dir_bytes(path: str) -> int:
    import os

    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
