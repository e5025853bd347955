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
from dumper.images.records import CowRun, Dropped, GuardRun, SharedObject, Unreadable, Vma
from dumper.images.writer import ImageSetWriter
from dumper.kabi import (
    MAP_ANONYMOUS,
    MAP_HUGETLB,
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
    huge_flags,
)
from dumper.select import (
    STRATEGIES,
    Owner,
    private_selection,
    read_pagemap,
    runs_of,
    shared_selection,
)

# Bytes per read of target memory or object. Each chunk is a pooled buffer until the Sink has
# written it (DEPTH queued, one being written, one being read: six in flight), so this sets
# the dump's memory: 4 MiB keeps a 4 GiB dump under 128 MiB peak RSS where 8 MiB took 131 MiB
# (bench.live), at the same speed.
CHUNK = 4 << 20
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
    page_size: int = PAGE_SIZE  # hugetlb objects: the huge page size


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
    huge: dict[int, int] = field(default_factory=dict)  # VMA start -> huge page size


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
    unreadable: list[Unreadable] = field(default_factory=list)  # selected, not saved
    frozen_seconds: float = 0.0  # how long the tree was stopped: what its users felt

    def line(self) -> str:
        mib = self.bytes_written / (1 << 20)
        lost = sum(u.nr_pages for u in self.unreadable)
        return (
            f"dumped {self.tasks} tasks, {self.vmas} VMAs: {self.private_pages} private pages "
            f"({self.cow_pages} COW-shared stored once), {self.shared_pages} pages of "
            f"{self.shared_objects} shared objects; {mib:.1f} MiB written in "
            f"{self.seconds:.2f} s, tree frozen {self.frozen_seconds:.2f} s "
            f"[{self.strategy}, {self.profile}] -> {self.path}"
            + (f"; {lost} pages UNREADABLE, not saved" if lost else "")
        )


def object_kind(entry: MapEntry) -> str:
    """shmem-anon / memfd / sysv from the maps name; any other shmem file is tmpfs."""
    return entry.object_kind or "tmpfs"


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
    keys = []
    for t in tasks:
        for pv in t.private:
            keys.append(pv.keys[pv.selected & (pv.keys != 0)])
            pv.stored = pv.selected.copy()
    if not keys or not sum(len(k) for k in keys):
        return 0
    keys_a = np.concatenate(keys)
    del keys
    srt = np.sort(keys_a)  # a plain sort is ~6x cheaper than the stable argsort below
    shared = bool((srt[1:] == srt[:-1]).any())
    del srt
    if not shared:
        return 0  # no physical page behind two selected pages: nothing is shared
    owner, addr = [], []  # only now: 16 bytes a selected page (32 MiB at 4 GiB)
    for ti, t in enumerate(tasks):
        for pv in t.private:
            idx = np.nonzero(pv.selected & (pv.keys != 0))[0]
            owner.append(np.full(len(idx), ti, dtype=np.int64))
            addr.append(U64(pv.vma.start) + (idx.astype(U64) << U64(PAGE_SHIFT)))
    owner_a, addr_a = np.concatenate(owner), np.concatenate(addr)
    del owner, addr
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
              hole_unit: int = 0) -> Iterator[bytes | Dropped]:
    """Bytes of (address, pages) runs, read in CHUNK pieces. A piece that faults is read
    page by page, and a page that still faults is Dropped with the reason: never stored as
    if it were zeros (the writer records it in unreadable.img). hole_unit: a hugetlb
    object's huge page size; a huge page that reads all zeros is Dropped as a hole
    (hugetlbfs answers SEEK_DATA for every offset: default_llseek)."""
    for start, npages in runs:
        end = start + npages * PAGE_SIZE
        for a in range(start, end, CHUNK):
            b = min(end, a + CHUNK)
            try:
                data = read(a, b)
            except OSError:
                for p in range(a, b, PAGE_SIZE):
                    try:
                        yield read(p, p + PAGE_SIZE)
                    except OSError as e:
                        yield Dropped(1, e.strerror or str(e))
                continue
            yield from _huge_holes(data, hole_unit) if hole_unit else (data,)


def _huge_holes(data: bytes | memoryview, unit: int) -> Iterator[bytes | memoryview | Dropped]:
    """data in pieces, its all-zero units (huge pages) Dropped as holes."""
    view = memoryview(data).cast("B")
    n = len(view) // unit
    if n == 0 or len(view) % unit:
        yield data
        return
    data_units = np.frombuffer(view, dtype=np.uint64).reshape(n, -1).any(axis=1)
    pos = 0
    for first, count in runs_of(data_units):
        if first > pos:
            yield Dropped((first - pos) * (unit // PAGE_SIZE))
        yield view[first * unit : (first + count) * unit]
        pos = first + count
    if pos < n:
        yield Dropped((n - pos) * (unit // PAGE_SIZE))


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
    referenced: dict[str, set[str]] = {}  # regular file -> how the tree maps it
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
                if st.huge_page_size:
                    t.huge[e.start] = st.huge_page_size
                # MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB: anonymous memory in huge pages; its
                # hugetlbfs inode holds nothing (hugetlb_no_page gives private VMAs anon folios).
                anon_huge = not e.shared and e.path.startswith("/anon_hugepage")
                if not st.is_object or anon_huge:
                    handle.close()
                    if not anon_huge:
                        referenced.setdefault(e.path or f"{e.dev_major}:{e.dev_minor} "
                                              f"inode {e.ino}", set()).add(
                            "MAP_SHARED" if e.shared else "MAP_PRIVATE")
                else:
                    info = objects.get(key)
                    if info is None:
                        info = objects[key] = SharedInfo(st.ino, object_kind(e),
                                                         _object_name(e), st.dev, st.ino,
                                                         st.size, handle,
                                                         page_size=st.huge_page_size or PAGE_SIZE)
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
    for path, how in referenced.items():
        warn(f"{path}: mapped {' and '.join(sorted(how))}, referenced, not copied: a restore "
             "needs this file at this path, unchanged")
    for info in objects.values():
        info.selected = shared_selection(strategy, host, info.owners, info.handle, info.size)
    return tasks, objects


def _object_name(e: MapEntry) -> str:
    name = e.path.removesuffix(" (deleted)")
    return name.removeprefix("/memfd:") if e.object_kind == "memfd" else name


def dump(host: Host, root: int, out: str, strategy: str = "auto", *, profile: str = "",
         compress: str | None = None, level: int = 3, threads: int = 0, force: bool = False,
         warn: Callable[[str], None] | None = None, tree: bool = True,
         truth: bool = True, sync: bool = True) -> DumpSummary:
    """Dump the tree rooted at root into the image set directory out; sync=False leaves
    the files to the kernel's writeback (ImageSetWriter)."""
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
    t_freeze = time.perf_counter()
    with freezing as frozen:
        infos = frozen if tree else tree_of(host, root, tree=False)
        tasks, objects = collect(host, infos, strategy, note)
        try:
            cow_pages = find_cow(tasks, host.show_pfn(), host.zero_pfn())
            writer = ImageSetWriter(out, force=force, compress=compress, level=level,
                                    threads=threads, strategy=strategy, profile=profile,
                                    host_kind=host.kind, root_pid=root, sync=sync)
            with writer:
                shared_pages = _write_objects(writer, objects)
                private_pages = _write_tasks(host, writer, tasks, truth)
                unreadable = list(writer.unreadable)
            written = _dir_bytes(out)
        finally:
            for info in objects.values():
                info.handle.close()
    frozen_s = time.perf_counter() - t_freeze  # seizing the first task to thawing the last
    return DumpSummary(
        path=out, strategy=strategy, profile=profile or host.kind, tasks=len(tasks),
        vmas=sum(len(t.maps) for t in tasks), private_pages=private_pages, cow_pages=cow_pages,
        shared_objects=len(objects), shared_pages=shared_pages, bytes_written=written,
        seconds=time.perf_counter() - t0, warnings=warnings, unreadable=unreadable,
        frozen_seconds=frozen_s,
    )


def _write_objects(writer: ImageSetWriter, objects: dict[tuple[int, int], SharedInfo]) -> int:
    total = 0
    for info in objects.values():
        runs = [(a << PAGE_SHIFT, n) for a, n in runs_of(info.selected)]
        huge = info.page_size if info.page_size != PAGE_SIZE else 0
        pages_id = writer.add_shared_object(
            SharedObject(shmid=info.shmid, kind=info.kind, size=info.size, dev=info.dev,
                         ino=info.ino, name=info.name, page_size=info.page_size),
            runs, read_runs(lambda a, b, h=info.handle: h.pread(a, b - a), runs, huge),
        )
        total += writer.pages_stored(pages_id)
    return total


def _vma_record(e: MapEntry, info: SharedInfo | None, huge: int = 0) -> Vma:
    """The VMA as the images record it: an object's shmid, a referenced regular file's path
    (its pages are the file's, not the dump's), or anonymous memory; hugetlb mappings with
    MAP_HUGETLB and their page size, as CRIU rebuilds the flags from smaps "ht"."""
    file = info is None and e.ino != 0 and not (huge and e.path.startswith("/anon_hugepage"))
    anon = info.kind == "shmem-anon" if info is not None else not file
    flags = (MAP_SHARED if e.shared else MAP_PRIVATE) | (MAP_ANONYMOUS if anon else 0)
    if huge:
        flags |= huge_flags(huge, MAP_HUGETLB)
    return Vma(e.start, e.end, e.prot, flags, pgoff=e.pgoff,
               obj=info.shmid if info is not None else None, path=e.path if file else "")


def _write_tasks(host: Host, writer: ImageSetWriter, tasks: list[TaskDump],
                 truth: bool = True) -> int:
    total = 0
    for t in tasks:
        pid = t.info.pid
        writer.add_task(pid, t.info.ppid, t.info.comm,
                        [_vma_record(e, t.objects.get(e.start), t.huge.get(e.start, 0))
                         for e in t.maps],
                        pgid=t.info.pgid or None, sid=t.info.sid or None)
        runs = []
        for pv in t.private:
            mask = pv.stored if pv.stored is not None else pv.selected
            runs += [(pv.vma.start + (a << PAGE_SHIFT), n) for a, n in runs_of(mask)]
        pages_id = writer.add_private_pages(
            pid, runs, read_runs(lambda a, b, p=pid: host.read_memory(p, a, b), runs))
        total += writer.pages_stored(pages_id)
        if t.cow:
            writer.add_cow(pid, t.cow)
        if t.guards:
            writer.add_guards(pid, t.guards)
        if truth:  # the ground truth a model restore is verified against (truth-PID.img)
            writer.add_truth(pid, host.truth(pid), algo=host.truth_algo)
    return total


def _dir_bytes(path: str) -> int:
    import os

    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
