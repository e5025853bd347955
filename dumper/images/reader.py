"""ImageSet: opens an image set directory, validates all of it, and serves its pages.

    with ImageSet.open("out/set") as s:          # raises ImageError on any inconsistency
        for pid, task in s.tasks.items():         # pstree order
            task.vmas, task.pagemap, task.cow     # Vma / PageRun / CowRun dataclasses
            for vaddr, data in s.iter_pages(pid): # the task's own pages, streamed
                ...
        s.read_page(pid, addr)                    # -> PageLookup, resolving COW and shmem
        s.objects[shmid].pagemap                  # shared objects, offsets inside them

Sets written by CRIU or crit (no dumper.img) open too: no checksums to verify, shared objects
derived from the VMAs, memfd.img and files.img, kinds guessed, dev and ino unknown.

What open() checks, each failure an ImageError naming the file and offset: every image's
framing (see codec); inventory version; one root in the pstree, parents known, ids unique;
VMAs page-aligned, sorted, not overlapping; pagemap entries sorted, not overlapping, inside
private VMAs (shmem ones inside their object); each pages image exactly as long as its pagemap
needs; dumper.img's sizes, zstd frame index and (verify=True) sha256 of every pages image;
COW records inside the task's private VMAs, apart from its own pages, their source held; truth
runs inside VMAs and (verify=True) matching their task digest. zstd frames are checked as they
are read.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import Message

from dumper.images import codec, manifest, safeio
from dumper.images import flags as F
from dumper.images import magic as M
from dumper.images.checksums import TaskDigest
from dumper.images.errors import ImageError
from dumper.images.pages import DEFAULT_FRAME_SIZE, Chunk, PagesChecker, PagesReader
from dumper.images.proto import criu_images_pb2 as criu
from dumper.images.proto import dumper_images_pb2 as own
from dumper.images.records import (
    GUARD_KINDS,
    SHARED_KINDS,
    CowRun,
    DumpMeta,
    GuardRun,
    PageRun,
    PagesInfo,
    SharedObject,
    Task,
    Truth,
    Unreadable,
    Vma,
)
from dumper.kabi import PAGE_SIZE

_COMPRESSION = {own.COMPRESSION_NONE: "none", own.COMPRESSION_ZSTD: "zstd"}
_COW_DEPTH = 64
# Pages per piece of iter_pages/iter_object_pages: a zstd store's whole frame (the writer's
# default 4 MiB), which a piece aligned with it hands over without a copy.
CHUNK_PAGES = DEFAULT_FRAME_SIZE // PAGE_SIZE
# The highest user address on any kernel a set can come from: x86-64 with 5-level paging
# (TASK_SIZE_MAX, arch/x86/include/asm/page_64_types.h: (1 << 56) - PAGE_SIZE); aarch64's
# 52-bit VA is below it. The one VMA above is x86-64's gate page (get_gate_vma).
USER_ADDR_LIMIT = (1 << 56) - PAGE_SIZE
VSYSCALL_PAGE = 0xFFFFFFFFFF600000
_KERNEL_VMAS = F.VMA_AREA_VSYSCALL | F.VMA_AREA_VDSO | F.VMA_AREA_VVAR  # truth may skip them
MAX_FILE_SIZE = (1 << 63) - 1  # MAX_LFS_FILESIZE: no object or file offset goes beyond
# A zstd frame is decompressed whole: the writer's frames are 4 MiB by default; a larger
# frame_raw_size is taken as corruption before anything that size is allocated.
MAX_FRAME = 64 << 20


@dataclass(frozen=True)
class PageLookup:
    """Where a task's page at addr comes from, and its bytes when the set holds them.

    source: "private" (own pagemap), "cow" (another task's, see pid/addr), "parent" or
    "lazy" (pagemap says it is elsewhere), "shared" (a shared object's page), "hole" (shared,
    not dumped: reads zeros), "none" (private, not dumped), "unmapped".
    """

    source: str
    data: bytes | None = None
    pid: int = 0  # for "cow": the task holding it; for "private": the task itself
    addr: int = 0  # address in pid, or offset in obj
    obj: int | None = None


def _intervals_find(starts: list[int], ends: list[int], addr: int) -> int:
    """Index of the interval containing addr, or -1."""
    i = bisect.bisect_right(starts, addr) - 1
    return i if i >= 0 and addr < ends[i] else -1


class ImageSet:
    """A validated image set; see the module docstring. Close it (or use `with`)."""

    def __init__(self, path: Path):
        self.path = path
        self.meta: DumpMeta | None = None
        self.page_size = PAGE_SIZE
        self.tasks: dict[int, Task] = {}
        self.objects: dict[int, SharedObject] = {}
        self.pages: dict[int, PagesInfo] = {}
        self.truths: dict[int, Truth] = {}
        self.unreadable: list[Unreadable] = []  # unreadable.img: pages the dump lost
        self.root = 0
        self.checked_whole = False  # dumper.images.validate.check_set has passed
        self._pages_meta: dict[int, own.PagesImageEntry] = {}
        self._readers: dict[int, PagesReader] = {}
        self._files: dict[int, criu.FileEntry] = {}
        self._memfd_by_inode: dict[int, criu.MemfdInodeEntry] = {}
        self._object_by_file: dict[int, int] = {}
        self._cow_offsets: dict[int, list[int]] = {}
        self._run_starts: dict[int, list[int]] = {}
        self._progress: Any = None
        self._check_later = False
        self._checker: PagesChecker | None = None

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True,
             progress: Any = None, check_later: bool = False) -> ImageSet:
        """Open and validate a set; with verify, every pages file's checksum is checked
        (progress, a dumper.progress.Progress, hears the bytes hashed). check_later: the
        checksums are checked by a thread of their own while the caller goes on (a restore
        writing the pages meanwhile: the page cache is read once, by both); pages_checked()
        waits for it and raises what it found."""
        p = Path(path)
        if not p.is_dir():
            raise ImageError(p, "not a directory" if p.exists() else "no such directory")
        s = cls(p)
        s._progress = progress
        s._check_later = check_later
        try:
            s._load(verify)
        except BaseException:
            s.close()
            raise
        return s

    def _f(self, name: str) -> str:
        return str(self.path / name)

    def _load_opt(self, name: str, kind: codec.Kind) -> codec.Image | None:
        return codec.load(self._f(name), kind) if os.path.lexists(self.path / name) else None

    def _single(self, img: codec.Image) -> Message:
        if len(img.entries) != 1:
            raise ImageError(img.path, f"holds {len(img.entries)} entries, expected one", 0)
        return img.entries[0]

    def _load(self, verify: bool) -> None:
        self._load_meta()  # first: its manifest vouches for every other file
        inv_img = codec.load(self._f(M.INVENTORY), codec.BY_NAME["INVENTORY"])
        inv = self._single(inv_img)
        if inv.img_version != 2:
            raise ImageError(
                inv_img.path, f"img_version {inv.img_version}: only 2 (v1.1) is supported", 4
            )
        self._load_files()
        self._load_pstree()
        for task in self.tasks.values():
            self._load_task(task)
        self._load_objects()
        self._check_pages(verify)
        for task in self.tasks.values():
            self._load_cow(task)
            self._load_guards(task)
        for task in self.tasks.values():
            self._check_cow_sources(task)
        self._load_unreadable()
        self._load_truths(verify)

    def _load_truths(self, verify: bool) -> None:
        """Every task's truth; checked, two tasks at a time (a task digest is blake2b over
        16 bytes a page, which releases the GIL: 1 s a GiB here, serial within a task). The
        first task in pstree order whose truth is bad raises."""
        tasks = list(self.tasks.values())
        if not verify or len(tasks) < 2:
            for task in tasks:
                self._load_truth(task, verify)
            return
        with ThreadPoolExecutor(2, "truth-check") as pool:
            for done in [pool.submit(self._load_truth, t, verify) for t in tasks]:
                done.result()

    def _load_unreadable(self) -> None:
        img = self._load_opt(M.UNREADABLE, codec.BY_NAME["UNREADABLE"])
        for off, e in zip(img.offsets, img.entries, strict=True) if img else ():
            shmid = e.shmid if e.HasField("shmid") else None
            if (e.pid not in self.tasks if e.pid else shmid not in self.objects) or (
                    e.nr_pages == 0 or e.vaddr % PAGE_SIZE):
                raise ImageError(img.path, f"entry {e.vaddr:#x}+{e.nr_pages} pages names "
                                 "no task or object of the set, or is malformed", off)
            self.unreadable.append(Unreadable(e.pid, e.vaddr, e.nr_pages, e.reason, shmid))

    def _load_meta(self) -> None:
        img = self._load_opt(M.DUMPER, codec.BY_NAME["DUMPER"])
        if img is None:
            # Without dumper.img a set is read as CRIU's; one holding dumper's own images
            # lost it, and with it the record that would notice a missing cow-PID.img.
            own = sorted(n for n in os.listdir(self.path) if n in (M.OBJECTS, M.UNREADABLE)
                         or n.startswith(("truth-", "cow-", "guards-")) and n.endswith(".img"))
            if own:
                raise ImageError(self._f(M.DUMPER), f"missing, while the set holds dumper's "
                                 f"own {', '.join(own[:3])}{' ...' if len(own) > 3 else ''}")
            return
        d = self._single(img)
        manifest.check(d, self.path)
        if d.page_size != PAGE_SIZE:
            raise ImageError(img.path, f"page size {d.page_size}: only {PAGE_SIZE} is supported")
        if d.compression not in _COMPRESSION:
            raise ImageError(img.path, f"unknown compression {d.compression}")
        self.meta = DumpMeta(
            format_version=d.format_version,
            tool_version=d.tool_version,
            strategy=d.strategy,
            profile=d.profile,
            host_kind=d.host_kind,
            page_size=d.page_size,
            compression=_COMPRESSION[d.compression],
            level=d.level,
            threads=d.threads,
            root_pid=d.root_pid,
        )
        for pm in d.pages:
            if pm.pages_id in self._pages_meta:
                raise ImageError(img.path, f"pages-{pm.pages_id}.img listed twice")
            if pm.compression not in _COMPRESSION or pm.raw_size != pm.nr_pages * PAGE_SIZE:
                raise ImageError(img.path, f"bad record of pages-{pm.pages_id}.img")
            why = _pages_record_error(pm)
            if why:
                raise ImageError(img.path, f"record of pages-{pm.pages_id}.img: {why}")
            self._pages_meta[pm.pages_id] = pm

    def _load_files(self) -> None:
        img = self._load_opt(M.FILES, codec.BY_NAME["FILES"])
        for off, fe in zip(img.offsets, img.entries, strict=True) if img else ():
            if fe.id in self._files:
                raise ImageError(img.path, f"file id {fe.id} appears twice", off)
            self._files[fe.id] = fe
        img = self._load_opt(M.MEMFD, codec.BY_NAME["MEMFD_INODE"])
        for off, me in zip(img.offsets, img.entries, strict=True) if img else ():
            if me.inode_id in self._memfd_by_inode:
                raise ImageError(img.path, f"memfd inode id {me.inode_id} appears twice", off)
            self._memfd_by_inode[me.inode_id] = me

    def _load_pstree(self) -> None:
        img = codec.load(self._f(M.PSTREE), codec.BY_NAME["PSTREE"])
        for off, e in zip(img.offsets, img.entries, strict=True):
            if e.pid == 0 or e.pid in self.tasks:
                raise ImageError(img.path, f"pid {e.pid} is zero or appears twice", off)
            self.tasks[e.pid] = Task(
                pid=e.pid,
                ppid=e.ppid,
                pgid=e.pgid,
                sid=e.sid,
                threads=tuple(e.threads) or (e.pid,),
                comm="",
                state=0,
            )
        roots = [t.pid for t in self.tasks.values() if t.ppid == 0]
        if len(roots) != 1:
            raise ImageError(img.path, f"{len(roots)} root tasks (ppid 0), expected one")
        self.root = roots[0]
        for t in self.tasks.values():
            seen, cur = set(), t
            while cur.ppid:
                parent = self.tasks.get(cur.ppid)
                if parent is None or cur.pid in seen:
                    why = "unknown" if parent is None else "in a cycle"
                    raise ImageError(img.path, f"parent {cur.ppid} of task {cur.pid} is {why}")
                seen.add(cur.pid)
                cur = parent

    def _file_name(self, fid: int) -> str:
        fe = self._files.get(fid)
        return fe.reg.name if fe is not None and fe.HasField("reg") else ""

    def _load_task(self, t: Task) -> None:
        img = codec.load(self._f(M.core(t.pid)), codec.BY_NAME["CORE"])
        core = self._single(img)
        if not core.HasField("tc"):
            raise ImageError(img.path, "the thread-group leader's core has no task core (tc)", 8)
        t.comm, t.state = core.tc.comm, core.tc.task_state
        mm_path = self.path / M.mm(t.pid)
        if not os.path.lexists(mm_path) and t.state in (F.TASK_DEAD, F.TASK_ZOMBIE):
            return  # zombies have no memory
        img = codec.load(mm_path, codec.BY_NAME["MM"])
        mm = self._single(img)
        t.exe = self._file_name(mm.exe_file_id)
        prev_end = 0
        for i, v in enumerate(mm.vmas):
            if v.start >= v.end or v.start % PAGE_SIZE or v.end % PAGE_SIZE:
                raise ImageError(img.path, f"VMA {i} [{v.start:#x}, {v.end:#x}) is malformed", 4)
            why = _vma_bounds_error(v)
            if why:
                raise ImageError(img.path, f"VMA {i} [{v.start:#x}, {v.end:#x}) {why}", 4)
            if v.status & F.VMA_AREA_GUARD:
                # CRIU 4.2 (collect_madv_guards) appends guard ranges as fake VMAs after the
                # real ones; they are guard runs (checked against the VMAs in _load_guards)
                t.guard_vmas.append(GuardRun(t.pid, v.start, (v.end - v.start) // PAGE_SIZE))
                continue
            if v.start < prev_end:
                raise ImageError(
                    img.path,
                    f"VMAs unsorted or overlapping: VMA {i} starts at {v.start:#x} "
                    f"before the previous one ends at {prev_end:#x}",
                    img.offsets[0],
                )
            prev_end = v.end
            t.vmas.append(
                Vma(
                    start=v.start,
                    end=v.end,
                    prot=v.prot,
                    flags=v.flags,
                    pgoff=v.pgoff,
                    status=v.status,
                    shmid=v.shmid,
                    madv=v.madv,
                    obj=self._vma_object(v),
                    path=self._file_name(v.shmid)
                    if v.status & (F.VMA_FILE_SHARED | F.VMA_FILE_PRIVATE) else "",
                )
            )
        self._load_task_pagemap(t)

    def _vma_object(self, v: criu.VmaEntry) -> int | None:
        """The shmid of the shared object behind a VMA, as CRIU's images link them."""
        if v.status & F.VMA_ANON_SHARED:
            return v.shmid
        if not v.status & (F.VMA_FILE_SHARED | F.VMA_FILE_PRIVATE):
            return None
        fe = self._files.get(v.shmid)
        if fe is not None and fe.HasField("memfd"):
            inode = self._memfd_by_inode.get(fe.memfd.inode_id)
            return inode.shmid if inode is not None else None
        return -v.shmid if fe is not None else None  # a file: resolved against objects.img later

    def _runs(self, img: codec.Image, limit_check) -> tuple[int, list[PageRun]]:
        """(pages_id, runs with raw offsets) of a pagemap image, checked run by run."""
        pages_id = img.head.pages_id
        runs: list[PageRun] = []
        offset = 0
        prev_end = -1
        for off, e in zip(img.body_offsets, img.body, strict=True):
            n = e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages
            fl = e.flags if e.HasField("flags") else F.PE_PRESENT
            if e.in_parent:
                fl |= F.PE_PARENT
            end = e.vaddr + n * PAGE_SIZE
            if n == 0 or e.vaddr % PAGE_SIZE:
                raise ImageError(img.path, f"pagemap entry {e.vaddr:#x} of {n} pages", off)
            if e.vaddr < prev_end:
                raise ImageError(
                    img.path, f"pagemap entries unsorted or overlapping at {e.vaddr:#x}", off
                )
            why = limit_check(e.vaddr, end)
            if why:
                raise ImageError(img.path, f"pagemap entry {e.vaddr:#x}+{n} pages {why}", off)
            present = bool(fl & F.PE_PRESENT)
            runs.append(PageRun(e.vaddr, n, fl, offset if present else -1))
            offset += n * PAGE_SIZE if present else 0
            prev_end = end
        return pages_id, runs

    def _load_task_pagemap(self, t: Task) -> None:
        spans = _merge([(v.start, v.end) for v in t.vmas if v.private])
        starts, ends = [a for a, _ in spans], [b for _, b in spans]

        def check(lo: int, hi: int) -> str:
            i = _intervals_find(starts, ends, lo)
            return "" if i >= 0 and hi <= ends[i] else "is outside every private VMA"

        img = codec.load(self._f(M.pagemap(t.pid)), codec.BY_NAME["PAGEMAP"])
        t.pages_id, t.pagemap = self._runs(img, check)
        self._claim_pages(t.pages_id, img, t.pagemap)

    def _claim_pages(self, pages_id: int, img: codec.Image, runs: list[PageRun]) -> None:
        if pages_id in self.pages:
            raise ImageError(img.path, f"pages_id {pages_id} is used by another pagemap", 8)
        need = sum(r.nr_pages for r in runs if r.present) * PAGE_SIZE
        name = M.pages(pages_id)
        pm = self._pages_meta.get(pages_id)
        path = self.path / name
        if pm is not None:
            raw, stored = pm.raw_size, pm.stored_size
        elif self.meta is not None and need:
            raise ImageError(self._f(M.DUMPER), f"has no record of {name}")
        else:
            size = safeio.regular_size(path)
            raw = stored = size or 0
        if need and pm is None and not os.path.lexists(path):
            raise ImageError(self._f(name), f"missing: {img.path} needs {need} bytes of pages")
        if need > raw:
            idx = next(
                i
                for i, r in enumerate(runs)
                if r.present and r.offset + r.nr_pages * PAGE_SIZE > raw
            )
            raise ImageError(
                img.path,
                f"pagemap entry {runs[idx].vaddr:#x}+{runs[idx].nr_pages} pages runs "
                f"past the end of its page data ({name} holds {raw} bytes)",
                img.body_offsets[idx],
            )
        if raw > need:
            raise ImageError(
                self._f(name), f"holds {raw - need} bytes of pages no pagemap entry uses", need
            )
        comp = _COMPRESSION[pm.compression] if pm is not None else "none"
        self.pages[pages_id] = PagesInfo(
            pages_id, comp, raw // PAGE_SIZE, raw, stored, pm.checksum.hex() if pm else ""
        )

    def _load_objects(self) -> None:
        img = self._load_opt(M.OBJECTS, codec.BY_NAME["OBJECTS"])
        if img is None and self.meta is not None:
            raise ImageError(self._f(M.OBJECTS), "missing (dumper.img is there)")
        found: dict[int, SharedObject] = {}
        for off, e in zip(img.offsets, img.entries, strict=True) if img else ():
            if e.shmid in found or e.kind not in SHARED_KINDS:
                raise ImageError(img.path, f"object {e.shmid} repeated or of kind {e.kind!r}", off)
            if e.size > MAX_FILE_SIZE:
                raise ImageError(img.path, f"object {e.shmid}: size {e.size} is past the "
                                 f"largest file size ({MAX_FILE_SIZE})", off)
            found[e.shmid] = SharedObject(
                shmid=e.shmid,
                kind=e.kind,
                size=e.size,
                dev=e.dev,
                ino=e.ino,
                name=e.name,
                pages_id=e.pages_id,
                page_size=e.page_size if e.HasField("page_size") else PAGE_SIZE,
            )
            if e.HasField("file_id"):
                self._object_by_file[e.file_id] = e.shmid
        if img is None:
            found = self._guess_objects()
        for task in self.tasks.values():
            task.vmas = [self._link(task, v, found) for v in task.vmas]
        for shmid, obj in found.items():
            self.objects[shmid] = self._load_object(obj)

    def _link(self, task: Task, v: Vma, found: dict[int, SharedObject]) -> Vma:
        obj = v.obj
        if obj is not None and obj < 0:  # a file VMA: memfd/tmpfs object or a plain file
            obj = self._object_by_file.get(-obj)
        if obj is not None and obj not in found:
            if not v.status & F.VMA_ANON_SHARED and self.meta is None:
                obj = None  # CRIU: a memfd whose inode entry is missing holds no pages here
            else:
                raise ImageError(
                    self._f(M.mm(task.pid)),
                    f"VMA {v.start:#x} maps shared object {obj}, which the set does not describe",
                )
        return v if obj == v.obj else replace(v, obj=obj)  # replace() is slow: 30,000 VMAs

    def _guess_objects(self) -> dict[int, SharedObject]:
        """A CRIU set's shared objects, from VMAs and memfd.img."""
        out: dict[int, SharedObject] = {}
        for me in self._memfd_by_inode.values():
            out[me.shmid] = SharedObject(
                shmid=me.shmid,
                kind="memfd",
                size=me.size,
                name=me.name,
                seals=me.seals,
                uid=me.uid,
                gid=me.gid,
            )
        for task in self.tasks.values():
            for v in task.vmas:
                if v.obj is None or v.obj < 0 or v.obj in out and out[v.obj].kind == "memfd":
                    continue
                kind = "sysv" if v.status & F.VMA_AREA_SYSVIPC else "shmem-anon"
                size = max(out[v.obj].size if v.obj in out else 0, v.pgoff + v.end - v.start)
                out[v.obj] = SharedObject(shmid=v.obj, kind=kind, size=size)
        return out

    def _load_object(self, obj: SharedObject) -> SharedObject:
        name = M.pagemap_shmem(obj.shmid)
        if not os.path.lexists(self.path / name) and self.meta is None:
            return obj  # CRIU: an object nobody dumped pages of
        img = codec.load(self._f(name), codec.BY_NAME["PAGEMAP"])
        limit = -(-obj.size // PAGE_SIZE) * PAGE_SIZE

        def check(lo: int, hi: int) -> str:
            return "" if hi <= limit else f"is past the end of the object ({obj.size} bytes)"

        pages_id, runs = self._runs(img, check)
        if self.meta is not None and pages_id != obj.pages_id:
            raise ImageError(img.path, f"pages_id {pages_id}, objects.img says {obj.pages_id}", 8)
        self._claim_pages(pages_id, img, runs)
        return replace(obj, pages_id=pages_id, pagemap=tuple(runs))

    def _check_pages(self, verify: bool) -> None:
        for pid in self._pages_meta:
            if pid not in self.pages:
                raise ImageError(self._f(M.DUMPER), f"records {M.pages(pid)}, no pagemap uses it")
        readers = [self.reader(pages_id) for pages_id, info in self.pages.items()
                   if info.raw_size or os.path.lexists(self.path / M.pages(pages_id))]
        if verify and self._check_later:
            self._checker = PagesChecker(readers)
            return
        tell = self._progress
        if verify and tell is not None:
            tell.phase("checking pages", sum(i.stored_size for i in self.pages.values()))
        for r in readers if verify else ():
            r.verify(tell.advance if tell is not None else None)
        if verify and tell is not None:
            tell.done()

    def pages_checked(self) -> None:
        """Wait for the checksums of open(check_later=True) (no-op otherwise); raises the
        ImageError of the first pages image that does not match."""
        if self._checker is not None:
            self._checker.result()

    def _load_cow(self, t: Task) -> None:
        img = self._load_opt(M.cow(t.pid), codec.BY_NAME["COW"])
        if img is None:
            return
        own_starts = [r.vaddr for r in t.pagemap]
        own_ends = [r.end() for r in t.pagemap]
        spans = _merge([(v.start, v.end) for v in t.vmas if v.private])
        prev_end = 0
        for off, e in zip(img.offsets, img.entries, strict=True):
            end = e.vaddr + e.nr_pages * PAGE_SIZE
            src = self.tasks.get(e.src_pid)
            why = ""
            if e.pid != t.pid or e.nr_pages == 0 or e.vaddr % PAGE_SIZE or e.src_vaddr % PAGE_SIZE:
                why = "is malformed or not this task's"
            elif e.vaddr < prev_end:
                why = "is unsorted or overlaps the previous one"
            elif not any(a <= e.vaddr and end <= b for a, b in spans):
                why = "is outside every private VMA"
            elif _overlaps(own_starts, own_ends, e.vaddr, end):
                why = "overlaps the task's own pagemap"
            elif src is None or e.src_pid == t.pid:
                why = f"names source task {e.src_pid}, not another task of the set"
            if why:
                raise ImageError(img.path, f"COW run {e.vaddr:#x}+{e.nr_pages} pages {why}", off)
            prev_end = end
            t.cow.append(CowRun(e.pid, e.vaddr, e.nr_pages, e.src_pid, e.src_vaddr))
        self._cow_offsets[t.pid] = img.offsets

    def _load_guards(self, t: Task) -> None:
        img = self._load_opt(M.guards(t.pid), codec.BY_NAME["GUARDS"])
        if img is None:  # a CRIU set, or a set written for CRIU: its guard VMAs, if any
            for g in t.guard_vmas:
                if not any(v.start <= g.vaddr and g.vaddr + g.nr_pages * PAGE_SIZE <= v.end
                           for v in t.vmas):
                    raise ImageError(self._f(M.mm(t.pid)), f"guard VMA {g.vaddr:#x}+"
                                     f"{g.nr_pages} pages is outside every VMA")
            t.guards = sorted(t.guard_vmas, key=lambda g: g.vaddr)
            return
        prev_end = 0
        for off, e in zip(img.offsets, img.entries, strict=True):
            end = e.vaddr + e.nr_pages * PAGE_SIZE
            why = ""
            if e.pid != t.pid or e.nr_pages == 0 or e.vaddr % PAGE_SIZE:
                why = "is malformed or not this task's"
            elif e.kind not in GUARD_KINDS:
                why = f"has unknown kind {e.kind!r}"
            elif e.vaddr < prev_end:
                why = "is unsorted or overlaps the previous one"
            elif not any(v.start <= e.vaddr and end <= v.end for v in t.vmas):
                why = "is outside every VMA"
            if why:
                raise ImageError(img.path, f"guard run {e.vaddr:#x}+{e.nr_pages} pages {why}", off)
            prev_end = end
            t.guards.append(GuardRun(e.pid, e.vaddr, e.nr_pages, e.kind))

    def _check_cow_sources(self, t: Task) -> None:
        """Each COW run's source pages are held by the source task, itself or by COW."""
        for off, c in zip(self._cow_offsets.get(t.pid, ()), t.cow, strict=True):
            src = self.tasks[c.src_pid]
            held = _merge(
                [(r.vaddr, r.end()) for r in src.pagemap if r.present]
                + [(k.vaddr, k.vaddr + k.nr_pages * PAGE_SIZE) for k in src.cow]
            )
            if not any(
                a <= c.src_vaddr and c.src_vaddr + c.nr_pages * PAGE_SIZE <= b for a, b in held
            ):
                raise ImageError(
                    self._f(M.cow(t.pid)),
                    f"COW run {c.vaddr:#x}+{c.nr_pages} pages: task "
                    f"{c.src_pid} does not hold all of {c.src_vaddr:#x}+{c.nr_pages} pages",
                    off,
                )

    def _load_truth(self, t: Task, verify: bool) -> None:
        img_path = self.path / M.truth(t.pid)
        if not os.path.lexists(img_path):
            return
        with safeio.open_image(img_path) as f:
            path = str(img_path)
            kind = codec.read_header(f, path)
            if kind is not codec.BY_NAME["TRUTH"]:
                raise ImageError(path, f"is a {kind.name} image, expected TRUTH", 0)
            entries = codec.iter_entries(f, path, kind)
            head = next(entries, None)
            if head is None:
                raise ImageError(path, "no TruthHead entry", 8)
            h = head[1]
            if h.pid != t.pid:
                raise ImageError(path, f"is the truth of task {h.pid}", head[0])
            ordinary = sum(v.npages for v in t.vmas if not v.status & _KERNEL_VMAS)
            if ordinary > h.nr_pages:  # truth covers every VMA: none can be larger
                raise ImageError(self._f(M.mm(t.pid)), f"VMAs span {ordinary} pages, the "
                                 f"truth records {h.nr_pages}: a VMA is larger than was dumped")
            if verify:
                self._check_truth(t, path, h, entries)
        self.truths[t.pid] = Truth(t.pid, h.algo, h.task_digest, h.nr_pages)

    def _check_truth(self, t: Task, path: str, h: Message, entries) -> None:
        spans = _merge([(v.start, v.end) for v in t.vmas])
        td = TaskDigest(PAGE_SIZE)
        prev_end = 0
        for off, run in entries:
            end = run.vaddr + len(run.digests) * PAGE_SIZE
            if run.vaddr < prev_end or run.vaddr % PAGE_SIZE:
                raise ImageError(path, f"truth run {run.vaddr:#x} unsorted or overlapping", off)
            if not any(a <= run.vaddr and end <= b for a, b in spans):
                raise ImageError(path, f"truth run {run.vaddr:#x} is outside the VMAs", off)
            td.update(run.vaddr, run.digests)
            prev_end = end
        if td.nr_pages != h.nr_pages or td.digest() != h.task_digest:
            raise ImageError(
                path,
                f"task digest or page count ({h.nr_pages}) does not match the runs "
                f"({td.nr_pages} pages)",
            )

    # -- pages ------------------------------------------------------------------------------

    def reader(self, pages_id: int) -> PagesReader:
        r = self._readers.get(pages_id)
        if r is None:
            r = PagesReader(self._f(M.pages(pages_id)), self._pages_meta.get(pages_id))
            self._readers[pages_id] = r
        return r

    def _iter_runs(
        self, pages_id: int, runs: list[PageRun] | tuple[PageRun, ...], chunk_pages: int,
        views: bool = False,
    ) -> Iterator[tuple[int, Chunk]]:
        for run in runs:
            if not run.present:
                continue
            rd = self.reader(pages_id)
            vaddr = run.vaddr
            pieces = rd.iter_views if views else rd.iter_range
            for data in pieces(run.offset, run.nr_pages * PAGE_SIZE, chunk_pages * PAGE_SIZE):
                yield vaddr, data
                vaddr += len(data)

    def iter_pages(self, pid: int, chunk_pages: int = CHUNK_PAGES, views: bool = False
                   ) -> Iterator[tuple[int, Chunk]]:
        """(vaddr, bytes) of a task's own present pages, pagemap order, chunk_pages at most;
        views: memoryviews instead (PagesReader.iter_views), valid until the next one."""
        t = self.tasks[pid]
        return self._iter_runs(t.pages_id, t.pagemap, chunk_pages, views)

    def iter_object_pages(self, shmid: int, chunk_pages: int = CHUNK_PAGES, views: bool = False
                          ) -> Iterator[tuple[int, Chunk]]:
        """(offset, bytes) of a shared object's dumped pages (views: as iter_pages)."""
        o = self.objects[shmid]
        return self._iter_runs(o.pages_id, o.pagemap, chunk_pages, views)

    def iter_task_pages(self, pid: int) -> Iterator[tuple[int, bytes, str]]:
        """Every page the set holds for a task's private memory, one page at a time in address
        order: (vaddr, page, "private" | "cow")."""
        t = self.tasks[pid]
        events = [(r.vaddr, r.nr_pages, "private", r) for r in t.pagemap if r.present]
        events += [(c.vaddr, c.nr_pages, "cow", c) for c in t.cow]
        for vaddr, n, kind, rec in sorted(events, key=lambda e: e[0]):
            if kind == "private":
                for base, data in self._iter_runs(t.pages_id, [rec], 256):
                    for i in range(0, len(data), PAGE_SIZE):
                        yield base + i, data[i : i + PAGE_SIZE], "private"
            else:
                for i in range(n):
                    look = self._private(rec.src_pid, rec.src_vaddr + i * PAGE_SIZE, _COW_DEPTH)
                    yield vaddr + i * PAGE_SIZE, look.data or b"", "cow"

    def _private(self, pid: int, addr: int, depth: int, data: bool = True) -> PageLookup:
        t = self.tasks[pid]
        starts = self._run_starts.get(pid)
        if starts is None:
            starts = self._run_starts[pid] = [r.vaddr for r in t.pagemap]
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < t.pagemap[i].end():
            run = t.pagemap[i]
            if not run.present:
                return PageLookup(
                    "parent" if run.flags & F.PE_PARENT else "lazy", pid=pid, addr=addr
                )
            page = None
            if data:
                page = self.reader(t.pages_id).read(run.offset + addr - run.vaddr, PAGE_SIZE)
            return PageLookup("private", page, pid, addr)
        for c in t.cow:
            if c.vaddr <= addr < c.vaddr + c.nr_pages * PAGE_SIZE:
                if depth == 0:
                    raise ImageError(self._f(M.cow(pid)), f"COW chain too deep at {addr:#x}")
                src = self._private(c.src_pid, c.src_vaddr + addr - c.vaddr, depth - 1, data)
                if src.source == "private":
                    return PageLookup("cow", src.data, src.pid, src.addr)
                return src
        return PageLookup("none", pid=pid, addr=addr)

    def read_page(self, pid: int, addr: int) -> PageLookup:
        """The page of task pid at addr (rounded down), resolved as a restore would."""
        if pid not in self.tasks:
            raise KeyError(f"no task {pid} in {self.path}")
        addr -= addr % PAGE_SIZE
        t = self.tasks[pid]
        vma = next((v for v in t.vmas if v.start <= addr < v.end), None)
        if vma is None:
            return PageLookup("unmapped", pid=pid, addr=addr)
        if vma.private:
            look = self._private(pid, addr, _COW_DEPTH)
            if look.source != "none" or vma.obj is None or vma.obj not in self.objects:
                return look
            # A private mapping of an object reads the object's page until the task writes it.
        if vma.obj is None or vma.obj not in self.objects:
            return PageLookup("hole", pid=pid, addr=addr)
        obj = self.objects[vma.obj]
        off = vma.pgoff + addr - vma.start
        for run in obj.pagemap:
            if run.vaddr <= off < run.end() and run.present:
                page = self.reader(obj.pages_id).read(run.offset + off - run.vaddr, PAGE_SIZE)
                return PageLookup("shared", page, pid, off, obj.shmid)
        return PageLookup("hole", pid=pid, addr=off, obj=obj.shmid)

    def iter_truth(self, pid: int) -> Iterator[tuple[int, np.ndarray]]:
        """(vaddr, page digests) runs of a task's truth-PID.img."""
        path = self._f(M.truth(pid))
        with safeio.open_image(path) as f:
            kind = codec.read_header(f, path)
            for i, (_, run) in enumerate(codec.iter_entries(f, path, kind)):
                if i:
                    yield run.vaddr, np.array(run.digests, dtype=np.uint64)

    def close(self) -> None:
        if self._checker is not None:
            self._checker.stop()
            self._checker = None
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> ImageSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vma_bounds_error(v: criu.VmaEntry) -> str:
    """Why a page-aligned VMA is outside what an address space can hold, or ""."""
    if v.status & F.VMA_AREA_VSYSCALL:
        if (v.start, v.end) != (VSYSCALL_PAGE, VSYSCALL_PAGE + PAGE_SIZE):
            return "is marked vsyscall but is not the gate page"
    elif v.end > USER_ADDR_LIMIT:
        return f"ends past the highest user address {USER_ADDR_LIMIT:#x}"
    if v.pgoff % PAGE_SIZE or v.pgoff + (v.end - v.start) > MAX_FILE_SIZE:
        return f"has pgoff {v.pgoff:#x}: not page-aligned or past the largest file size"
    return ""


def _pages_record_error(pm: own.PagesImageEntry) -> str:
    """Why a pages image's record cannot be right, checked before anything is allocated."""
    if pm.compression == own.COMPRESSION_NONE:
        return "" if pm.stored_size == pm.raw_size else (
            f"raw, but {pm.stored_size} bytes stored for {pm.raw_size}")
    fsz = pm.frame_raw_size
    if fsz <= 0 or fsz % PAGE_SIZE or fsz > MAX_FRAME:
        return f"zstd frames of {fsz} bytes: not whole pages, or over {MAX_FRAME}"
    if len(pm.frame_sizes) != -(-pm.raw_size // fsz) or sum(pm.frame_sizes) != pm.stored_size:
        return (f"{len(pm.frame_sizes)} zstd frames of {sum(pm.frame_sizes)} bytes for "
                f"{pm.raw_size} raw bytes and {pm.stored_size} stored")
    return ""


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlaps(starts: list[int], ends: list[int], lo: int, hi: int) -> bool:
    i = bisect.bisect_left(ends, lo + 1)
    return i < len(starts) and starts[i] < hi
