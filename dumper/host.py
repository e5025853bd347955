"""The Host protocol: the questions a dumper asks a machine, and what a restorer needs of one.

This is the one seam between portable logic (select, dump, restore, verify) and a machine.
``ModelHost`` (dumper.model) answers from the executable model; ``LinuxHost`` (dumper.linux)
answers from the real kernel through /proc. Both answer in the kernel's own encodings: maps
text, raw pagemap words, mincore vectors, lseek offsets; the dumper decodes them, it never
reads a host's internals.
"""

from __future__ import annotations

import functools
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dumper.images.records import Vma
from dumper.kabi import PROT_EXEC, PROT_READ, PROT_WRITE
from dumper.state import TaskState


@dataclass(frozen=True)
class TaskInfo:
    """One task of the tree, as /proc/PID/stat and status show it."""

    pid: int
    ppid: int
    comm: str
    pgid: int = 0
    sid: int = 0


@dataclass(frozen=True)
class MapEntry:
    """One /proc/PID/maps line, parsed (fs/proc/task_mmu.c show_map_vma)."""

    start: int
    end: int
    prot: int
    shared: bool
    pgoff: int  # in bytes, as maps prints it
    dev_major: int
    dev_minor: int
    ino: int
    path: str

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> 12

    @property
    def perms(self) -> str:
        return (
            ("r" if self.prot & PROT_READ else "-")
            + ("w" if self.prot & PROT_WRITE else "-")
            + ("x" if self.prot & PROT_EXEC else "-")
            + ("s" if self.shared else "p")
        )

    @property
    def map_files_name(self) -> str:
        """The entry's name under /proc/PID/map_files (proc_map_files_readdir: %lx-%lx)."""
        return f"{self.start:x}-{self.end:x}"

    @property
    def shmem_kind(self) -> str | None:
        """Which shared object backs a MAP_SHARED mapping, judged from the name as CRIU does
        (criu/proc_parse.c handle_vma): 'shmem-anon', 'memfd', 'sysv', or None."""
        return self.object_kind if self.shared else None

    @property
    def object_kind(self) -> str | None:
        """The same judgement for any mapping of a shmem file, MAP_PRIVATE ones included (a
        memfd mapped private is still "/memfd:NAME"); None for other names."""
        if self.path.startswith(("/dev/zero", "/anon_hugepage")):
            return "shmem-anon"
        if self.path.startswith("/memfd:"):
            return "memfd"
        if self.path.startswith("/SYSV"):
            return "sysv"
        return None


_MAPS_RE = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([ps]) ([0-9a-f]+) "
    r"([0-9a-f]+):([0-9a-f]+) (\d+)\s?(.*)$"
)


def parse_maps_line(line: str) -> MapEntry:
    """Parse one /proc/PID/maps line; ValueError names what is wrong."""
    m = _MAPS_RE.match(line.rstrip("\n"))
    if not m:
        raise ValueError(f"malformed maps line: {line.rstrip()!r}")
    start, end = int(m.group(1), 16), int(m.group(2), 16)
    prot = (
        (PROT_READ if m.group(3) == "r" else 0)
        | (PROT_WRITE if m.group(4) == "w" else 0)
        | (PROT_EXEC if m.group(5) == "x" else 0)
    )
    return MapEntry(
        start=start,
        end=end,
        prot=prot,
        shared=m.group(6) == "s",
        pgoff=int(m.group(7), 16),
        dev_major=int(m.group(8), 16),
        dev_minor=int(m.group(9), 16),
        ino=int(m.group(10)),
        path=m.group(11).lstrip(),
    )


def parse_maps(text: str) -> list[MapEntry]:
    """Parse the whole of /proc/PID/maps."""
    return list(_parse_maps(text))


@functools.lru_cache(maxsize=4)
def _parse_maps(text: str) -> tuple[MapEntry, ...]:
    # a frozen tree's maps are read by several steps of one dump (30,000 VMAs: 0.1 s each)
    return tuple(parse_maps_line(line) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class ObjectStat:
    """fstat() of a map_files fd: the shared object's identity and size."""

    dev: int
    ino: int
    size: int
    shmem: bool = True  # on shmem/tmpfs (TMPFS_MAGIC): its pages are the dump's to save
    huge_page_size: int = 0  # on hugetlbfs (HUGETLBFS_MAGIC): its pages are too, this big

    @property
    def is_object(self) -> bool:
        """Whether a dump saves the pages behind it (shmem or hugetlbfs), rather than
        referencing the file."""
        return self.shmem or bool(self.huge_page_size)


class ObjectHandle(Protocol):
    """An open /proc/PID/map_files entry: the shared object behind a mapping."""

    def stat(self) -> ObjectStat: ...

    def lseek(self, offset: int, whence: int) -> int:
        """lseek(2) with SEEK_DATA/SEEK_HOLE; raises OSError(ENXIO) past the data/size."""
        ...

    def pread(self, offset: int, length: int) -> bytes:
        """Read through the fd (shmem_file_read_iter, SGP_READ): holes read as zeros."""
        ...

    def close(self) -> None: ...


class Host(Protocol):
    """What the dump pipeline asks of a machine, and what the restorer needs of one."""

    kind: str  # "model" or "linux"

    # -- questions a dumper asks ------------------------------------------------------------
    def tasks(self, root: int) -> list[TaskInfo]:
        """The tree under root (root first, then in fork order)."""
        ...

    def maps(self, pid: int) -> str:
        """The text of /proc/PID/maps."""
        ...

    def pagemap(self, pid: int, start: int, end: int) -> bytes:
        """Raw little-endian u64 pagemap words for [start, end)."""
        ...

    def pagemap_scan(
        self, pid: int, start: int, end: int, anyof: int, return_mask: int
    ) -> list[tuple[int, int, int]] | None:
        """PAGEMAP_SCAN regions (start, end, categories), or None if the host lacks it."""
        ...

    def open_object(self, pid: int, start: int, end: int) -> ObjectHandle:
        """Open /proc/PID/map_files/START-END."""
        ...

    def mincore(self, pid: int, start: int, end: int) -> bytes:
        """mincore() over [start, end) from pid's point of view: one byte per page."""
        ...

    def read_memory(self, pid: int, start: int, end: int) -> bytes:
        """The bytes of a private range (/proc/PID/mem on Linux); never populates the target."""
        ...

    def freeze(self, pids: list[int]) -> AbstractContextManager[None]:
        """Stop the tree for the duration of the context; always thawed on the way out."""
        ...

    def kernel_areas(self, pid: int) -> list[tuple[int, int]]:
        """(address, size) of the task's memory the kernel itself rewrites while the tree is
        frozen and thawed — each thread's struct rseq (cpu ids, whenever a thread resumes),
        the remaining time of a thread stopped in nanosleep (written at each interruption) —
        so comparing them says nothing."""
        ...

    def freeze_tree(self, root: int) -> AbstractContextManager[list[TaskInfo]]:
        """Stop root and its descendants as they are found (so a fork cannot slip between
        finding and stopping); yields them as tasks(root) lists them; always thawed."""
        ...

    def show_pfn(self) -> bool:
        """Whether pagemap frames are visible to us (CAP_SYS_ADMIN at open)."""
        ...

    def zero_pfn(self) -> int | None:
        """The shared zero page's PFN (as CRIU's kerndat finds it), or None if hidden."""
        ...

    def task_states(self, tasks: list[TaskInfo], leave_out: frozenset[str] = frozenset()
                    ) -> tuple[list[TaskState], dict[str, int]]:
        """While frozen: each task's non-memory state (threads, registers, signal actions,
        files, ...; zombies as such) and the dumper's own namespaces (kind -> inode). fd kinds
        in leave_out are left out instead of refused."""
        ...

    truth_algo: str  # how truth() digests a page

    def truth(self, pid: int) -> list[tuple[int, np.ndarray]]:
        """Ground truth: for every VMA of pid, (start, u64 digest of each page a read of it
        returns now). Used to record a dump's truth and to verify a restore."""
        ...


class NewObject(Protocol):
    """A shared object a restorer re-created: its pages are written through it (the holes
    are never touched, so lseek SEEK_DATA finds what the dump found)."""

    def write(self, offset: int, data: bytes) -> None: ...


class RestoreTarget(Protocol):
    """What dumper.restore.restore() does to a machine to rebuild a tree, each a system call
    a restorer makes: ModelTarget (dumper.model.host) does them to the model, LinuxTarget
    (dumper.linux.rst_target) to the kernel, in stopped stub tasks it owns."""

    kind: str

    # -- the memory half (both targets) ----------------------------------------------------
    def create_task(self, pid: int, ppid: int, comm: str) -> None:
        """clone3 with set_tid=[pid]: a child of a restored parent (ppid) inherits its mm
        as fork makes it; ppid 0 for the root."""
        ...

    def create_object(self, kind: str, size: int, name: str = "", key: int = 0,
                      seals: int = 0, page_size: int = 4096) -> NewObject:
        """memfd_create / shmget / a MAP_SHARED|MAP_ANONYMOUS inode, size bytes, empty."""
        ...

    def map(self, pid: int, vma: Vma, obj: NewObject | None) -> None:
        """mmap the VMA at its address with its protection and flags: anonymous, from the
        object, or from the regular file vma.path names."""
        ...

    def unmap(self, pid: int, start: int, end: int) -> None: ...

    def write_memory(self, pid: int, addr: int, data: bytes) -> None:
        """Write private pages (breaking COW where the page is shared)."""
        ...

    def discard(self, pid: int, start: int, end: int) -> None:
        """MADV_DONTNEED: an inherited page the task did not have reads zeros/the file."""
        ...

    def install_marker(self, pid: int, start: int, end: int, kind: str) -> None:
        """MADV_GUARD_INSTALL (kind "guard") or UFFDIO_POISON ("poison")."""
        ...

    def remove_marker(self, pid: int, start: int, end: int, kind: str) -> None: ...

    def release_objects(self, objs: list[NewObject]) -> None:
        """close() the restorer's handles once every mapping is in place."""
        ...


class LiveRestoreTarget(RestoreTarget, Protocol):
    """What a live tree needs besides memory (restore() calls these when the images hold the
    tree's state): registers, signal state, files, threads, then letting it run."""

    def set_objects(self, objects: dict[int, NewObject]) -> None:
        """The shared objects restore() created, by shmid, before any set_state: a
        descriptor of one (a memfd held open) opens the same object."""
        ...

    def set_state(self, pid: int, state: TaskState) -> None:
        """Everything but memory: threads (clone3 CLONE_THREAD with set_tid), registers,
        XSAVE, TLS, sigmask and actions, rseq, robust list, clear-tid, mm fields and auxv,
        cwd/umask, rlimits, credentials, fds; a zombie is made to exit with its code."""
        ...

    def finish(self, stopped: bool) -> None:
        """Let the whole tree run (or leave it stopped with SIGSTOP), detached."""
        ...

    def abort(self) -> None:
        """Kill every task created so far and reap it: a failed restore leaves nothing."""
        ...
