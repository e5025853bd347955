"""Verify: the observable memory recorded at dump time (truth-PID.img) against what a host
shows now (after a restore, or a live tree that is still frozen).

A page is lost when some task of the tree, reading that address, would get other bytes than
at dump time (SCENARIOS.md "What lost means"). Losses are counted per object page for
shared memory (a page of an object counts once, however many tasks map it) and per task
page for private memory; the report names pid, address, object and offset, and the expected
and found digests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    from dumper.images.validate import check_for_verify

    check_for_verify(images, host)  # the whole set and its truth's digests, before reading
    algo = {t.algo for t in images.truth.values()} if hasattr(images, "truth") else set()
    if algo and host.truth_algo not in algo:
        raise ValueError(f"{images.path}: truth digests are {sorted(algo)}, but this host "
                         f"digests with {host.truth_algo}")
    report = VerifyReport()
    seen_obj: set[tuple[int, int]] = set()
    for t in images.tasks.values():
        hpid = (pid_map or {}).get(t.pid, t.pid)
        try:
            now = dict(host.truth(hpid))
        except Exception:  # the task is gone: everything it had is lost
            now = {}
        for vaddr, digests in images.iter_truth(t.pid):
            exp = np.asarray(digests, dtype=np.uint64)
            found = _find(now, vaddr, len(exp))
            bad = np.nonzero(exp != found[0])[0] if found is not None else np.arange(len(exp))
            report.pages_checked += len(exp)
            for i in bad:
                addr = vaddr + (int(i) << PAGE_SHIFT)
                vma = next((v for v in t.vmas if v.start <= addr < v.end), None)
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


def _find(now: dict[int, np.ndarray], vaddr: int, n: int
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """The host's digests for [vaddr, vaddr + n pages) and which of them are mapped."""
    out = np.zeros(n, dtype=np.uint64)
    mapped = np.zeros(n, dtype=bool)
    end = vaddr + n * PAGE_SIZE
    for start, d in now.items():
        stop = start + len(d) * PAGE_SIZE
        a, b = max(start, vaddr), min(stop, end)
        if a < b:
            i, j = (a - vaddr) >> PAGE_SHIFT, (b - vaddr) >> PAGE_SHIFT
            k = (a - start) >> PAGE_SHIFT
            out[i:j] = d[k : k + j - i]
            mapped[i:j] = True
    if not mapped.any():
        return None
    out[~mapped] = ~np.uint64(0) ^ np.uint64(1)  # never equal to a recorded digest by chance
    return out, mapped


VIEW_CHUNK = 1 << 20  # bytes of a run read at a time by image_view


def image_view(images: ImageSet, pid: int, vma_start: int, npages: int) -> np.ndarray:
    """Page digests (XXH3-64) of what a restore from the set gives a task's pages: its own or COW
    page, the object's page for shared and object-backed private pages, the referenced file's
    page for a regular file's mapping (read from the file: a restore maps it), zeros
    otherwise, and the unreadable digest over guard and poison runs (a read faults).

    The VMA's own runs (the task's pagemap, or its object's) are read in big pieces; only the
    pages left (COW runs, an object or a file behind a private mapping) are resolved one by
    one as a restore would (ImageSet.read_page)."""
    from dumper.images.checksums import UNREADABLE_DIGEST, page_digest, page_digests

    zero = page_digest(bytes(PAGE_SIZE))
    t = images.tasks[pid]
    vma = next(v for v in t.vmas if v.start == vma_start)
    vma_end = vma_start + npages * PAGE_SIZE
    out = np.full(npages, zero, dtype=np.uint64)
    done = np.zeros(npages, dtype=bool)
    runs, pages_id, shift = [], 0, 0  # shift: a run's vaddr + shift is an address here
    if vma.private:
        runs, pages_id = t.pagemap, t.pages_id
    elif vma.obj is not None and vma.obj in images.objects:
        obj = images.objects[vma.obj]
        runs, pages_id, shift = obj.pagemap, obj.pages_id, vma.start - vma.pgoff
    for run in runs:
        a, b = max(run.vaddr + shift, vma_start), min(run.end() + shift, vma_end)
        if a >= b or not run.present:
            continue
        reader = images.reader(pages_id)
        for c in range(a, b, VIEW_CHUNK):
            d = min(b, c + VIEW_CHUNK)
            data = reader.read(run.offset + (c - shift - run.vaddr), d - c)
            i = (c - vma_start) // PAGE_SIZE
            out[i : i + (d - c) // PAGE_SIZE] = page_digests(data)
        done[(a - vma_start) // PAGE_SIZE : (b - vma_start) // PAGE_SIZE] = True
    if not vma.private:
        done[:] = vma.obj is not None or not vma.path  # the rest: holes, zeros
    elif vma.obj is None and not vma.path:  # anonymous: only COW runs hold the rest
        cow = np.zeros(npages, dtype=bool)
        for c in t.cow:
            a, b = max(c.vaddr, vma_start), min(c.vaddr + c.nr_pages * PAGE_SIZE, vma_end)
            if a < b:
                cow[(a - vma_start) // PAGE_SIZE : (b - vma_start) // PAGE_SIZE] = True
        done |= ~cow
    for i in np.nonzero(~done)[0].tolist():
        out[i] = page_view(images, pid, vma, vma_start + i * PAGE_SIZE)
    for g in t.guards:
        a = max(g.vaddr, vma_start)
        b = min(g.vaddr + g.nr_pages * PAGE_SIZE, vma_end)
        if a < b:
            out[(a - vma_start) // PAGE_SIZE : (b - vma_start) // PAGE_SIZE] = UNREADABLE_DIGEST
    return out


def page_view(images: ImageSet, pid: int, vma: Any, addr: int) -> int:
    """image_view for one page, resolved alone as a restore would (ImageSet.read_page);
    guard and poison runs aside."""
    from dumper.images.checksums import UNREADABLE_DIGEST, page_digest

    look = images.read_page(pid, addr)
    if look.data is not None:
        return page_digest(look.data)
    if look.source == "none" and vma.obj is not None and vma.obj in images.objects:
        off = vma.pgoff + addr - vma.start  # a private mapping's untouched object page
        obj = images.objects[vma.obj]
        for run in obj.pagemap:
            if run.present and run.vaddr <= off < run.end():
                return page_digest(images.reader(obj.pages_id).read(
                    run.offset + off - run.vaddr, PAGE_SIZE))
    elif vma.path and look.source in ("none", "hole"):
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
    from dumper.images.validate import check_set

    check_set(images, live=True)  # the whole set, before its VMAs size any array
    report = VerifyReport()
    seen_obj: set[tuple[int, int]] = set()
    for t in images.tasks.values():
        hpid = (pid_map or {}).get(t.pid, t.pid)
        live = dict(host.truth(hpid))
        rseq = host.rseq_areas(hpid)
        for v in t.vmas:
            n = (v.end - v.start) // PAGE_SIZE
            restored = image_view(images, t.pid, v.start, n)
            found = _find(live, v.start, n)
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
