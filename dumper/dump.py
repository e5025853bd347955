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
from dumper.images.flags import VMA_ANON_PRIVATE, VMA_AREA_GUARD, VMA_AREA_VSYSCALL
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
from dumper.progress import Progress
from dumper.select import (
    PAGEMAP_WINDOW,
    STRATEGIES,
    Owner,
    private_selection,
    read_pagemap_range,
    runs_of,
    shared_selection,
)
from dumper.state import DEAD, TaskState
from dumper.words import count

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
    those that have one (cow_keys, sparse; the pagemap words are not kept, for memory)."""

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
            f"dumped {count(self.tasks, 'task')}, {count(self.vmas, 'VMA')}: "
            f"{self.private_pages} private pages "
            f"({self.cow_pages} COW-shared stored once), {self.shared_pages} pages of "
            f"{count(self.shared_objects, 'shared object')}; {mib:.1f} MiB written in "
            f"{self.seconds:.2f} s, tree frozen {self.frozen_seconds:.2f} s "
            f"[{self.strategy}, {self.profile}] -> {self.path}"
            + (f"; {lost} pages UNREADABLE, not saved" if lost else "")
        )


def object_kind(entry: MapEntry) -> str:
    """shmem-anon / memfd / sysv from the maps name; any other shmem file is tmpfs."""
    return entry.object_kind or "tmpfs"


def cow_keys(words: np.ndarray, show_pfn: bool, zero_pfn: int | None) -> np.ndarray:
    """The physical page behind each page that has one, sparse: row 0 the page indices, row 1
    the keys, PFN (bit 63 clear) or swap slot (bit 63 set). Pages without one to share (PFNs
    hidden, the zero page, markers, none) are left out: at scale most pages are untouched."""
    if not show_pfn:
        return np.zeros((2, 0), dtype=U64)
    idx = np.flatnonzero(words & U64(PM_PRESENT | PM_SWAP))
    w = words[idx]
    frame = w & U64(PM_PFRAME_MASK)
    present = (w & U64(PM_PRESENT)) != 0
    if zero_pfn is not None:
        present &= frame != U64(zero_pfn)
    swp = ~present & ((w & U64(PM_SWAP)) != 0) & ((frame & U64(SWP_TYPE_MASK)) < U64(28))
    keep = present | swp
    keys = frame[keep] | np.where(swp[keep], U64(1 << 63), U64(0))
    return np.stack([idx[keep].astype(U64), keys])


def _index_runs(idx: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive indices in a sorted index array."""
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    for a, b in zip(np.concatenate([[0], brk]), np.concatenate([brk, [len(idx)]]), strict=True):
        yield int(idx[a]), int(b - a)


def marker_runs(pid: int, vma: MapEntry, words: np.ndarray, show_pfn: bool) -> list[GuardRun]:
    """Guard and poison markers of a VMA: PM_GUARD_REGION (6.15+), or with PFNs visible a swap
    type 31 entry with the GUARD or POISONED bit (kernel.md §1, §9 rule 1). Only the words
    with PM_SWAP or PM_GUARD_REGION are looked at (one pass over the VMA, then the few)."""
    cand = marker_candidates(words)
    return _markers(pid, vma, cand, words[cand], show_pfn)


def marker_candidates(words: np.ndarray) -> np.ndarray:
    """Indices of the words that may be a marker (PM_SWAP or PM_GUARD_REGION set)."""
    return np.flatnonzero(words & U64(PM_SWAP | PM_GUARD_REGION))


def _markers(pid: int, vma: MapEntry, cand: np.ndarray, w: np.ndarray, show_pfn: bool
             ) -> list[GuardRun]:
    """marker_runs of the candidate words w at page indices cand (sorted) of the VMA."""
    if not len(cand):
        return []
    frame = w & U64(PM_PFRAME_MASK)
    marker = ((w & U64(PM_SWAP)) != 0) & show_pfn & (
        (frame & U64(SWP_TYPE_MASK)) == U64(SWP_PTE_MARKER))
    bits = frame >> U64(5)
    guard = ((w & U64(PM_GUARD_REGION)) != 0) | (marker & ((bits & U64(PTE_MARKER_GUARD)) != 0))
    poison = marker & ((bits & U64(PTE_MARKER_POISONED)) != 0) & ~guard
    out = []
    for kind, mask in (("guard", guard), ("poison", poison)):
        if mask.any():
            out += [GuardRun(pid, vma.start + (a << PAGE_SHIFT), n, kind)
                    for a, n in _index_runs(cand[mask])]
    return sorted(out, key=lambda g: g.vaddr)


@dataclass
class VmaScan:
    """What one read of a VMA's pagemap gives the dump: private selection and COW keys (for
    a private VMA), guard/poison runs, and the words themselves when an owner view needs
    them."""

    selected: np.ndarray | None
    keys: np.ndarray | None
    guards: list[GuardRun]
    words: np.ndarray | None


def scan_vma(host: Host, pid: int, vma: MapEntry, strategy: str, show_pfn: bool,
             zero_pfn: int | None, backed: bool, keep_words: bool) -> VmaScan:
    """Read a VMA's pagemap window by window (PAGEMAP_WINDOW pages, as CRIU's cache reads)
    and judge each window as it comes: no array of the VMA's words is built unless
    keep_words. Each window's temporaries stay in the CPU cache; whole-VMA passes over 8 Mi
    words cost a fresh 64 MiB per operation (1.2 s of a 64 GiB dump, faulting the memory
    in)."""
    private = not vma.shared
    selected = np.empty(vma.npages, dtype=bool) if private else None
    keys, cands, marks, kept = [], [], [], []
    step = PAGEMAP_WINDOW * PAGE_SIZE
    for a in range(vma.start, vma.end, step):
        w = np.frombuffer(host.pagemap(pid, a, min(vma.end, a + step)), dtype="<u8")
        lo = (a - vma.start) >> PAGE_SHIFT
        c = marker_candidates(w)
        if len(c):
            cands.append(c + lo)
            marks.append(w[c])
        if selected is not None:
            selected[lo : lo + len(w)] = private_selection(strategy, w, show_pfn, zero_pfn,
                                                           backed)
            k = cow_keys(w, show_pfn, zero_pfn)
            if k.shape[1]:
                k[0] += U64(lo)
                keys.append(k)
        if keep_words:
            kept.append(w)
    guards = _markers(pid, vma, np.concatenate(cands), np.concatenate(marks), show_pfn) \
        if cands else []
    if selected is not None:
        keys_all = np.concatenate(keys, axis=1) if keys else np.zeros((2, 0), dtype=U64)
    else:
        keys_all = None
    words = (np.concatenate(kept) if kept else np.zeros(0, dtype="<u8")) if keep_words else None
    return VmaScan(selected, keys_all, guards, words)


def _cow_runs(pid: int, a: np.ndarray, sp: np.ndarray, sa: np.ndarray,
              owner: np.ndarray | None = None) -> list[CowRun]:
    """COW records of pages at addresses a (sorted) held by (src pid, src address); a record
    stays inside one VMA (owner: the VMA of each page, when they are several)."""
    step = (np.diff(a) != U64(PAGE_SIZE)) | (np.diff(sp) != 0) | (np.diff(sa) != U64(PAGE_SIZE))
    if owner is not None:
        step |= np.diff(owner) != 0
    brk = np.flatnonzero(step) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(a)]])
    return [CowRun(pid, int(a[x]), int(y - x), int(sp[x]), int(sa[x]))
            for x, y in zip(starts, ends, strict=True)]


COW_BATCH = 1 << 20  # selected pages per step of find_cow: small VMAs are taken together


def _batches(private: list[PrivateVma], size: int) -> Iterator[list[PrivateVma]]:
    """The VMAs in address order, grouped until a group holds size keys or more."""
    group: list[PrivateVma] = []
    n = 0
    for pv in private:
        if group and pv.keys.shape[1] >= size:  # a large VMA goes alone (no owner array)
            yield group
            group, n = [], 0
        group.append(pv)
        n += pv.keys.shape[1]
        if n >= size:
            yield group
            group, n = [], 0
    if group:
        yield group


def find_cow(tasks: list[TaskDump], show_pfn: bool, zero_pfn: int | None,
             batch: int = COW_BATCH) -> int:
    """Mark which selected private pages are copies of an earlier task's (same key): those
    become COW runs pointing at the first holder, which stores the page. Streamed in fork
    and address order, a batch of VMAs at a time (one VMA, or many small ones), against
    the sorted keys of the pages stored so far (one entry per distinct physical page, with
    its holder), so no array of every key is built."""
    del show_pfn, zero_pfn  # the keys were taken when the pagemap was read
    seen = np.zeros(0, dtype=U64)  # sorted keys of the pages stored so far
    seen_pid = np.zeros(0, dtype=np.int64)
    seen_addr = np.zeros(0, dtype=U64)
    total = 0
    for t in tasks:
        pid = t.info.pid
        runs: list[CowRun] = []
        for group in _batches(t.private, batch):
            ks, addrs = [], []
            for pv in group:
                pv.stored = pv.selected.copy()
                idx, k = pv.keys
                sel = pv.selected[idx.astype(np.int64)]
                if not sel.all():  # (a written VMA is selected whole: no copy of its keys)
                    idx, k = idx[sel], k[sel]
                del sel
                ks.append(k)
                addrs.append(U64(pv.vma.start) + (idx << U64(PAGE_SHIFT)))
            # owner: the VMA of each key, only when the batch holds several
            owner = np.repeat(np.arange(len(group)), [len(x) for x in ks]) \
                if len(group) > 1 else None
            k = np.concatenate(ks) if len(ks) > 1 else ks[0]
            if not len(k):
                continue
            addr = np.concatenate(addrs) if len(addrs) > 1 else addrs[0]  # sorted: VMA order
            del ks, addrs
            if len(seen):
                pos = np.minimum(np.searchsorted(seen, k), len(seen) - 1)
                hit = seen[pos] == k
            else:
                pos, hit = np.zeros(len(k), dtype=np.int64), np.zeros(len(k), dtype=bool)
            # Among this batch's new keys, the lowest address holds (a stable sort by key).
            new = np.flatnonzero(~hit)
            order = new[np.argsort(k[new], kind="stable")]
            del new
            ks_ = k[order]
            first = np.ones(len(ks_), dtype=bool)
            first[1:] = ks_[1:] != ks_[:-1]
            del ks_
            fresh = order[first]  # sorted by key: merged into seen below
            inner = order[~first]  # a second page of this batch on a frame it holds already
            if len(inner) or hit.any():
                dup = np.flatnonzero(hit)  # sorted: pages of earlier tasks' frames
                held = pos[dup]
                sp, sa = seen_pid[held], seen_addr[held]
                del held
                if len(inner):  # and pages of frames this batch holds at a lower address
                    holder = order[np.maximum.accumulate(
                        np.where(first, np.arange(len(order)), 0))][~first]
                    dup = np.concatenate([dup, inner])
                    sp = np.concatenate([sp, np.full(len(inner), pid)])
                    sa = np.concatenate([sa, addr[holder]])
                    srt = np.argsort(dup, kind="stable")
                    dup, sp, sa = dup[srt], sp[srt], sa[srt]
                    del srt, holder
                da = addr[dup]
                if owner is None:
                    pv = group[0]
                    pv.stored[((da - U64(pv.vma.start)) >> U64(PAGE_SHIFT)).astype(np.int64)
                              ] = False
                    runs += _cow_runs(pid, da, sp, sa)
                else:
                    od = owner[dup]  # non-decreasing: dup is in address order
                    vstart = np.array([pv.vma.start for pv in group], dtype=U64)
                    page = ((da - vstart[od]) >> U64(PAGE_SHIFT)).astype(np.int64)
                    cuts = np.concatenate([[0], np.flatnonzero(np.diff(od)) + 1, [len(od)]])
                    for x, y in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
                        group[int(od[x])].stored[page[x:y]] = False
                    runs += _cow_runs(pid, da, sp, sa, od)
                    del od, vstart, page, cuts
                total += len(dup)
                del dup, sp, sa, da
            del pos, hit, order, first, inner
            at = np.searchsorted(seen, k[fresh])
            seen = np.insert(seen, at, k[fresh])
            seen_pid = np.insert(seen_pid, at, pid)
            seen_addr = np.insert(seen_addr, at, addr[fresh])
        if runs:
            t.cow = runs
    return total


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
    for first, n_data in runs_of(data_units):
        if first > pos:
            yield Dropped((first - pos) * (unit // PAGE_SIZE))
        yield view[first * unit : (first + n_data) * unit]
        pos = first + n_data
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
    owner_words = strategy in ("pagemap", "mincore-or", "mincore-and")
    for t in tasks:
        for e, span_scan in _scanned(host, t, strategy, show_pfn, zero_pfn):
            info = None
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
            # Every VMA's pagemap is read once: guard/poison markers live in any VMA, and
            # private selection and the pagemap/mincore strategies' owner views need it. A
            # file's own pages come from the object, or the file itself.
            owner = info is not None and e.shared
            backed = e.start in t.objects or e.ino != 0
            if span_scan is None:
                scan = scan_vma(host, t.info.pid, e, strategy, show_pfn, zero_pfn,
                                backed=backed, keep_words=owner and owner_words)
            else:
                scan = span_scan
                if backed and scan.selected is not None:
                    scan.selected = private_selection(strategy, scan.words, show_pfn,
                                                      zero_pfn, True)
            t.guards += scan.guards
            if owner:  # only the pagemap/mincore strategies look at owners' words
                info.owners.append(Owner(t.info.pid, e, scan.words if owner_words else None))
            if scan.selected is not None:
                t.private.append(PrivateVma(e, scan.keys, scan.selected))
    for path, how in referenced.items():
        warn(f"{path}: mapped {' and '.join(sorted(how))}, referenced, not copied: a restore "
             "needs this file at this path, unchanged")
    for info in objects.values():
        info.selected = shared_selection(strategy, host, info.owners, info.handle, info.size)
    return tasks, objects


SPAN_PAGES = PAGEMAP_WINDOW  # VMAs that touch are read and judged together, up to this


def _spans(maps: list[MapEntry]) -> Iterator[list[MapEntry]]:
    """The VMAs in address order, grouped while each starts where the last one ends (a VMA
    larger than SPAN_PAGES alone)."""
    span: list[MapEntry] = []
    n = 0
    for e in maps:
        if span and (span[-1].end != e.start or n + e.npages > SPAN_PAGES):
            yield span
            span, n = [], 0
        span.append(e)
        n += e.npages
    if span:
        yield span


def _scanned(host: Host, t: TaskDump, strategy: str, show_pfn: bool, zero_pfn: int | None
             ) -> Iterator[tuple[MapEntry, VmaScan | None]]:
    """Each VMA of t, with its scan when it was judged in a span of small VMAs that touch
    (selection as if not backed by a file; words kept, views of the span's), or None for a
    VMA alone (a large one, or one without a neighbour), which scan_vma reads window by
    window. A span costs one pagemap read and a few numpy calls: 30,000 one-page VMAs cost
    a syscall and five numpy calls each otherwise (1.3-1.6 s of the dump)."""
    pid = t.info.pid
    for span in _spans(t.maps):
        if len(span) == 1:
            yield span[0], None
            continue
        words = read_pagemap_range(host, pid, span[0].start, span[-1].end)
        idx, keys = cow_keys(words, show_pfn, zero_pfn)
        sel = private_selection(strategy, words, show_pfn, zero_pfn, False)
        markers = bool(len(marker_candidates(words)))
        first = np.cumsum([0] + [e.npages for e in span], dtype=np.int64).astype(U64)
        cut = np.searchsorted(idx, first).tolist()  # each VMA's keys: one search for all
        # page indices made relative to each VMA's first page, in one pass
        rel = np.stack([idx - np.repeat(first[:-1], np.diff(cut)), keys])
        for i, e in enumerate(span):
            o = int(first[i])
            w = words[o:o + e.npages]
            guards = marker_runs(pid, e, w, show_pfn) if markers else []
            yield e, VmaScan(None if e.shared else sel[o:o + e.npages],
                             None if e.shared else rel[:, cut[i]:cut[i + 1]], guards, w)


def _object_name(e: MapEntry) -> str:
    name = e.path.removesuffix(" (deleted)")
    return name.removeprefix("/memfd:") if e.object_kind == "memfd" else name


def dump(host: Host, root: int, out: str, strategy: str = "auto", *, profile: str = "",
         compress: str | None = None, level: int = 3, threads: int = 0, force: bool = False,
         warn: Callable[[str], None] | None = None, tree: bool = True,
         truth: bool = True, sync: bool = True,
         leave_out: frozenset[str] = frozenset(), for_criu: bool = False,
         progress: Progress | None = None) -> DumpSummary:
    """Dump the tree rooted at root into the image set directory out; sync=False leaves
    the files to the kernel's writeback (ImageSetWriter). leave_out: fd kinds (e.g.
    "socket") left out of the images instead of refused. for_criu=True writes what
    CRIU 4.2's restore needs beyond dumper's format: every task's COW-shared pages in its
    own pagemap (CRIU reads no cow-PID.img: an inherited page missing from a child's
    pagemap is zeroed) and the whole [vdso] (its restorer parses the dumped vdso's ELF).
    progress hears the phases."""
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
    tell = progress or Progress()
    tell.phase("freezing and collecting", 0)
    freezing = host.freeze_tree(root) if tree else host.freeze([root])
    t_freeze = time.perf_counter()
    with freezing as frozen:
        infos = frozen if tree else tree_of(host, root, tree=False)
        tasks, objects = collect(host, infos, strategy, note)
        try:
            states, own_ns = host.task_states(infos, leave_out)  # threads, registers, files
            if not for_criu:
                find_cow(tasks, host.show_pfn(), host.zero_pfn())
            tell.phase("writing pages", PAGE_SIZE * _selected_pages(tasks, objects))
            writer = ImageSetWriter(out, force=force, compress=compress, level=level,
                                    threads=threads, strategy=strategy, profile=profile,
                                    host_kind=host.kind, root_pid=root, sync=sync)
            with writer:
                shared_pages = _write_objects(writer, objects, tell)
                private_pages, cow_pages = _write_tasks(host, writer, tasks, note, truth,
                                                        {s.pid: s for s in states}, own_ns,
                                                        for_criu, tell)
                unreadable = list(writer.unreadable)
            written = _dir_bytes(out)
        finally:
            for info in objects.values():
                info.handle.close()
    frozen_s = time.perf_counter() - t_freeze  # seizing the first task to thawing the last
    tell.done()
    return DumpSummary(
        path=out, strategy=strategy, profile=profile or host.kind, tasks=len(tasks),
        vmas=sum(len(t.maps) for t in tasks), private_pages=private_pages, cow_pages=cow_pages,
        shared_objects=len(objects), shared_pages=shared_pages, bytes_written=written,
        seconds=time.perf_counter() - t0, warnings=warnings, unreadable=unreadable,
        frozen_seconds=frozen_s,
    )


def _write_objects(writer: ImageSetWriter, objects: dict[tuple[int, int], SharedInfo],
                   tell: Progress) -> int:
    total = 0
    for info in objects.values():
        runs = [(a << PAGE_SHIFT, n) for a, n in runs_of(info.selected)]
        huge = info.page_size if info.page_size != PAGE_SIZE else 0
        pages_id = writer.add_shared_object(
            SharedObject(shmid=info.shmid, kind=info.kind, size=info.size, dev=info.dev,
                         ino=info.ino, name=info.name, page_size=info.page_size),
            runs, tell.counted(read_runs(lambda a, b, h=info.handle: h.pread(a, b - a), runs,
                                         huge)),
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


# The x86_64 vsyscall page (arch/x86/entry/vsyscall: get_gate_vma): not in the mm, but in
# every task's maps, and CRIU records it as a VMA without pages (VMA_AREA_VSYSCALL); crit's
# explorers read mm-PID.img's VMA list, which a task must not leave empty.
GATE_VMA = Vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 4, MAP_PRIVATE | MAP_ANONYMOUS,
               status=VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE)


def _write_tasks(host: Host, writer: ImageSetWriter, tasks: list[TaskDump],
                 warn: Callable[[str], None], truth: bool = True,
                 states: dict[int, TaskState] | None = None,
                 own_ns: dict[str, int] | None = None, for_criu: bool = False,
                 tell: Progress | None = None) -> tuple[int, int]:
    """Every task's images; returns (private pages stored, COW pages recorded)."""
    total = cow_total = 0
    states = states or {}
    ns = criustate.NsIds()
    if any(s.live for s in states.values()):
        writer.root_ids = criustate.own_ids(ns, own_ns or {}, states.values())
    for t in tasks:
        pid = t.info.pid
        vmas = [_vma_record(e, t.objects.get(e.start), t.huge.get(e.start, 0))
                for e in t.maps]
        st = states.get(pid)
        gate = [GATE_VMA] if getattr(host, "gate_area", lambda p: True)(pid) else []
        if for_criu:  # CRIU 4.2 re-installs guards from fake VMAs after the real ones
            gate += [Vma(g.vaddr, g.vaddr + g.nr_pages * PAGE_SIZE, 0, 0,
                         status=VMA_AREA_GUARD) for g in t.guards if g.kind == "guard"]
        if st is not None and st.live:
            for r in criustate.task_images(writer, st, ns, t.info, t.maps, vmas, gate):
                warn(r)
            if st.state == DEAD:
                continue
        else:
            writer.add_task(pid, t.info.ppid, t.info.comm, vmas + gate,
                            pgid=t.info.pgid or None, sid=t.info.sid or None,
                            exe=getattr(host, "exe", lambda p: "")(pid))
        runs = []
        vdso = st.vdso if st is not None and for_criu else None
        for pv in t.private:
            mask = pv.stored if pv.stored is not None else pv.selected
            if vdso is not None and pv.vma.start == vdso[0]:
                mask = np.ones(pv.vma.npages, dtype=bool)  # whole, as CRIU stores it
            runs += [(pv.vma.start + (a << PAGE_SHIFT), n) for a, n in runs_of(mask)]

        def read(a: int, b: int, p: int = pid, vdso=vdso) -> bytes:
            if vdso is not None and vdso[0] <= a < vdso[0] + len(vdso[1]):
                return vdso[1][a - vdso[0] : b - vdso[0]]
            return host.read_memory(p, a, b)

        pages_id = writer.add_private_pages(
            pid, runs, (tell or Progress()).counted(read_runs(read, _adjacent_joined(runs, vdso))))
        total += writer.pages_stored(pages_id)
        cow = t.cow if vdso is None else _cow_outside(t.cow, vdso[0], vdso[0] + len(vdso[1]))
        if cow:
            writer.add_cow(pid, cow)
            cow_total += sum(c.nr_pages for c in cow)
        if t.guards:
            writer.add_guards(pid, t.guards)
        if truth:  # the ground truth a model restore is verified against (truth-PID.img)
            writer.add_truth(pid, host.truth(pid), algo=host.truth_algo, wait=False)
    if states:
        criustate.write_pipes_data(writer, ns)
        criustate.write_seccomp(writer, ns)
        criustate.write_sk_queues(writer, ns)
        criustate.write_tty_info(writer, ns)
    return total, cow_total


def _adjacent_joined(runs: list[tuple[int, int]], vdso: tuple[int, bytes] | None
                     ) -> list[tuple[int, int]]:
    """The (address, pages) runs to read, runs that touch joined: the pagemap keeps one
    run per VMA, but one read may cross VMAs (access_remote_vm walks them), and 30,000
    one-page VMAs read one by one cost a syscall round each. The vdso stays on its own
    (read from the copy taken while frozen)."""
    out: list[tuple[int, int]] = []
    lo, hi = (vdso[0], vdso[0] + len(vdso[1])) if vdso is not None else (0, 0)
    for a, n in runs:
        if (out and out[-1][0] + (out[-1][1] << PAGE_SHIFT) == a
                and not lo <= a < hi and not lo <= out[-1][0] < hi):
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((a, n))
    return out


def _cow_outside(runs: list[CowRun], lo: int, hi: int) -> list[CowRun]:
    """The COW runs without their pages in [lo, hi) (a [vdso] each task stores whole)."""
    out = []
    for c in runs:
        end = c.vaddr + c.nr_pages * PAGE_SIZE
        for a, b in ((c.vaddr, min(end, lo)), (max(c.vaddr, hi), end)):
            if a < b:
                out.append(CowRun(c.pid, a, (b - a) // PAGE_SIZE, c.src_pid,
                                  c.src_vaddr + (a - c.vaddr)))
    return out


def _selected_pages(tasks: list[TaskDump], objects: dict[tuple[int, int], SharedInfo]) -> int:
    """Pages the writing phase will store (for progress)."""
    own = sum(int(np.count_nonzero(pv.stored if pv.stored is not None else pv.selected))
              for t in tasks for pv in t.private)
    return own + sum(int(np.count_nonzero(i.selected)) for i in objects.values())


def _dir_bytes(path: str) -> int:
    import os

    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
