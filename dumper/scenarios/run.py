"""Running a scenario on the model: build the state up to the dump line, observe it, and
dump / restore / verify it with a strategy under a profile."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dumper.images.reader import ImageSet
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
    PAGE_SIZE,
    PM_PRESENT,
    PM_SWAP,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    SEEK_DATA,
    pagemap_flag_string,
)
from dumper.model import Model, ModelError
from dumper.model.host import ModelHost, ModelTarget
from dumper.model.kernels import load_profile
from dumper.model.observe import shmem_file_llseek
from dumper.model.shmem import PC_PAGE, PC_SWAP, pc_kinds, pc_values
from dumper.model.state import F_UPTODATE, PFN_BASE, Kernel
from dumper.scenarios.format import Op, Scenario, ScenarioError
from dumper.select import runs_of

ADVICE = {
    "dontneed": MADV_DONTNEED, "pageout": MADV_PAGEOUT, "remove": MADV_REMOVE,
    "populate-read": MADV_POPULATE_READ, "populate-write": MADV_POPULATE_WRITE,
    "guard-install": MADV_GUARD_INSTALL, "guard-remove": MADV_GUARD_REMOVE,
    "free": MADV_FREE, "cold": MADV_COLD, "dontfork": MADV_DONTFORK, "dofork": MADV_DOFORK,
    "wipeonfork": MADV_WIPEONFORK, "keeponfork": MADV_KEEPONFORK,
    "hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE,
}
PROT = {"none": PROT_NONE, "r": PROT_READ, "rw": PROT_READ | PROT_WRITE}


@dataclass
class World:
    """A scenario's model with its names resolved: tasks, regions per task, fds per task."""

    sc: Scenario
    model: Model
    pids: dict[str, int] = field(default_factory=dict)
    regions: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    fds: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # lines a lenient build skipped

    def region(self, task: str, name: str, line: int) -> tuple[int, int]:
        r = self.regions.get(task, {}).get(name)
        if r is None:
            raise ScenarioError(self.sc.path, line, f"task {task} has no region {name!r}")
        return r

    def page_runs(self, task: str, name: str, pages, line: int) -> list[tuple[int, int]]:
        """(address, length) runs of a region's pages."""
        addr, n = self.region(task, name, line)
        if pages == "all":
            return [(addr, n * PAGE_SIZE)]
        if max(pages) >= n:
            raise ScenarioError(self.sc.path, line, f"page {max(pages)} is outside task "
                                f"{task}'s region {name!r} ({n} pages)")
        mask = np.zeros(n, dtype=bool)
        mask[list(pages)] = True
        return [(addr + a * PAGE_SIZE, k * PAGE_SIZE) for a, k in runs_of(mask)]

    def fd(self, task: str, name: str, line: int) -> int:
        fd = self.fds.get(task, {}).get(name)
        if fd is None:
            raise ScenarioError(self.sc.path, line, f"task {task} has no fd {name!r}")
        return fd


def build(sc: Scenario, profile, lenient: bool = False) -> World:
    """Run the scenario's operations up to its dump line on a fresh model. lenient: an
    operation the kernel refuses (or a task takes a signal for) is skipped, as a random
    program's would be; otherwise it is an error naming the line."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    m = Model(prof, swap=sc.swap != "off", swap_sync=sc.swap != "async", thp=sc.thp,
              hugepages=sc.hugepages, shmem_folio_pages=sc.shmem_folio)
    w = World(sc, m)
    w.pids[sc.root] = m.spawn(sc.root)
    w.regions[sc.root], w.fds[sc.root] = {}, {}
    for op in sc.ops:
        try:
            apply(w, op)
        except (ModelError, ScenarioError) as e:
            if lenient:
                w.skipped.append(op.line)
                continue
            if isinstance(e, ScenarioError):
                raise
            raise ScenarioError(sc.path, op.line, f"{op.name} failed under {prof.name}: {e}"
                                ) from None
    return w


def apply(w: World, op: Op) -> None:
    m, a, o, n = w.model, op.args, op.opts, op.line
    pid = w.pids.get(a[0]) if a else None
    if op.name == "fork":
        w.pids[a[1]] = m.fork(pid, a[1])
        w.regions[a[1]] = dict(w.regions[a[0]])
        w.fds[a[1]] = dict(w.fds[a[0]])
    elif op.name == "exit":
        m.exit(pid)
    elif op.name == "mmap":
        if a[1] in w.regions[a[0]]:
            raise ScenarioError(w.sc.path, n, f"task {a[0]} already has a region {a[1]!r}")
        prot = PROT_READ if o.get("prot") == "r" else PROT_READ | PROT_WRITE
        fd = w.fd(a[0], o["fd"], n) if "fd" in o else None
        shared = bool(o.get("shared")) and not o.get("private")
        addr = m.mmap(pid, a[2] * PAGE_SIZE, prot=prot, shared=shared, fd=fd,
                      offset=int(o.get("offset", 0)) * PAGE_SIZE, hugetlb=bool(o.get("hugetlb")))
        w.regions[a[0]][a[1]] = (addr, a[2])
    elif op.name == "munmap":
        for addr, length in w.page_runs(a[0], a[1], o.get("pages", "all"), n):
            m.munmap(pid, addr, length)
        if o.get("pages", "all") == "all":
            del w.regions[a[0]][a[1]]
    elif op.name == "mremap":
        addr, npages = w.region(a[0], a[1], n)
        new = o.get("int", npages)
        w.regions[a[0]][a[1]] = (m.mremap(pid, addr, npages * PAGE_SIZE,
                                          new_length=new * PAGE_SIZE), new)
    elif op.name == "shm":
        if a[1] in w.regions[a[0]]:
            raise ScenarioError(w.sc.path, n, f"task {a[0]} already has a region {a[1]!r}")
        seg = m.shmget(0, a[2] * PAGE_SIZE)  # IPC_PRIVATE
        w.regions[a[0]][a[1]] = (m.shmat(pid, seg), a[2])
        m.shm_rmid(seg)
    elif op.name in ("zap", "write", "read", "madvise", "uffd-wp", "poison", "reclaim",
                     "migrate", "mprotect"):
        for addr, length in w.page_runs(a[0], a[1], a[2], n):
            if op.name == "zap":
                m.zap(pid, addr, length)
            elif op.name == "write":
                m.write(pid, addr, length)
            elif op.name == "read":
                m.read(pid, addr, length)
            elif op.name == "madvise":
                m.madvise(pid, addr, length, ADVICE[a[3]])
            elif op.name == "uffd-wp":
                m.uffd_writeprotect(pid, addr, length)
            elif op.name == "poison":
                m.uffd_poison(pid, addr, length)
            elif op.name == "mprotect":
                m.mprotect(pid, addr, length, PROT[a[3]])
            elif op.name == "reclaim":
                m.reclaim(pid, addr, length, free=False if o.get("keep-swapcache") else None)
            else:
                m.migrate(pid, addr, length, finish=not o.get("pending"))
    elif op.name == "memfd":
        w.fds[a[0]][a[1]] = m.memfd_create(pid, a[1], o.get("int", 0) * PAGE_SIZE)
    elif op.name == "sendfd":
        w.fds[a[2]][a[1]] = m.send_fd(pid, w.fd(a[0], a[1], n), w.pids[a[2]])
    elif op.name in ("pwrite", "fallocate"):
        fd = w.fd(a[0], a[1], n)
        pages = a[2]
        if pages == "all":
            raise ScenarioError(w.sc.path, n, f"{op.name} needs explicit pages")
        mask = np.zeros(max(pages) + 1, dtype=bool)
        mask[list(pages)] = True
        for first, k in runs_of(mask):
            if op.name == "pwrite":
                m.pwrite(pid, fd, first * PAGE_SIZE, k * PAGE_SIZE)
            else:
                m.fallocate(pid, fd, first * PAGE_SIZE, k * PAGE_SIZE, punch=bool(o.get("punch")))
    elif op.name == "ftruncate":
        m.ftruncate(pid, w.fd(a[0], a[1], n), a[2] * PAGE_SIZE)
    elif op.name == "swapcache-drop":
        m.swapcache_drop()
    elif op.name == "migrate-finish":
        m.migrate_finish()
    else:  # the parser knows every operation; this is a bug if reached
        raise ScenarioError(w.sc.path, n, f"operation {op.name!r} is not implemented")


# -- views ------------------------------------------------------------------------------------

def view(w: World, task: str, region: str, what: str, line: int = 0) -> str:
    """One observation of a task's region as a string (the forms kernel.md §7 uses)."""
    m = w.model
    pid = w.pids[task]
    addr, n = w.region(task, region, line)
    length = n * PAGE_SIZE
    if what == "pagemap":
        return "".join("P" if x & PM_PRESENT else "S" if x & PM_SWAP else "-"
                       for x in map(int, m.pagemap(pid, addr, length)))
    if what == "flags":
        return " ".join(pagemap_flag_string(int(x)) or "0" for x in m.pagemap(pid, addr, length))
    if what == "mincore":
        return "".join(str(b) for b in m.mincore(pid, addr, length))
    if what == "lseek":
        return "".join("D" if d else "." for d in _data(w, pid, addr, n, line))
    if what == "classify":
        pm = view(w, task, region, "pagemap", line)
        mc = view(w, task, region, "mincore", line)
        data = _data(w, pid, addr, n, line)
        return "".join("P" if p == "P" else "H" if not d else "C" if c == "1" else "S"
                       for p, c, d in zip(pm, mc, data, strict=True))
    if what == "truth":
        return truth_classes(w, pid, addr, n, line)
    raise ScenarioError(w.sc.path, line, f"unknown view {what!r}")


def _data(w: World, pid: int, addr: int, n: int, line: int) -> list[bool]:
    vma = w.model.k.task(pid).find_vma(addr)
    if vma is None or vma.obj is None:
        raise ScenarioError(w.sc.path, line, "lseek needs a region backed by an object")
    out = []
    for i in range(vma.pgoff + vma.index(addr), vma.pgoff + vma.index(addr) + n):
        try:
            out.append(shmem_file_llseek(w.model.k, vma.obj, i * PAGE_SIZE, SEEK_DATA)
                       == i * PAGE_SIZE)
        except ModelError:
            out.append(False)
    return out


def truth_classes(w: World, pid: int, addr: int, n: int, line: int) -> str:
    """The model's own classes of an object region's pages: P mapped by this task, R resident
    in the page cache, W in the swap cache, S only on swap, H hole."""
    k = w.model.k
    vma = k.task(pid).find_vma(addr)
    if vma is None or vma.obj is None:
        raise ScenarioError(w.sc.path, line, "truth needs a region backed by an object")
    words = w.model.pagemap(pid, addr, n * PAGE_SIZE)
    first = vma.pgoff + vma.index(addr)
    out = []
    for i in range(n):
        if int(words[i]) & PM_PRESENT:
            out.append("P")
            continue
        idx = first + i
        entry = vma.obj.cache[idx: idx + 1]
        kind = int(pc_kinds(entry)[0]) if len(entry) else 0
        val = int(pc_values(entry)[0]) if len(entry) else 0
        if kind == PC_PAGE and k.frames.flags.a[val - PFN_BASE] & F_UPTODATE:
            out.append("R")
        elif kind == PC_SWAP:
            out.append("W" if k.swap.cache.a[val] else "S")
        else:
            out.append("H")
    return "".join(out)


def state_digest(k: Kernel) -> str:
    """A digest of every page-state array of the model (not reference counts or costs)."""
    h = hashlib.blake2b(digest_size=16)
    for g in (k.frames.content, k.frames.mapcount, k.frames.flags, k.frames.swapslot,
              k.swap.content, k.swap.count, k.swap.cache):
        h.update(g.a[: g.n].tobytes())
    for pid in sorted(k.tasks):
        for v in k.tasks[pid].vmas:
            h.update(f"{pid}:{v.start}:{v.end}:{v.anon_vma}".encode())
            h.update(v.ptes.tobytes())
    for obj in k.inodes:
        h.update(f"{obj.ino}:{obj.size}".encode())
        h.update(obj.cache.tobytes())
    return h.hexdigest()


# -- dump, restore, verify --------------------------------------------------------------------

@dataclass
class Outcome:
    scenario: str
    profile: str
    strategy: str
    lost: int
    lost_pages: list = field(default_factory=list)
    pages_dumped: int = 0
    image_bytes: int = 0
    ptes_walked: int = 0
    pagecache_lookups: int = 0
    syscalls: int = 0
    selection_unchanged: bool = True
    summary: str = ""
    covered: dict[int, set[int]] = field(default_factory=dict)  # pid -> addresses in the set


def dump_restore_verify(sc: Scenario, profile, strategy: str, workdir: str | None = None,
                        compress: str | None = None, lenient: bool = False) -> Outcome:
    """Build the scenario, check that selection changes nothing, dump with the strategy,
    restore into a fresh model of the same profile, verify."""
    from dumper.dump import collect, dump
    from dumper.restore import restore
    from dumper.verify import verify

    w = build(sc, profile, lenient)
    prof = w.model.profile
    host = ModelHost(w.model)
    root = w.pids[sc.dump_root]
    before = state_digest(w.model.k)
    cost0 = w.model.k.counters.snapshot()
    _, objects = collect(host, host.tasks(root), strategy, lambda msg: None)
    for info in objects.values():
        info.handle.close()
    cost = w.model.k.counters.since(cost0)
    unchanged = state_digest(w.model.k) == before
    if workdir is None and os.access("/dev/shm", os.W_OK):
        workdir = "/dev/shm"  # tmpfs: the writer's fsyncs cost nothing for throwaway sets
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dumper-replay-") as tmp:
        out = str(Path(tmp) / "set")
        summary = dump(host, root, out, strategy, profile=prof.name, compress=compress)
        with ImageSet.open(out) as images:
            target = ModelTarget(Model(prof, swap=sc.swap != "off"))
            restore(images, target)
            report = verify(images, target)
            covered = image_coverage(images)
    return Outcome(
        scenario=sc.name, profile=prof.name, strategy=strategy, lost=len(report.lost),
        lost_pages=report.lost, pages_dumped=summary.private_pages + summary.shared_pages,
        image_bytes=summary.bytes_written, ptes_walked=cost.ptes_walked,
        pagecache_lookups=cost.pagecache_lookups, syscalls=cost.syscalls,
        selection_unchanged=unchanged, summary=summary.line(), covered=covered,
    )


def image_coverage(images: ImageSet) -> dict[int, set[int]]:
    """For each task, the addresses whose content the image set holds (its own pages, its COW
    runs, the dumped pages of the objects it maps)."""
    out: dict[int, set[int]] = {}
    for t in images.tasks.values():
        have: set[int] = set()
        for r in t.pagemap:
            if r.present:
                have.update(range(r.vaddr, r.end(), PAGE_SIZE))
        for c in t.cow:
            have.update(range(c.vaddr, c.vaddr + c.nr_pages * PAGE_SIZE, PAGE_SIZE))
        for v in t.vmas:
            obj = images.objects.get(v.obj) if v.obj is not None else None
            if obj is None or v.private:
                continue
            for r in obj.pagemap:
                if r.present:
                    for off in range(r.vaddr, r.end(), PAGE_SIZE):
                        addr = v.start + off - v.pgoff
                        if v.start <= addr < v.end:
                            have.add(addr)
        out[t.pid] = have
    return out


@dataclass(frozen=True)
class RegionPicture:
    """One task's region at the dump point, a letter a page: P present (mapped by the task),
    R resident but not mapped here, W in the swap cache, S swapped out, G under migration,
    M a PTE marker, H nothing (a hole, or never touched)."""

    task: str
    pid: int
    region: str
    addr: int
    states: str
    shmid: int | None = None  # the shared object behind the region (its inode number)
    first_offset: int = 0  # the object offset of the region's first page, in bytes


def picture(w: World) -> list[RegionPicture]:
    """Every live task's regions, page by page, as the model holds them."""
    from dumper.model import pte as ptes

    k = w.model.k
    out = []
    for task, regions in w.regions.items():
        pid = w.pids[task]
        if pid not in k.tasks:
            continue
        for name, (addr, n) in sorted(regions.items(), key=lambda kv: kv[1][0]):
            vma = k.tasks[pid].find_vma(addr)
            if vma is None:
                continue
            letters = []
            shared = truth_classes(w, pid, addr, n, 0) if vma.obj is not None and vma.shared \
                else None
            for i in range(n):
                v = k.tasks[pid].find_vma(addr + i * PAGE_SIZE)
                if v is None:
                    letters.append(" ")
                    continue
                word = int(v.ptes[v.index(addr + i * PAGE_SIZE)])
                kind = ptes.kind_of(word)
                if kind == ptes.MARKER:
                    letters.append("M")
                elif kind == ptes.MIGRATION:
                    letters.append("G")
                elif shared is not None:
                    letters.append(shared[i])
                elif kind == ptes.PRESENT:
                    letters.append("P")
                elif kind == ptes.SWAP:
                    letters.append("W" if k.swap.cache.a[ptes.value_of(word)] else "S")
                else:
                    letters.append("H")
            obj = vma.obj.ino if vma.obj is not None and vma.shared else None
            out.append(RegionPicture(task, pid, name, addr, "".join(letters), obj,
                                     (vma.pgoff + vma.index(addr)) * PAGE_SIZE))
    return out
