"""ImageSetWriter: writes an image set directory, atomically.

    with ImageSetWriter("out/set", compress="zstd", strategy="pagemap",
                        profile="linux-6.18", host_kind="model") as w:
        w.add_shared_object(SharedObject(shmid=77, kind="memfd", size=8192, name="buf"),
                            runs=[(0, 1)], chunks=[page])
        w.add_task(100, 0, "parent", [Vma(0x400000, 0x402000, 3, MAP_PRIVATE | MAP_ANONYMOUS),
                                      Vma(0x800000, 0x802000, 3, MAP_SHARED, obj=77)])
        w.add_private_pages(100, runs=[(0x400000, 2)], chunks=iter_chunks())
        w.add_truth(100, [(0x400000, digests)])
    # commit() ran on leaving the block; an exception aborts instead.

Everything is written into a temporary sibling directory named for its owner (tempdirs: a
killed dump's is removed by the next writer of OUT; mode 0700, files 0600: they hold
process memory). Pages stream straight to their files while the small metadata (tasks, VMAs,
objects) waits in memory; commit() writes pstree, core, mm, files, memfd, objects and
inventory.img, then dumper.img last with its manifest (dumper.images.manifest: every file's
size and checksum), reads the whole set back through ImageSet's validation,
fsyncs every file and the directory (unless sync=False), and renames it into place. An
existing set is replaced only with force=True, by an atomic exchange where the filesystem
has renameat2, and a directory that is not an image set is never replaced.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf.message import Message

from dumper import __version__
from dumper.images import codec, manifest, tempdirs
from dumper.images import flags as F
from dumper.images import magic as M
from dumper.images.checksums import PAGE_DIGEST_ALGO, TaskDigest
from dumper.images.errors import ImageError
from dumper.images.pages import DEFAULT_FRAME_SIZE, NONE, PagesWriter
from dumper.images.proto import criu_images_pb2 as criu
from dumper.images.proto import dumper_images_pb2 as own
from dumper.images.records import (
    GUARD_KINDS,
    SHARED_KINDS,
    CowRun,
    Dropped,
    GuardRun,
    PageRun,
    SharedObject,
    Unreadable,
    Vma,
)
from dumper.kabi import MAP_SHARED, MFD_HUGETLB, PAGE_SIZE, huge_flags

FORMAT_VERSION = manifest.FORMAT_VERSION
TRUTH_RUN_MAX = 1 << 16  # digests per TruthRun entry: 512 KiB
_U32_MAX = (1 << 32) - 1
_ARCH = {"x86_64": criu.X86_64, "aarch64": criu.AARCH64, "arm64": criu.AARCH64}
_MM_FIELDS = [f.name for f in criu.MmEntry.DESCRIPTOR.fields if f.name.startswith("mm_")]
_MM_FIELDS.remove("mm_saved_auxv")

RunLike = PageRun | tuple[int, int] | tuple[int, int, int]


class ImageSetExists(FileExistsError):
    """The target directory exists and force was not given (or it is not an image set)."""


def _fown() -> criu.FownEntry:
    return criu.FownEntry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def _runs(runs: Iterable[RunLike], page_size: int, what: str) -> list[PageRun]:
    """Normalise and check runs: sorted, not overlapping, not empty."""
    out: list[PageRun] = []
    for r in runs:
        run = r if isinstance(r, PageRun) else PageRun(*r)
        if run.nr_pages <= 0 or run.vaddr % page_size:
            raise ValueError(f"{what}: bad run {run}")
        if out and run.vaddr < out[-1].end(page_size):
            raise ValueError(f"{what}: runs unsorted or overlapping at {run.vaddr:#x}")
        out.append(run)
    return out


def _drop(runs: list[PageRun], dropped: list[tuple[int, int]], page_size: int
          ) -> tuple[list[PageRun], list[tuple[int, int]]]:
    """The runs without the dropped present pages ((position among the present pages,
    count), in order), and each dropped span as (vaddr, count)."""
    out: list[PageRun] = []
    spans: list[tuple[int, int]] = []
    pos = 0  # present pages before the current run
    d = 0
    for run in runs:
        if not run.present:
            out.append(run)
            continue
        cut = run.vaddr  # the part of the run not yet emitted starts here
        end = run.end(page_size)
        while d < len(dropped) and dropped[d][0] < pos + run.nr_pages:
            at, n = dropped[d]
            take = min(n, pos + run.nr_pages - at)
            lo = run.vaddr + (at - pos) * page_size
            if lo > cut:
                out.append(PageRun(cut, (lo - cut) // page_size, run.flags))
            spans.append((lo, take))
            cut = lo + take * page_size
            if take < n:  # the drop goes on into the next present run
                dropped[d] = (at + take, n - take)
                break
            d += 1
        if cut < end:
            out.append(PageRun(cut, (end - cut) // page_size, run.flags))
        pos += run.nr_pages
    return out, spans


def _pagemap_entries(runs: list[PageRun]) -> Iterable[criu.PagemapEntry]:
    for run in runs:
        vaddr, left = run.vaddr, run.nr_pages
        while left:  # field 2 is a u32: split the (theoretical) longer runs
            n = min(left, _U32_MAX)
            yield criu.PagemapEntry(vaddr=vaddr, compat_nr_pages=n, nr_pages=n, flags=run.flags)
            vaddr += n * PAGE_SIZE
            left -= n


def _sendfile_all(out_fd: int, in_fd: int) -> None:
    """All of in_fd (from offset 0) onto out_fd by sendfile(2): no user-space copy."""
    size, off = os.fstat(in_fd).st_size, 0
    while off < size:
        off += os.sendfile(out_fd, in_fd, off, size - off)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _set_direct(fd: int) -> bool:
    """Turn on O_DIRECT where the filesystem has it: raw pages then go from the reader's
    aligned buffers to the disk, not through the page cache (an image set is written once
    and read at restore, usually elsewhere). Measured on this VM's ext4 (bench/live.py):
    1 GiB in 8 MiB direct writes from a thread ~1.0 s with the fsync, buffered writes and
    the fsync 1.5-2.0 s."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:  # EINVAL: no direct I/O here; buffered writes are as correct
        return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named(fn, name: str, *args):
    """fn(*args), its OSError given the file name it lacks (a write(2) error has none)."""
    try:
        return fn(*args)
    except OSError as e:
        if e.filename is None:
            e.filename = name
        raise


def make_parents(path: Path) -> None:
    """Create the missing directories of path, mode 0700 (an image set holds process memory;
    pathlib's parents=True would make them 0777 & ~umask)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        os.mkdir(p, 0o700)


def is_image_set(path: Path) -> bool:
    return (path / M.INVENTORY).is_file()


class ImageSetWriter:
    """Builds one image set; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        force: bool = False,
        compress: str | None = None,
        level: int = 3,
        threads: int = 0,
        *,
        strategy: str = "unknown",
        profile: str = "unknown",
        host_kind: str = "model",
        page_size: int = PAGE_SIZE,
        frame_size: int = DEFAULT_FRAME_SIZE,
        root_pid: int | None = None,
        arch: str | None = None,
        sync: bool = True,
    ):
        self.path = Path(path)
        self.force = force
        self.compress = compress or NONE
        self.level = level
        self.threads = threads
        self.page_size = page_size
        self.frame_size = frame_size
        # sync: raw pages images with O_DIRECT (where the filesystem has it) and every file
        # and directory fsynced; without, buffered and left to the kernel's writeback, as
        # CRIU does: the rename is still atomic, but a machine crash may lose the set.
        self.sync = sync
        self.strategy, self.profile, self.host_kind = strategy, profile, host_kind
        self.root_pid = root_pid
        self.mtype = _ARCH.get(arch or platform.machine(), criu.UNKNOWN)
        if page_size != PAGE_SIZE:
            raise ValueError(f"page size {page_size}: only {PAGE_SIZE} is supported")
        self._check_target()
        self.tmp = self.path  # until there is one: errors name OUT either way
        with self._writing():
            make_parents(self.path.parent)
            tempdirs.remove_stale(self.path.parent, self.path.name)  # a killed dump's debris
            self.tmp = tempdirs.make(self.path)
        self._tasks: dict[int, dict[str, Any]] = {}
        self._objects: dict[int, SharedObject] = {}
        self._object_pages: dict[int, int] = {}
        self._task_pages: dict[int, int] = {}
        self._pages: list[own.PagesImageEntry] = []
        self._files: list[criu.FileEntry] = []
        self._exe_ids: dict[str, int] = {}
        self._object_file: dict[int, int] = {}
        self._memfds: list[criu.MemfdInodeEntry] = []
        self._truth: set[int] = set()
        self._truth_pool: ThreadPoolExecutor | None = None  # add_truth(wait=False)'s thread
        self._truth_jobs: list[Future[bytes]] = []
        self._cow: set[int] = set()
        self._guards: set[int] = set()
        # Pages the chunks said could not be read (Dropped with a reason): unreadable.img.
        self.unreadable: list[Unreadable] = []
        # Set by a live dump: size and mode of the files it references (RegFileEntry), and
        # the dumper's own ids for the inventory (CRIU's root_ids).
        self.reg_stat: dict[str, tuple[int, int, list[int] | None]] = {}
        self.root_ids: criu.TaskKobjIdsEntry | None = None
        self._done = False

    # -- files ------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """An OSError writing the set names OUT (ENOSPC, EROFS, EACCES...), and the file of
        the set it happened to, never the temporary directory alone."""
        try:
            yield
        except ImageSetExists:
            raise
        except OSError as e:
            if e.filename == str(self.path):
                raise
            inside = e.filename and Path(e.filename).parent == self.tmp != self.path
            where = f" (writing {Path(e.filename).name})" if inside else ""
            raise OSError(e.errno, f"{e.strerror or e}{where}", str(self.path)) from None

    def _check_target(self) -> None:
        p = self.path
        if not p.exists() and not p.is_symlink():
            return
        if not self.force:
            raise ImageSetExists(f"{p}: exists; pass force=True (--force) to replace it")
        if p.is_symlink() or not p.is_dir() or (any(p.iterdir()) and not is_image_set(p)):
            raise ImageSetExists(f"{p}: exists and is not an image set; refusing to replace it")

    def _open(self, name: str) -> BinaryIO:
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb")

    def _close(self, f: BinaryIO) -> None:
        f.flush()
        if self.sync:
            os.fsync(f.fileno())
        f.close()

    def _write_image(self, name: str, kind: codec.Kind, msgs: Iterable[Message]) -> None:
        with self._writing():
            f = self._open(name)
            try:
                _named(f.write, str(self.tmp / name), codec.header(kind))
                for m in msgs:
                    _named(f.write, str(self.tmp / name), codec.frame(m))
            finally:
                _named(self._close, str(self.tmp / name), f)

    def _write_pages(self, chunks: Iterable[bytes | bytearray | memoryview | Dropped],
                     dropped: list[tuple[int, int, str]] | None = None
                     ) -> own.PagesImageEntry:
        """The pages image of the chunks; Dropped items are recorded in dropped as
        (position among the pages, count, reason) and write nothing."""
        pages_id = len(self._pages) + 1  # CRIU's page_ids start at 1
        name = str(self.tmp / M.pages(pages_id))
        with self._writing():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if self.sync and self.compress == NONE:
                _set_direct(fd)
            pw = PagesWriter(fd, pages_id, self.page_size, self.compress, self.level,
                             self.threads, self.frame_size)
            try:
                done = 0  # bytes written
                skipped = 0  # pages dropped so far: positions count them too (_drop)
                for chunk in chunks:  # the source's errors are its own: not relabelled
                    if isinstance(chunk, Dropped):
                        if dropped is None or done % self.page_size:
                            raise ValueError("pages dropped where the writer cannot take them")
                        dropped.append((done // self.page_size + skipped, chunk.nr_pages,
                                        chunk.reason))
                        skipped += chunk.nr_pages
                        continue
                    with self._writing():
                        _named(pw.write, name, chunk)
                    done += len(chunk)
                with self._writing():
                    meta = _named(pw.close, name)
                    if self.sync:
                        _named(os.fsync, name, fd)
            except BaseException:
                pw.discard()
                raise
        finally:
            os.close(fd)
        self._pages.append(meta)
        return meta

    def _pagemap(
        self, name: str, runs: list[PageRun],
        chunks: Iterable[bytes | bytearray | memoryview | Dropped],
        owner: tuple[int, int | None] = (0, None),
    ) -> int:
        """pages-N.img from chunks and the pagemap image name of runs, without the pages the
        chunks dropped; unreadable ones are recorded for owner (pid, or 0 and shmid)."""
        dropped: list[tuple[int, int, str]] = []
        meta = self._write_pages(chunks, dropped)
        if dropped:
            runs, spans = _drop(runs, [(at, n) for at, n, _ in dropped], self.page_size)
            reasons = [why for _, n, why in dropped for _ in range(n)]
            k = 0
            for vaddr, n in spans:
                if reasons[k]:
                    self.unreadable.append(Unreadable(owner[0], vaddr, n, reasons[k],
                                                      owner[1]))
                k += n
        want = sum(r.nr_pages for r in runs if r.present)
        if meta.nr_pages != want or meta.raw_size % self.page_size:
            raise ValueError(
                f"{name}: chunks hold {meta.raw_size} bytes, the present runs {want} pages"
            )
        head = criu.PagemapHead(pages_id=meta.pages_id)
        self._write_image(name, codec.BY_NAME["PAGEMAP"], [head, *_pagemap_entries(runs)])
        return meta.pages_id

    # -- adding -----------------------------------------------------------------------------

    def add_task(
        self,
        pid: int,
        ppid: int,
        comm: str,
        vmas: Sequence[Vma],
        *,
        pgid: int | None = None,
        sid: int | None = None,
        threads: Sequence[int] | None = None,
        state: int = F.TASK_ALIVE,
        exe: str = "",
        mm: dict[str, int] | None = None,
        cores: dict[int, criu.CoreEntry] | None = None,
        ids: criu.TaskKobjIdsEntry | None = None,
        mm_extra: criu.MmEntry | None = None,
    ) -> None:
        """A task: pstree entry, core-TID.img per thread, mm-PID.img (written on commit).

        ppid 0 marks the root. mm holds MmEntry's mm_* fields (0 when left out). cores,
        when given, are the threads' core images as they are (dumper.images.criustate);
        ids is written as ids-PID.img; mm_extra is merged into the MmEntry (auxv, ...).
        A dead task (a zombie) has no mm.
        """
        if pid in self._tasks:
            raise ValueError(f"task {pid} added twice")
        unknown = set(mm or ()) - set(_MM_FIELDS)
        if unknown:
            raise ValueError(f"unknown mm fields {sorted(unknown)}")
        self._tasks[pid] = dict(
            pid=pid,
            ppid=ppid,
            comm=comm,
            vmas=list(vmas),
            pgid=pid if pgid is None else pgid,
            sid=pid if sid is None else sid,
            threads=list(threads or [pid]),
            state=state,
            exe=exe,
            mm=dict(mm or {}),
            cores=cores,
            ids=ids,
            mm_extra=mm_extra,
        )

    def pages_stored(self, pages_id: int) -> int:
        """How many pages pages-<pages_id>.img holds."""
        return self._pages[pages_id - 1].nr_pages

    def add_private_pages(
        self, pid: int, runs: Iterable[RunLike], chunks: Iterable[bytes | bytearray | memoryview]
    ) -> int:
        """A task's pagemap-PID.img and its pages image; returns the pages_id.

        runs: PageRun or (vaddr, nr_pages[, flags]) in address order, flags PE_PRESENT by
        default; chunks: the present pages' bytes in run order, in pieces of any size.
        """
        if pid in self._task_pages:
            raise ValueError(f"pages of task {pid} added twice")
        runs_ = _runs(runs, self.page_size, f"task {pid}")
        self._task_pages[pid] = self._pagemap(M.pagemap(pid), runs_, chunks, (pid, None))
        return self._task_pages[pid]

    def add_shared_object(
        self,
        obj: SharedObject,
        runs: Iterable[RunLike] = (),
        chunks: Iterable[bytes | bytearray | memoryview] = (),
    ) -> int:
        """A shared object: its objects.img record, pagemap-shmem-SHMID.img (runs are offsets
        inside the object) and pages; for a memfd, its memfd.img inode and files.img file.
        Returns the pages_id."""
        if obj.kind not in SHARED_KINDS:
            raise ValueError(f"shared object {obj.shmid}: kind {obj.kind!r} not in {SHARED_KINDS}")
        if obj.shmid in self._objects:
            raise ValueError(f"shared object {obj.shmid} added twice")
        runs_ = _runs(runs, self.page_size, f"object {obj.shmid}")
        if (
            runs_
            and runs_[-1].end(self.page_size) > -(-obj.size // self.page_size) * self.page_size
        ):
            raise ValueError(f"object {obj.shmid}: runs go past its size {obj.size}")
        pages_id = self._pagemap(M.pagemap_shmem(obj.shmid), runs_, chunks, (0, obj.shmid))
        self._objects[obj.shmid] = obj
        self._object_pages[obj.shmid] = pages_id
        if obj.kind == "memfd":
            inode_id = len(self._memfds) + 1
            self._memfds.append(
                criu.MemfdInodeEntry(
                    name=obj.name,
                    uid=obj.uid,
                    gid=obj.gid,
                    size=obj.size,
                    shmid=obj.shmid,
                    seals=obj.seals,
                    inode_id=inode_id,
                )
            )
            if obj.page_size != PAGE_SIZE:  # memfd_create(MFD_HUGETLB | MFD_HUGE_<size>)
                self._memfds[-1].hugetlb_flag = huge_flags(obj.page_size, MFD_HUGETLB)
            fid = self._add_file(criu.MEMFD)
            self._files[-1].memfd.CopyFrom(
                criu.MemfdFileEntry(id=fid, flags=os.O_RDWR, pos=0, fown=_fown(), inode_id=inode_id)
            )
            self._object_file[obj.shmid] = fid
        elif obj.kind == "tmpfs":
            self._object_file[obj.shmid] = self._add_reg(obj.name, os.O_RDWR)
        return pages_id

    def add_truth(
        self, pid: int, runs: Iterable[tuple[int, Sequence[int]]], algo: str = PAGE_DIGEST_ALGO,
        wait: bool = True,
    ) -> bytes | None:
        """truth-PID.img: per-page u64 digests of every mapped page, runs in VMA order.

        The task digest and page count are computed here; returns the task digest. With
        wait=False the digest is finished, and the image written, by a thread of the
        writer's while the caller goes on (a dump writes the next task's pages meanwhile:
        blake2b over 16 bytes a page is ~1 s a GiB); returns None, and commit() raises what
        went wrong."""
        if pid in self._truth:
            raise ValueError(f"truth of task {pid} added twice")
        self._truth.add(pid)
        td = TaskDigest(self.page_size, background=True)  # hashed beside the runs' making
        spool_path = self.tmp / f".truth-{pid}.spool"
        try:
            with self._writing():
                spool = self._open(spool_path.name)
            try:
                for vaddr, digests in runs:  # the source's errors are its own
                    ds = np.asarray(digests, dtype="<u8")
                    td.update(vaddr, ds)
                    with self._writing():
                        for i in range(0, len(ds), TRUTH_RUN_MAX):
                            for part in codec.truth_run_parts(vaddr + i * self.page_size,
                                                              ds[i : i + TRUTH_RUN_MAX]):
                                _named(spool.write, str(spool_path), part)
            finally:
                with self._writing():
                    _named(spool.close, str(spool_path))
        except BaseException:
            td.close()
            raise
        if wait:
            return self._finish_truth(pid, algo, td, spool_path)
        if self._truth_pool is None:
            self._truth_pool = ThreadPoolExecutor(1, "truth")
        self._truth_jobs.append(
            self._truth_pool.submit(self._finish_truth, pid, algo, td, spool_path))
        return None

    def _finish_truth(self, pid: int, algo: str, td: TaskDigest, spool_path: Path) -> bytes:
        """The truth image: its head (the task digest, once hashed), then the spooled runs."""
        try:
            task_digest = td.digest()
        finally:
            td.close()
        head = own.TruthHead(pid=pid, algo=algo, task_digest=task_digest, nr_pages=td.nr_pages)
        name = str(self.tmp / M.truth(pid))
        with self._writing():
            f = self._open(M.truth(pid))
            try:
                _named(f.write, name, codec.header(codec.BY_NAME["TRUTH"]) + codec.frame(head))
                f.flush()
                with open(spool_path, "rb") as src:  # in the kernel: 10x a user-space copy
                    _named(_sendfile_all, name, f.fileno(), src.fileno())
            finally:
                _named(self._close, name, f)
                spool_path.unlink()
        return head.task_digest

    def _truths_written(self, discard: bool = False) -> None:
        """Wait for the truth images add_truth(wait=False) left to its thread; raise the
        first one's error unless discard."""
        jobs, self._truth_jobs = self._truth_jobs, []
        error: BaseException | None = None
        for job in jobs:
            try:
                job.result()
            except BaseException as e:  # noqa: BLE001 - the first is raised, after all ended
                error = error or e
        if self._truth_pool is not None:
            self._truth_pool.shutdown()
            self._truth_pool = None
        if error is not None and not discard:
            raise error

    def add_cow(self, pid: int, records: Iterable[CowRun]) -> None:
        """cow-PID.img: runs of pid's private pages stored once, in another task's pagemap."""
        if pid in self._cow:
            raise ValueError(f"COW records of task {pid} added twice")
        self._cow.add(pid)
        msgs = []
        for r in records:
            if r.pid != pid:
                raise ValueError(f"COW record {r} is not task {pid}'s")
            msgs.append(own.CowEntry(**vars(r)))
        self._write_image(M.cow(pid), codec.BY_NAME["COW"], msgs)

    def add_guards(self, pid: int, records: Iterable[GuardRun]) -> None:
        """guards-PID.img: runs of guard or poison markers a restore re-installs."""
        if pid in self._guards:
            raise ValueError(f"guard records of task {pid} added twice")
        self._guards.add(pid)
        msgs = []
        for r in records:
            if r.pid != pid or r.kind not in GUARD_KINDS:
                raise ValueError(f"guard record {r} is not task {pid}'s or of an unknown kind")
            msgs.append(own.GuardEntry(pid=r.pid, vaddr=r.vaddr, nr_pages=r.nr_pages,
                                       kind=r.kind))
        self._write_image(M.guards(pid), codec.BY_NAME["GUARDS"], msgs)

    # -- commit -----------------------------------------------------------------------------

    def _add_file(self, ftype: int) -> int:
        fid = len(self._files) + 1
        self._files.append(criu.FileEntry(type=ftype, id=fid))
        return fid

    def _add_reg(self, name: str, flags: int = os.O_RDONLY) -> int:
        fid = self._add_file(criu.REG)
        self._files[-1].reg.CopyFrom(
            criu.RegFileEntry(id=fid, flags=flags, pos=0, fown=_fown(), name=name)
        )
        if name in self.reg_stat:  # CRIU checks size and build-id of a mapped file at restore
            size, mode, build_id = self.reg_stat[name]
            self._files[-1].reg.size, self._files[-1].reg.mode = size, mode
            self._files[-1].reg.build_id.extend(build_id or ())
        return fid

    def has_object(self, shmid: int, kind: str) -> bool:
        """Whether add_shared_object added this object (its pages are in the set)."""
        obj = self._objects.get(shmid)
        return obj is not None and obj.kind == kind

    def memfd_inode(self, shmid: int) -> int | None:
        """The memfd.img inode id of a memfd object added with add_shared_object."""
        return next((m.inode_id for m in self._memfds if m.shmid == shmid), None)

    def add_file(self, make: Any) -> int:
        """A files.img entry made by make(id) -> FileEntry; returns the id."""
        fid = len(self._files) + 1
        self._files.append(make(fid))
        return fid

    def add_image(self, name: str, kind: str, msgs: Iterable[Message],
                  extras: Iterable[bytes] = ()) -> None:
        """Any other image of the set (ids, fs, fdinfo, ...), written now; extras are the
        entries' raw payloads for a kind that has them (pipes-data)."""
        f = self._open(name)
        try:
            f.write(codec.encode(codec.BY_NAME[kind], msgs, extras))
        finally:
            self._close(f)

    def _vma_entry(self, pid: int, v: Vma) -> criu.VmaEntry:
        status, shmid = v.status, v.shmid
        if v.obj is not None:
            obj = self._objects.get(v.obj)
            if obj is None:
                raise ValueError(f"task {pid}: VMA {v.start:#x} maps unknown object {v.obj}")
            shared = bool(v.flags & MAP_SHARED)
            if obj.kind in ("memfd", "tmpfs"):
                shmid = self._object_file[obj.shmid]
                derived = F.VMA_FILE_SHARED if shared else F.VMA_FILE_PRIVATE
                if obj.kind == "memfd":
                    derived |= F.VMA_AREA_MEMFD
            else:
                shmid = obj.shmid
                derived = F.VMA_ANON_SHARED | (F.VMA_AREA_SYSVIPC if obj.kind == "sysv" else 0)
            status = status or F.VMA_AREA_REGULAR | derived
        elif v.path and not status:  # a regular file: referenced by name, as CRIU's reg-files
            shared = bool(v.flags & MAP_SHARED)
            fdflags = os.O_RDWR if shared else os.O_RDONLY
            shmid = self._add_reg(v.path, fdflags)
            status = F.VMA_AREA_REGULAR | (F.VMA_FILE_SHARED if shared else F.VMA_FILE_PRIVATE)
        elif not status:
            if v.flags & MAP_SHARED:
                raise ValueError(f"task {pid}: MAP_SHARED VMA {v.start:#x} names no object")
            status = F.VMA_AREA_REGULAR | F.VMA_ANON_PRIVATE
        e = criu.VmaEntry(
            start=v.start,
            end=v.end,
            pgoff=v.pgoff,
            shmid=shmid,
            prot=v.prot,
            flags=v.flags,
            status=status,
            fd=-1,
        )
        if v.madv:
            e.madv = v.madv
        if status & (F.VMA_FILE_SHARED | F.VMA_FILE_PRIVATE) and not status & F.VMA_AREA_MEMFD:
            e.fdflags = os.O_RDWR if v.flags & MAP_SHARED else os.O_RDONLY  # as CRIU opens it
        return e

    def _write_task(self, t: dict[str, Any]) -> criu.PstreeEntry:
        pid = t["pid"]
        if t["ids"] is not None:
            self._write_image(M.ids(pid), codec.BY_NAME["IDS"], [t["ids"]])
        for tid in t["threads"] if t["cores"] is None else ():
            core = criu.CoreEntry(mtype=self.mtype)
            core.thread_core.CopyFrom(
                criu.ThreadCoreEntry(futex_rla=0, futex_rla_len=0, comm=t["comm"])
            )
            if tid == pid:
                core.tc.CopyFrom(
                    criu.TaskCoreEntry(
                        task_state=t["state"],
                        exit_code=0,
                        personality=0,
                        flags=0,
                        blk_sigset=0,
                        comm=t["comm"],
                    )
                )
            self._write_image(M.core(tid), codec.BY_NAME["CORE"], [core])
        for tid, core in (t["cores"] or {}).items():
            self._write_image(M.core(tid), codec.BY_NAME["CORE"], [core])
        entry = criu.PstreeEntry(
            pid=pid, ppid=t["ppid"], pgid=t["pgid"], sid=t["sid"], threads=t["threads"]
        )
        if t["state"] == F.TASK_DEAD:
            return entry  # a zombie: core alone, as CRIU's dump_one_zombie
        exe_id = self._exe_ids.get(t["exe"])
        if exe_id is None:
            exe_id = self._exe_ids[t["exe"]] = self._add_reg(t["exe"])
        mm = criu.MmEntry(exe_file_id=exe_id, **{k: t["mm"].get(k, 0) for k in _MM_FIELDS})
        mm.vmas.extend(self._vma_entry(pid, v) for v in t["vmas"])
        if t["mm_extra"] is not None:
            mm.MergeFrom(t["mm_extra"])
        self._write_image(M.mm(pid), codec.BY_NAME["MM"], [mm])
        if pid not in self._task_pages:  # crit x rss opens every task's pagemap
            self.add_private_pages(pid, [], [])
        return entry

    def _dump_entry(self) -> own.DumpEntry:
        roots = [p for p, t in self._tasks.items() if t["ppid"] == 0]
        root = self.root_pid if self.root_pid is not None else (roots[0] if roots else 0)
        d = own.DumpEntry(
            format_version=FORMAT_VERSION,
            tool_version=__version__,
            strategy=self.strategy,
            profile=self.profile,
            host_kind=self.host_kind,
            page_size=self.page_size,
            compression=own.COMPRESSION_ZSTD if self.compress != NONE else own.COMPRESSION_NONE,
            root_pid=root,
        )
        if self.compress != NONE:
            d.level, d.threads = self.level, self.threads
        d.pages.extend(self._pages)
        return d

    def _objects_img(self) -> list[own.SharedObjectEntry]:
        out = []
        for shmid, o in self._objects.items():
            e = own.SharedObjectEntry(
                shmid=shmid,
                kind=o.kind,
                dev=o.dev,
                ino=o.ino,
                size=o.size,
                name=o.name,
                pages_id=self._object_pages[shmid],
            )
            if shmid in self._object_file:
                e.file_id = self._object_file[shmid]
            if o.page_size != PAGE_SIZE:
                e.page_size = o.page_size
            out.append(e)
        return out

    def commit(self) -> Path:
        """Write the remaining images, validate, and move the set into place."""
        if self._done:
            raise ValueError("image set already committed or aborted")
        try:
            with self._writing():
                self._commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def _commit(self) -> None:
        self._truths_written()
        pstree = [self._write_task(t) for t in self._tasks.values()]
        self._write_image(M.PSTREE, codec.BY_NAME["PSTREE"], pstree)
        self._write_image(M.FILES, codec.BY_NAME["FILES"], self._files)
        if self._memfds:
            self._write_image(M.MEMFD, codec.BY_NAME["MEMFD_INODE"], self._memfds)
        self._write_image(M.OBJECTS, codec.BY_NAME["OBJECTS"], self._objects_img())
        if self.unreadable:
            self._write_image(M.UNREADABLE, codec.BY_NAME["UNREADABLE"], [
                own.UnreadableEntry(pid=u.pid, shmid=u.shmid, vaddr=u.vaddr,
                                    nr_pages=u.nr_pages, reason=u.reason)
                for u in self.unreadable])
        inv = criu.InventoryEntry(img_version=2, fdinfo_per_id=True, ns_per_id=True)
        if self.root_ids is not None:
            inv.root_ids.CopyFrom(self.root_ids)
        self._write_image(M.INVENTORY, codec.BY_NAME["INVENTORY"], [inv])
        # Last: the manifest lists (and checksums) every file written before it.
        self._write_image(M.DUMPER, codec.BY_NAME["DUMPER"],
                          [manifest.seal(self._dump_entry(), self.tmp)])
        self._validate()
        if self.sync:
            _fsync_dir(self.tmp)
        self._install()

    def _validate(self) -> None:
        from dumper.images.reader import ImageSet  # the reader imports records, not us

        try:
            ImageSet.open(self.tmp, verify=False).close()
        except ImageError as e:
            raise ValueError(f"refusing to commit an invalid image set: {e}") from None

    def _install(self) -> None:
        self._check_target()  # again: something may have appeared meanwhile
        if self.path.exists():
            if not _renameat2_exchange(self.tmp, self.path):
                old = tempdirs.make(self.path, "old")
                os.rename(self.path, old / "set")
                os.rename(self.tmp, self.path)
                tempdirs.release(self.tmp)
                self.tmp = old
            shutil.rmtree(self.tmp)  # now holds the replaced set
        else:
            os.rename(self.tmp, self.path)
        tempdirs.release(self.tmp)
        if self.sync:
            _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temporary directory; nothing at path changes."""
        self._done = True
        self._truths_written(discard=True)  # nothing may write into it while it goes
        if self.tmp != self.path:
            shutil.rmtree(self.tmp, ignore_errors=True)
            tempdirs.release(self.tmp)

    def __enter__(self) -> ImageSetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()
