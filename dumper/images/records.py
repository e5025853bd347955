"""Plain data an image set holds, as the writer takes it and the reader returns it."""

from __future__ import annotations

from dataclasses import dataclass, field

from dumper.images import flags as F
from dumper.kabi import MAP_SHARED, PAGE_SIZE

SHARED_KINDS = ("shmem-anon", "memfd", "sysv", "tmpfs")


@dataclass(frozen=True)
class Vma:
    """One VMA. pgoff is in bytes, as /proc/PID/maps and CRIU's images have it.

    Writer: give obj (the shared object's shmid) for a MAP_SHARED mapping of an object added
    with add_shared_object, or path for a regular file that is referenced, not dumped; leave
    status and shmid 0 and the writer derives CRIU's values.
    Reader: status and shmid are the image's; obj is the resolved object, or None.
    """

    start: int
    end: int
    prot: int
    flags: int
    pgoff: int = 0
    status: int = 0
    shmid: int = 0
    obj: int | None = None
    madv: int = 0
    path: str = ""  # a regular file the VMA maps, referenced (not copied): files.img's name

    @property
    def npages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    @property
    def private(self) -> bool:
        """CRIU's vma_area_is_private: the task's own pages go to its pagemap."""
        if self.status:
            return bool(self.status & (F.VMA_ANON_PRIVATE | F.VMA_FILE_PRIVATE))
        return not self.flags & MAP_SHARED


@dataclass(frozen=True)
class PageRun:
    """One pagemap entry: nr_pages from vaddr (an address, or an object offset for shmem).

    offset is where the run's data starts in the raw pages, -1 when flags lack PE_PRESENT.
    """

    vaddr: int
    nr_pages: int
    flags: int = F.PE_PRESENT
    offset: int = -1

    @property
    def present(self) -> bool:
        return bool(self.flags & F.PE_PRESENT)

    def end(self, page_size: int = PAGE_SIZE) -> int:
        return self.vaddr + self.nr_pages * page_size


@dataclass(frozen=True)
class CowRun:
    """pid's pages [vaddr, +nr_pages) are the same physical pages as src_pid's at src_vaddr:
    stored once, in src_pid's image."""

    pid: int
    vaddr: int
    nr_pages: int
    src_pid: int
    src_vaddr: int


@dataclass(frozen=True)
class GuardRun:
    """pid's pages [vaddr, +nr_pages) hold PTE markers whose read faults ("guard" regions or
    "poison"): no data, re-installed on restore."""

    pid: int
    vaddr: int
    nr_pages: int
    kind: str = "guard"


GUARD_KINDS = ("guard", "poison")


@dataclass(frozen=True)
class Unreadable:
    """Pages a dump selected and could not read: task pid's [vaddr, +nr_pages), or, with pid
    0, object shmid's pages at offset vaddr. Not stored: a restore gives zeros there."""

    pid: int
    vaddr: int
    nr_pages: int
    reason: str
    shmid: int | None = None

    def describe(self) -> str:
        where = f"pid {self.pid} {self.vaddr:#x}" if self.pid else (
            f"object {self.shmid} offset {self.vaddr:#x}")
        return f"{where}+{self.nr_pages} pages: unreadable ({self.reason})"


@dataclass(frozen=True)
class Dropped:
    """In a stream of page chunks given to the writer: the next nr_pages selected pages are
    not stored after all — a hole found while reading (reason ""), or pages that could not
    be read (reason: why). The writer takes them out of the runs it records."""

    nr_pages: int
    reason: str = ""


@dataclass(frozen=True)
class SharedObject:
    """A shared object: what a MAP_SHARED mapping is backed by. size is in bytes.

    Reader: pages_id and pagemap (offsets inside the object) are filled; kind is guessed for
    CRIU sets (no objects.img), where dev and ino are unknown (0).
    """

    shmid: int
    kind: str
    size: int
    dev: int = 0
    ino: int = 0
    name: str = ""
    seals: int = 0
    uid: int = 0
    gid: int = 0
    pages_id: int = 0
    pagemap: tuple[PageRun, ...] = ()
    page_size: int = PAGE_SIZE  # a hugetlb object's huge page size

    @property
    def label(self) -> str:
        name = f" {self.name}" if self.name else ""
        return f"{self.kind}{name} (shmid {self.shmid})"


@dataclass
class Task:
    """A task as the reader returns it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]
    comm: str
    state: int
    exe: str = ""
    vmas: list[Vma] = field(default_factory=list)
    pages_id: int = 0
    pagemap: list[PageRun] = field(default_factory=list)
    cow: list[CowRun] = field(default_factory=list)
    guards: list[GuardRun] = field(default_factory=list)
    guard_vmas: list[GuardRun] = field(default_factory=list)  # mm's VMA_AREA_GUARD entries

    @property
    def present_pages(self) -> int:
        return sum(r.nr_pages for r in self.pagemap if r.present)


@dataclass(frozen=True)
class PagesInfo:
    """One pages image: raw and stored sizes, compression; checksum "" for CRIU sets."""

    pages_id: int
    compression: str
    nr_pages: int
    raw_size: int
    stored_size: int
    checksum: str = ""


@dataclass(frozen=True)
class DumpMeta:
    """dumper.img: how the set was made. None in a CRIU set."""

    format_version: int
    tool_version: str
    strategy: str
    profile: str
    host_kind: str
    page_size: int
    compression: str
    level: int
    threads: int
    root_pid: int


@dataclass(frozen=True)
class Truth:
    """truth-PID.img's head; the runs come from ImageSet.iter_truth(pid)."""

    pid: int
    algo: str
    task_digest: bytes
    nr_pages: int
