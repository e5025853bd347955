"""Verify: the observable memory recorded at dump time (truth-PID.img) against what a host
shows now (after a restore, or a live tree that is still frozen).

A page is lost when some task of the tree, reading that address, would get other bytes than
at dump time (SCENARIOS.md "What lost means"). Losses are counted per object page for
shared memory (a page of an object counts once, however many tasks map it) and per task
page for private memory; the report names pid, address, object and offset, and the expected
and found digests.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dumper.images.flags import VMA_AREA_VSYSCALL
from dumper.images.reader import ImageSet
from dumper.kabi import PAGE_SHIFT, PAGE_SIZE


@dataclass(frozen=True)
class LostPage:
    pid: int
    addr: int
    expected: int
    found: int | None  # None: the address is not mapped any more
    shmid: int | None = None  # the shared object, for shared pages
    offset: int | None = None  # offset in the object

    def describe(self) -> str:
        where = (f"object {self.shmid} offset {self.offset:#x}" if self.shmid is not None
                 else "private")
        found = "unmapped" if self.found is None else f"{self.found:016x}"
        return (f"pid {self.pid} {self.addr:#x} ({where}): expected {self.expected:016x}, "
                f"found {found}")


@dataclass
class VerifyReport:
    pages_checked: int = 0
    lost: list[LostPage] = field(default_factory=list)  # one per lost unit (see below)
    rseq_only: int = 0  # live pages that differed only inside a thread's struct rseq

    @property
    def private_lost(self) -> int:
        return sum(1 for p in self.lost if p.shmid is None)

    @property
    def shared_lost(self) -> int:
        return sum(1 for p in self.lost if p.shmid is not None)

    @property
    def ok(self) -> bool:
        return not self.lost

    def line(self) -> str:
        rseq = (f" ({self.rseq_only} differing only in struct rseq, which the kernel "
                "rewrites)" if self.rseq_only else "")
        if self.ok:
            return f"verified {self.pages_checked} pages{rseq}: nothing lost"
        return (f"LOST {len(self.lost)} pages ({self.private_lost} private, "
                f"{self.shared_lost} shared-object pages) of {self.pages_checked} checked"
                f"{rseq}")


def verify(images: ImageSet, host: Any, pid_map: dict[int, int] | None = None) -> VerifyReport:
    """Compare the set's truth with host.truth() for every task (pid_map: image pid -> host
    pid when they differ)."""
    algo = {t.algo for t in images.truth.values()} if hasattr(images, "truth") else set()
    if algo and host.truth_algo not in algo:
        raise ValueError(f"{images.path}: truth digests are {sorted(algo)}, but this host "
                         f"digests with {host.truth_algo}")
    report = VerifyReport()
    seen_obj: set[tuple[int, int]] = set()
    view = SetView(images)
    for t in images.tasks.values():
        hpid = (pid_map or {}).get(t.pid, t.pid)
        try:
            now = Live(host.truth(hpid))
        except Exception:  # the task is gone: everything it had is lost
            now = Live([])
        for vaddr, digests in images.iter_truth(t.pid):
            exp = np.asarray(digests, dtype=np.uint64)
            found = now.find(vaddr, len(exp))
            bad = np.nonzero(exp != found[0])[0] if found is not None else np.arange(len(exp))
            report.pages_checked += len(exp)
            for i in bad:
                addr = vaddr + (int(i) << PAGE_SHIFT)
                vma = view.vma_of(t.pid, addr)
                shmid = offset = None
                if vma is not None and not vma.private and vma.obj is not None:
                    shmid, offset = vma.obj, vma.pgoff + addr - vma.start
                    if (shmid, offset) in seen_obj:
                        continue
                    seen_obj.add((shmid, offset))
                report.lost.append(LostPage(
                    t.pid, addr, int(exp[i]),
                    None if found is None or not found[1][i] else int(found[0][i]),
                    shmid, offset))
    return report


class Live:
    """A host's digests of a task, VMA by VMA ((start, digests) in address order), looked up
    by bisection."""

    def __init__(self, runs: list[tuple[int, np.ndarray]]) -> None:
        self.runs = sorted(runs, key=lambda r: r[0])
        self.starts = [a for a, _ in self.runs]

    def find(self, vaddr: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The digests for [vaddr, vaddr + n pages) and which of them are mapped."""
        out = np.zeros(n, dtype=np.uint64)
        mapped = np.zeros(n, dtype=bool)
        end = vaddr + n * PAGE_SIZE
        for start, d in _spans(self.starts, self.runs, vaddr, end,
                               lambda r: r[0] + len(r[1]) * PAGE_SIZE):
            stop = start + len(d) * PAGE_SIZE
            a, b = max(start, vaddr), min(stop, end)
            i, j = (a - vaddr) >> PAGE_SHIFT, (b - vaddr) >> PAGE_SHIFT
            k = (a - start) >> PAGE_SHIFT
            out[i:j] = d[k : k + j - i]
            mapped[i:j] = True
        if not mapped.any():
            return None
        out[~mapped] = ~np.uint64(0) ^ np.uint64(1)  # never equal to a recorded digest by chance
        return out, mapped


VIEW_CHUNK = 1 << 20  # bytes of a run read at a time by SetView


def _spans(starts: list[int], items: list, lo: int, hi: int, end=None):
    """The items (sorted by start, not overlapping) that overlap [lo, hi), by bisection."""
    i = max(0, bisect.bisect_right(starts, lo) - 1)
    while i < len(items) and starts[i] < hi:
        it = items[i]
        if end(it) > lo:
            yield it
        i += 1


class SetView:
    """Page digests (XXH3-64) of what a restore from the set gives each task's pages: its own
    or COW page, the object's page for shared and object-backed private pages, the
    referenced file's page for a regular file's mapping (read from the file: a restore maps
    it), zeros otherwise, and the unreadable digest over guard and poison runs (a read
    faults) and pages the dump could not read (unreadable.img).

    Built once per verify: runs, COW runs, guards and VMAs are found by bisection and read in
    big pieces, and a task's own digests are kept for the COW runs of the tasks forked from
    it, so a set of 30,000 VMAs or of 1 GiB of COW-shared pages is seen in linear time. Only
    a COW run whose source page is itself another task's (a chain) is resolved page by page,
    as a restore would (ImageSet.read_page)."""

    def __init__(self, images: ImageSet) -> None:
        from dumper.images.checksums import UNREADABLE_DIGEST, page_digest

        self.images = images
        self.zero = page_digest(bytes(PAGE_SIZE))
        self.unreadable_digest = UNREADABLE_DIGEST
        self._own: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._index: dict[int, dict[str, Any]] = {}
        self._unreadable: dict[int | None, list] = {}
        for u in images.unreadable:
            self._unreadable.setdefault(u.pid if u.pid else -int(u.shmid or 0), []).append(u)

    def _ix(self, pid: int) -> dict[str, Any]:
        ix = self._index.get(pid)
        if ix is None:
            t = self.images.tasks[pid]
            cow = sorted(t.cow, key=lambda c: c.vaddr)
            guards = sorted(t.guards, key=lambda g: g.vaddr)
            ix = self._index[pid] = {
                "vmas": [v.start for v in t.vmas], "runs": [r.vaddr for r in t.pagemap],
                "cow": cow, "cow_starts": [c.vaddr for c in cow],
                "guards": guards, "guard_starts": [g.vaddr for g in guards],
            }
        return ix

    def vma_of(self, pid: int, addr: int) -> Any:
        ix = self._ix(pid)
        vmas = self.images.tasks[pid].vmas
        i = bisect.bisect_right(ix["vmas"], addr) - 1
        return vmas[i] if i >= 0 and addr < vmas[i].end else None

    def _read_runs(self, runs, starts, pages_id: int, shift: int, lo: int, hi: int,
                   out: np.ndarray, have: np.ndarray) -> None:
        """Digest the present runs' pages inside [lo, hi) (a run's vaddr + shift is an
        address) into out/have, indexed from lo."""
        from dumper.images.checksums import page_digests

        reader = None
        for run in _spans(starts, runs, lo - shift, hi - shift, lambda r: r.end()):
            a, b = max(run.vaddr + shift, lo), min(run.end() + shift, hi)
            if a >= b or not run.present:
                continue
            reader = reader or self.images.reader(pages_id)
            for c in range(a, b, VIEW_CHUNK):
                d = min(b, c + VIEW_CHUNK)
                data = reader.read(run.offset + (c - shift - run.vaddr), d - c)
                i = (c - lo) // PAGE_SIZE
                out[i : i + (d - c) // PAGE_SIZE] = page_digests(data)
            have[(a - lo) // PAGE_SIZE : (b - lo) // PAGE_SIZE] = True

    def own(self, pid: int, vma: Any) -> tuple[np.ndarray, np.ndarray]:
        """Digests of the VMA's pages stored in pid's own pagemap, and which those are."""
        key = (pid, vma.start)
        got = self._own.get(key)
        if got is None:
            n = (vma.end - vma.start) // PAGE_SIZE
            out, have = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
            t = self.images.tasks[pid]
            self._read_runs(t.pagemap, self._ix(pid)["runs"], t.pages_id, 0, vma.start,
                            vma.end, out, have)
            got = self._own[key] = (out, have)
        return got

    def _object(self, vma: Any, out: np.ndarray, want: np.ndarray) -> None:
        """The VMA's object pages where wanted: data runs read, holes zeros."""
        obj = self.images.objects[vma.obj]
        runs = list(obj.pagemap)
        have = np.zeros(len(out), dtype=bool)
        got = np.zeros(len(out), dtype=np.uint64)
        self._read_runs(runs, [r.vaddr for r in runs], obj.pages_id, vma.start - vma.pgoff,
                        vma.start, vma.end, got, have)
        out[want] = np.where(have[want], got[want], self.zero)

    def _cow_mask(self, pid: int, vma: Any) -> np.ndarray:
        ix = self._ix(pid)
        mask = np.zeros((vma.end - vma.start) // PAGE_SIZE, dtype=bool)
        for c in _spans(ix["cow_starts"], ix["cow"], vma.start, vma.end,
                        lambda c: c.vaddr + c.nr_pages * PAGE_SIZE):
            a, b = max(c.vaddr, vma.start), min(c.vaddr + c.nr_pages * PAGE_SIZE, vma.end)
            mask[(a - vma.start) // PAGE_SIZE : (b - vma.start) // PAGE_SIZE] = True
        return mask

    def _cow(self, t: Any, vma: Any, out: np.ndarray, done: np.ndarray) -> None:
        """COW runs inside the VMA, from their source task's own digests."""
        ix = self._ix(t.pid)
        for c in _spans(ix["cow_starts"], ix["cow"], vma.start, vma.end,
                        lambda c: c.vaddr + c.nr_pages * PAGE_SIZE):
            a = max(c.vaddr, vma.start)
            b = min(c.vaddr + c.nr_pages * PAGE_SIZE, vma.end)
            i, j = (a - vma.start) // PAGE_SIZE, (b - vma.start) // PAGE_SIZE
            src_lo = c.src_vaddr + (a - c.vaddr)
            svma = self.vma_of(c.src_pid, src_lo) if c.src_pid in self.images.tasks else None
            if svma is None or src_lo + (b - a) > svma.end:
                continue  # left for page_view
            sd, sh = self.own(c.src_pid, svma)
            k = (src_lo - svma.start) // PAGE_SIZE
            out[i:j] = np.where(sh[k : k + j - i], sd[k : k + j - i], out[i:j])
            done[i:j] |= sh[k : k + j - i]

    def _file(self, vma: Any, out: np.ndarray, want: np.ndarray) -> None:
        """A referenced file's pages where wanted, read in one piece from the file."""
        from dumper.images.checksums import page_digests

        idx = np.nonzero(want)[0]
        if not len(idx):
            return
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        try:
            with open(vma.path.removesuffix(" (deleted)"), "rb") as f:
                f.seek(vma.pgoff + lo * PAGE_SIZE)
                data = f.read((hi - lo) * PAGE_SIZE)
        except OSError:
            data = b""
        whole = len(data) // PAGE_SIZE  # pages read whole; one partial page may follow
        tail = data[whole * PAGE_SIZE :]
        if whole:
            rel = idx - lo
            inside = rel < whole
            out[idx[inside]] = page_digests(data[: whole * PAGE_SIZE], rel[inside])
        for i in idx[idx - lo >= whole].tolist():
            if i - lo == whole and tail:  # the file's last page: zeros past EOF
                out[i] = page_digests(tail.ljust(PAGE_SIZE, b"\0"))[0]
            else:  # SIGBUS past EOF, or no file to map
                out[i] = self.unreadable_digest

    def vma(self, pid: int, vma: Any) -> np.ndarray:
        """The digest of every page of one VMA of pid."""
        t = self.images.tasks[pid]
        n = (vma.end - vma.start) // PAGE_SIZE
        out = np.full(n, self.zero, dtype=np.uint64)
        every = np.ones(n, dtype=bool)
        has_obj = vma.obj is not None and vma.obj in self.images.objects
        if vma.private:
            own, have = self.own(pid, vma)
            out[have] = own[have]
            done = have.copy()
            cow = self._cow_mask(pid, vma) if t.cow else np.zeros(n, dtype=bool)
            if t.cow:
                self._cow(t, vma, out, done)
            rest = ~done & ~cow  # neither its own nor another task's: object, file, zeros
            if has_obj:
                self._object(vma, out, rest)
            elif vma.path:
                self._file(vma, out, rest)
            done |= rest
            for i in np.nonzero(~done)[0].tolist():  # a COW chain: as a restore resolves it
                out[i] = page_view(self.images, pid, vma, vma.start + i * PAGE_SIZE)
        elif has_obj:
            self._object(vma, out, every)
        elif vma.path:
            self._file(vma, out, every)
        self._unreadable_runs(pid, vma, out)
        return out

    def _unreadable_runs(self, pid: int, vma: Any, out: np.ndarray) -> None:
        ix = self._ix(pid)
        spans = [(g.vaddr, g.nr_pages) for g in _spans(
            ix["guard_starts"], ix["guards"], vma.start, vma.end,
            lambda g: g.vaddr + g.nr_pages * PAGE_SIZE)]
        if vma.private:
            spans += [(u.vaddr, u.nr_pages) for u in self._unreadable.get(pid, ())]
        if vma.obj is not None:
            spans += [(vma.start + u.vaddr - vma.pgoff, u.nr_pages)
                      for u in self._unreadable.get(-int(vma.obj), ())]
        for lo, npages in spans:
            a, b = max(lo, vma.start), min(lo + npages * PAGE_SIZE, vma.end)
            if a < b:
                out[(a - vma.start) // PAGE_SIZE : (b - vma.start) // PAGE_SIZE] = (
                    self.unreadable_digest)


def image_view(images: ImageSet, pid: int, vma_start: int, npages: int) -> np.ndarray:
    """SetView of one VMA (the one starting at vma_start, of npages pages)."""
    view = SetView(images)
    vma = view.vma_of(pid, vma_start)
    assert vma is not None and vma.start == vma_start and vma.npages == npages
    return view.vma(pid, vma)


def page_view(images: ImageSet, pid: int, vma: Any, addr: int) -> int:
    """image_view for one page, resolved alone as a restore would (ImageSet.read_page);
    guard and poison runs aside."""
    from dumper.images.checksums import UNREADABLE_DIGEST, page_digest

    look = images.read_page(pid, addr)  # a private mapping's untouched object page too
    if look.data is not None:
        return page_digest(look.data)
    if vma.path and vma.obj is None and look.source in ("none", "hole"):
        data = _file_page(vma.path, vma.pgoff + addr - vma.start)
        return UNREADABLE_DIGEST if data is None else page_digest(data)
    return page_digest(bytes(PAGE_SIZE))


def _rseq_only(images: ImageSet, host: Any, pid: int, hpid: int, addr: int,
               areas: list[tuple[int, int]]) -> bool:
    """Whether the live page at addr and the set's differ only inside struct rseq areas
    (Host.rseq_areas): those bytes are the kernel's, rewritten whenever a thread resumes on
    another CPU, so a dump of a task that ran nothing can still differ there."""
    spans = [(max(a, addr) - addr, min(a + n, addr + PAGE_SIZE) - addr) for a, n in areas
             if a < addr + PAGE_SIZE and a + n > addr]
    if not spans:
        return False
    try:
        live = bytearray(host.read_memory(hpid, addr, addr + PAGE_SIZE))
    except OSError:
        return False
    look = images.read_page(pid, addr)
    vma = next(v for v in images.tasks[pid].vmas if v.start <= addr < v.end)
    if look.data is None and (vma.obj is not None or vma.path):
        return False  # the restore's page comes from an object or a file: not rseq's case
    saved = bytearray(look.data or bytes(PAGE_SIZE))  # anonymous and not stored: zeros
    for lo, hi in spans:
        live[lo:hi] = saved[lo:hi] = bytes(hi - lo)
    return live == saved


def _file_page(path: str, offset: int) -> bytes | None:
    """A regular file's page as a mapping reads it (zeros past EOF within the last page);
    None where the read would fault (past the end) or the file cannot be opened."""
    try:
        with open(path.removesuffix(" (deleted)"), "rb") as f:
            f.seek(offset)
            data = f.read(PAGE_SIZE)
    except OSError:
        return None
    if not data:
        return None  # SIGBUS past EOF
    return data.ljust(PAGE_SIZE, b"\0")


def verify_live(images: ImageSet, host: Any, pid_map: dict[int, int] | None = None
                ) -> VerifyReport:
    """Compare what a restore from the set would give every task with what the live tree
    (frozen, or unchanged since the dump) reads now: digests of real bytes on both sides."""
    report = VerifyReport()
    seen_obj: set[tuple[int, int]] = set()
    view = SetView(images)
    for t in images.tasks.values():
        hpid = (pid_map or {}).get(t.pid, t.pid)
        live = Live(host.truth(hpid))
        rseq = host.rseq_areas(hpid)
        for v in t.vmas:
            if v.status & VMA_AREA_VSYSCALL:
                continue  # CRIU sets list [vsyscall]: the kernel's fixed page, no one's data
            n = (v.end - v.start) // PAGE_SIZE
            restored = view.vma(t.pid, v)
            found = live.find(v.start, n)
            report.pages_checked += n
            bad = np.arange(n) if found is None else np.nonzero(restored != found[0])[0]
            for i in bad:
                addr = v.start + int(i) * PAGE_SIZE
                if v.private and _rseq_only(images, host, t.pid, hpid, addr, rseq):
                    report.rseq_only += 1
                    continue
                shmid = offset = None
                if not v.private and v.obj is not None:
                    shmid, offset = v.obj, v.pgoff + addr - v.start
                    if (shmid, offset) in seen_obj:
                        continue
                    seen_obj.add((shmid, offset))
                # Expected: what the task reads now; found: what a restore from the set gives.
                report.lost.append(LostPage(
                    t.pid, addr, int(found[0][i]) if found is not None else 0,
                    int(restored[i]), shmid, offset))
    return report
