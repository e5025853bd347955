"""The model's state: frames, swap, shared objects, VMAs, tasks — all pages in numpy arrays.

Nothing here changes state on its own; the operations that do live in the modules named after
the kernel code they mimic (mm, fault, shmem, madvise, task, vmscan, migrate). Observation
(observe) only reads.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from dumper.kabi import PAGE_SHIFT, PAGE_SIZE
from dumper.model.content import ContentStore
from dumper.model.kernels import Profile

# struct page flags the model needs.
F_USED = 1
F_ANON = 2  # folio_test_anon: a private anonymous page (PM_FILE is its negation)
F_UPTODATE = 4  # folio_test_uptodate: fallocated shmem folios are not (SGP_FALLOC)
F_DIRTY = 8  # written since last cleaned (a file page since read; pte_dirty for anon)
F_LAZYFREE = 16  # !folio_test_swapbacked: MADV_FREE'd anonymous, discarded by reclaim if clean
F_HUGETLB = 32  # a page of a hugetlb folio (from the pool; never reclaimed)

PFN_BASE = 0x100000
# The shared zero page (mm/memory.c my_zero_pfn); this machine's was 0x3b34 (kernel.md §7 (e)).
ZERO_PFN = 0x3B34

# Page-cache (xarray) entries of a shared object, one u64 per index.
PC_HOLE = 0
PC_PAGE = 1  # value = PFN
PC_SWAP = 2  # value = swap offset (an xa_value swap entry, shmem_writeout)
PC_SHIFT = 60
PC_VALUE = (1 << 55) - 1


class ModelError(Exception):
    """An operation the kernel would refuse (its errno named), or a fault a task would take."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(f"{errno_name}: {message}")
        self.errno_name = errno_name


class Growable:
    """A numpy vector that grows by doubling (the model's struct page / swap_map arrays)."""

    def __init__(self, dtype: type, capacity: int = 1024) -> None:
        self.a = np.zeros(capacity, dtype=dtype)
        self.n = 0

    def extend(self, count: int) -> int:
        """Reserve count new zeroed elements; return the index of the first."""
        first = self.n
        need = self.n + count
        if need > len(self.a):
            cap = max(need, 2 * len(self.a))
            grown = np.zeros(cap, dtype=self.a.dtype)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        self.n = need
        return first


class Frames:
    """Physical page frames (struct page): content, mapcount, flags, swap-cache slot."""

    def __init__(self) -> None:
        self.content = Growable(np.uint64)
        self.mapcount = Growable(np.int32)
        self.flags = Growable(np.uint8)
        self.swapslot = Growable(np.int64)  # folio_test_swapcache: the slot it caches, or 0
        self.allocated = 0

    def alloc(self, cids: np.ndarray, flags: int) -> np.ndarray:
        """Allocate len(cids) frames holding those contents; return their PFNs."""
        n = len(cids)
        first = self.content.extend(n)
        self.mapcount.extend(n)
        self.flags.extend(n)
        self.swapslot.extend(n)
        self.content.a[first : first + n] = cids
        self.flags.a[first : first + n] = flags | F_USED
        self.allocated += n
        return np.arange(PFN_BASE + first, PFN_BASE + first + n, dtype=np.uint64)

    def free(self, pfns: np.ndarray) -> None:
        """__folio_put: the frames return to the allocator (PFNs are not reused)."""
        i = np.asarray(pfns, dtype=np.int64) - PFN_BASE
        self.flags.a[i] = 0
        self.mapcount.a[i] = 0
        self.swapslot.a[i] = 0
        self.allocated -= len(i)

    def cid(self, pfn: int) -> int:
        if pfn == ZERO_PFN:
            return 0
        return int(self.content.a[pfn - PFN_BASE])

    def cids(self, pfns: np.ndarray) -> np.ndarray:
        pfns = np.asarray(pfns, dtype=np.uint64)
        out = np.zeros(len(pfns), dtype=np.uint64)
        real = pfns != np.uint64(ZERO_PFN)
        out[real] = self.content.a[pfns[real].astype(np.int64) - PFN_BASE]
        return out


class SwapDevice:
    """One swap area (type 0): slots, their use counts (swap_map) and the swap cache."""

    def __init__(self) -> None:
        self.enabled = True
        # zram-like: writeback completes at once and the swap cache lets go immediately;
        # False models a swapfile, whose pages linger in the swap cache (kernel.md §4).
        self.sync = True
        self.content = Growable(np.uint64)
        self.count = Growable(np.int32)  # swap_map: swap ptes + shmem value entries
        self.cache = Growable(np.int64)  # swap cache: the PFN caching the slot, or 0
        # Offset 0 holds the swap header (mm/swapfile.c); the first slot is 1, as seen here.
        self.content.extend(1)
        self.count.extend(1)
        self.cache.extend(1)
        self.in_use = 0

    def alloc(self, cids: np.ndarray) -> np.ndarray:
        """folio_alloc_swap: new slots holding these contents, count 0 (callers add refs)."""
        n = len(cids)
        first = self.content.extend(n)
        self.count.extend(n)
        self.cache.extend(n)
        self.content.a[first : first + n] = cids
        self.in_use += n
        return np.arange(first, first + n, dtype=np.uint64)


@dataclass(eq=False)
class Inode:
    """A shared object: shmem (MAP_SHARED|MAP_ANONYMOUS), memfd, SysV segment, tmpfs or
    regular file. Its page cache is one u64 per index (hole / page / swap value)."""

    kind: str  # "shmem-anon" | "memfd" | "sysv" | "tmpfs" | "file" | "hugetlb"
    dev: tuple[int, int]
    ino: int
    name: str
    size: int
    cache: np.ndarray
    owner_uid: int = 0
    mode: int = 0o777
    disk: np.ndarray | None = None  # a regular file's contents on disk (cids)
    sysv_key: int = 0
    sysv_id: int = -1
    refs: int = 0  # VMAs, fds and a live SysV id holding the inode

    @property
    def npages(self) -> int:
        return (self.size + PAGE_SIZE - 1) >> PAGE_SHIFT

    @property
    def is_shmem(self) -> bool:
        """On a shmem mount (TMPFS_MAGIC): not a regular file, nor a hugetlbfs one."""
        return self.kind not in ("file", "hugetlb")

    def grow_cache(self, npages: int) -> None:
        if npages > len(self.cache):
            grown = np.zeros(npages, dtype=np.uint64)
            grown[: len(self.cache)] = self.cache
            self.cache = grown
        if self.disk is not None and npages > len(self.disk):
            grown = np.zeros(npages, dtype=np.uint64)
            grown[: len(self.disk)] = self.disk
            self.disk = grown

    def link_name(self) -> str:
        """What /proc/PID/maps and map_files show for it (fs/proc/base.c, kernel.md §6)."""
        if self.kind == "shmem-anon":
            return "/dev/zero (deleted)"
        if self.kind == "memfd":
            return f"/memfd:{self.name} (deleted)"
        if self.kind == "sysv":
            return f"/SYSV{self.sysv_key & 0xFFFFFFFF:08x} (deleted)"
        return self.name


@dataclass(eq=False)
class Vma:
    """A vm_area_struct with its page table: one PTE word per page of [start, end)."""

    start: int
    end: int
    prot: int
    shared: bool  # VM_SHARED (MAP_SHARED)
    obj: Inode | None  # the vm_file's inode, None for private anonymous memory
    pgoff: int  # vm_pgoff, in pages
    ptes: np.ndarray
    anon_vma: bool = False
    uffd_wp: bool = False  # registered with userfaultfd in WP mode (async, unpopulated)
    name: str = ""  # e.g. [heap], [stack]
    dontcopy: bool = False  # VM_DONTCOPY (MADV_DONTFORK): fork leaves it out of the child
    wipeonfork: bool = False  # VM_WIPEONFORK: the child gets the VMA empty
    maywrite: bool = True  # VM_MAYWRITE: not for a SysV segment attached SHM_RDONLY
    hugepage: bool = False  # VM_HUGEPAGE (MADV_HUGEPAGE)
    nohugepage: bool = False  # VM_NOHUGEPAGE
    # PMD state of the page table under the VMA, by PMD number (address >> 21): PMD-mapped
    # ("thp": a huge folio, "zero": the huge zero page; the model still keeps a PTE word per
    # page), and PMDs that have a PTE table although every PTE may be none (split or zapped).
    huge: dict[int, str] = field(default_factory=dict)
    ptables: set[int] = field(default_factory=set)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def index(self, addr: int) -> int:
        """Page index of addr within this VMA."""
        return (addr - self.start) >> PAGE_SHIFT

    def file_index(self, addr: int) -> int:
        """linear_page_index(): the object page behind addr."""
        return self.pgoff + self.index(addr)


@dataclass(eq=False)
class Task:
    """A task_struct with its mm (VMAs sorted by start) and file table."""

    pid: int
    ppid: int
    comm: str
    uid: int = 0
    vmas: list[Vma] = field(default_factory=list)
    fds: dict[int, Inode] = field(default_factory=dict)
    alive: bool = True

    def find_vma(self, addr: int) -> Vma | None:
        """find_vma: the VMA containing addr, or None."""
        i = bisect.bisect_right([v.start for v in self.vmas], addr) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and v.end > start]

    def insert_vma(self, vma: Vma) -> None:
        bisect.insort(self.vmas, vma, key=lambda v: v.start)


@dataclass
class Counters:
    """Cost of observations: what a kernel walk would touch."""

    ptes_walked: int = 0
    pagecache_lookups: int = 0
    syscalls: int = 0

    def snapshot(self) -> Counters:
        return Counters(self.ptes_walked, self.pagecache_lookups, self.syscalls)

    def since(self, before: Counters) -> Counters:
        return Counters(
            self.ptes_walked - before.ptes_walked,
            self.pagecache_lookups - before.pagecache_lookups,
            self.syscalls - before.syscalls,
        )


@dataclass(eq=False)
class Kernel:
    """One modelled machine running one kernel behaviour profile."""

    profile: Profile
    frames: Frames = field(default_factory=Frames)
    swap: SwapDevice = field(default_factory=SwapDevice)
    contents: ContentStore = field(default_factory=ContentStore)
    tasks: dict[int, Task] = field(default_factory=dict)
    inodes: list[Inode] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    migrating: set[int] = field(default_factory=set)  # old PFNs with migration entries out
    thp: str = "madvise"  # /sys/kernel/mm/transparent_hugepage/enabled: always|madvise|never
    hugetlb_pool: int = 0  # vm.nr_hugepages (2 MiB pages)
    shmem_folio_pages: int = 1  # the large shmem folio size shmem_enabled allows (16: 64K)
    large: dict[int, int] = field(default_factory=dict)  # THP folios: head PFN -> pages
    next_pid: int = 1
    next_ino: int = 1024
    next_sysv_id: int = 0
    mmap_base: int = 0x7F0000000000

    def task(self, pid: int) -> Task:
        t = self.tasks.get(pid)
        if t is None or not t.alive:
            raise ModelError("ESRCH", f"no task with pid {pid}")
        return t

    def new_inode(
        self, kind: str, size: int, name: str = "", dev: tuple[int, int] = (0, 1)
    ) -> Inode:
        """new_inode() on shm_mnt (dev 00:01 as /proc/PID/maps shows shmem) or a tmpfs."""
        npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        inode = Inode(kind, dev, self.next_ino, name, size, np.zeros(npages, dtype=np.uint64))
        if kind == "file":
            inode.disk = np.zeros(npages, dtype=np.uint64)
        self.next_ino += 1
        self.inodes.append(inode)
        return inode
