"""The address-space rebuild of a restore (restore.md §1.6, §3, §5.1 (c)-(h), §5.3).

A stub (a copy of the restorer) is emptied: its rseq unregistered (§5.6: the kernel would
write to an unmapped area), its fds closed, every mapping but the vdso group and our scratch
page unmapped. The vdso group ([vvar], [vvar_vclock], [vdso]) is mremap'd to where the dump
had it: the code it runs was mapped there, and so is our syscall gate from then on. Then
every VMA is mmap'd MAP_FIXED at its address with its protection and flags: anonymous, from
the regular file (checked against the size the dump recorded), or from a shared object the
restorer created once (opened by the task through /proc/RESTORER/map_files or /fd, so it is
the same inode, or shmat for SysV: §3.1-§3.4). Private pages are written through
/proc/PID/mem (FOLL_FORCE: read-only and PROT_NONE pages too, §2.3).
"""

from __future__ import annotations

import ctypes
import errno
import mmap as pymmap
import os
import struct

from dumper.host import parse_maps
from dumper.images import flags as F
from dumper.images.records import Vma
from dumper.kabi import (
    HUGE_SHIFT,
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MFD_HUGETLB,
    PAGE_SIZE,
    PROT_WRITE,
    huge_flags,
)
from dumper.linux import buildid, procfs, rst_write
from dumper.linux.rst_inject import AT_FDCWD, RestoreInjector
from dumper.linux.taskstate import rseq_config

SCRATCH_SIZE = 2 * PAGE_SIZE
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
RSEQ_FLAG_UNREGISTER = 1
MAP_FIXED, MAP_NORESERVE = 0x10, 0x4000
# MAP_HUGETLB and its size bits: private hugetlb memory is anonymous in huge pages again
KEEP_FLAGS = MAP_GROWSDOWN | MAP_NORESERVE | MAP_HUGETLB | (0x3F << HUGE_SHIFT)
SHM_RDONLY, SHM_REMAP, SHM_HUGETLB = 0o10000, 0o40000, 0o4000
HUGEPAGES = "/sys/kernel/mm/hugepages"
MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 4, 102, 103
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]")
MFD_ALLOW_SEALING, F_ADD_SEALS = 2, 1033
# include/uapi/linux/userfaultfd.h: _IOWR(0xAA, nr, struct) of 24, 32 and 32 bytes
UFFDIO_API, UFFDIO_REGISTER, UFFDIO_POISON = 0xC018AA3F, 0xC020AA00, 0xC020AA08
UFFD_API, UFFD_FEATURE_POISON, UFFDIO_REGISTER_MODE_MISSING = 0xAA, 1 << 14, 1


class MmError(OSError):
    """The address space cannot be rebuilt as the images say; the message names why."""


def pick_scratch(layouts: list[list[tuple[int, int]]]) -> int:
    """An address for the scratch page (and the vdso's parking place after it) that no
    dumped VMA and no mapping of the restorer (the stub's first layout) covers."""
    mine = [(e.start, e.end) for e in parse_maps(procfs.task_maps(os.getpid()))]
    spans = [s for lay in layouts for s in lay] + mine
    for base in range(0x100000000000, 0x700000000000, 0x10000000000):
        end = base + SCRATCH_SIZE + (64 << 20)
        if not any(a < end and base < b for a, b in spans):
            return base
    raise MmError(errno.ENOMEM, "no free address for the restore's scratch page")


def teardown(pid: int, scratch: int) -> RestoreInjector:
    """Empty a fresh stub: map the scratch page, unregister rseq, close every fd, unmap all
    but the vdso group, [vsyscall] and the scratch page. Returns the stub's injector."""
    inj = map_scratch(pid, scratch)
    conf = rseq_config(pid)
    if conf is not None:
        inj.check("rseq", conf[0], conf[1], RSEQ_FLAG_UNREGISTER, conf[2])
    inj.check("close_range", 0, 0xFFFFFFFF, 0)
    keep = [(e.start, e.end) for e in parse_maps(procfs.task_maps(pid))
            if e.path in SPECIAL or e.path == "[vsyscall]"]
    keep.append((scratch, scratch + SCRATCH_SIZE))
    pos = PAGE_SIZE * 16  # below mmap_min_addr nothing is mapped
    for a, b in sorted(keep):
        if a >= 1 << 47:
            break
        if a > pos:
            inj.check("munmap", pos, a - pos)
        pos = max(pos, b)
    if pos < (1 << 47) - PAGE_SIZE:
        inj.check("munmap", pos, (1 << 47) - PAGE_SIZE - pos)
    return inj


def map_scratch(pid: int, scratch: int) -> RestoreInjector:
    """An injector in a fresh stub, with our scratch page mapped RW at scratch."""
    inj = RestoreInjector(pid, pid, gate=_find_gate(pid))
    got = inj.check("mmap", scratch, SCRATCH_SIZE, pymmap.PROT_READ | pymmap.PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | 0x100000, -1, 0)  # MAP_FIXED_NOREPLACE
    if got != scratch:
        raise MmError(errno.EEXIST, f"task {pid}: scratch page landed at {got:#x}")
    inj.scratch_addr = scratch
    return inj


def _find_gate(pid: int) -> int:
    from dumper.linux.inject import find_gate

    return find_gate(pid)


def place_vdso(inj: RestoreInjector, vmas: list[Vma], park: int) -> None:
    """mremap [vvar], [vvar_vclock], [vdso] (one VMA each: a special mapping cannot be split,
    §5.3) first out of the way to park, then to the dumped [vvar]/[vdso] addresses; the gate
    moves with the vdso."""
    move_vdso(inj, vmas, park_vdso(inj, park))


def park_vdso(inj: RestoreInjector, park: int) -> dict[str, tuple[int, int]]:
    """mremap the task's vdso group to the parking place after the scratch page, outside
    every dumped VMA (pick_scratch): {name: (address, size)}."""
    parked = {}
    at = park + SCRATCH_SIZE + PAGE_SIZE
    for e in parse_maps(procfs.task_maps(inj.pid)):
        if e.path in SPECIAL:
            _mremap(inj, e.start, e.end - e.start, at, e.path)
            parked[e.path] = (at, e.end - e.start)
            at += e.end - e.start + PAGE_SIZE
    return parked


def move_vdso(inj: RestoreInjector, vmas: list[Vma], parked: dict[str, tuple[int, int]]
              ) -> None:
    """The parked vdso group to where the task's images have [vvar] and [vdso] (what
    CRIU's restorer does after checking the vdso's symbols, pie/parasite-vdso.c); the gate
    is found again in the vdso at its new place."""
    vdso = next((v for v in vmas if v.status & F.VMA_AREA_VDSO), None)
    vvar = next((v for v in vmas if v.status & F.VMA_AREA_VVAR), None)
    if vdso is None or "[vdso]" not in parked:
        raise MmError(errno.ENOENT, f"task {inj.pid}: no [vdso] in the images or the stub")
    if vdso.end - vdso.start != parked["[vdso]"][1]:
        raise MmError(errno.EINVAL, f"task {inj.pid}: the dumped [vdso] is "
                      f"{vdso.end - vdso.start} bytes, this kernel's "
                      f"{parked['[vdso]'][1]}: dumped on another kernel (a vdso proxy "
                      "as CRIU makes one is not built)")
    dumped = sum(v.end - v.start for v in vmas if v.status & F.VMA_AREA_VVAR)
    ours = sum(parked[n][1] for n in ("[vvar]", "[vvar_vclock]") if n in parked)
    if vvar is not None and dumped != ours:
        raise MmError(errno.EINVAL, f"task {inj.pid}: the dumped [vvar] is {dumped} bytes, "
                      f"this kernel's {ours}: dumped on another kernel")
    want = {"[vdso]": vdso.start}
    if vvar is not None:
        want["[vvar]"] = vvar.start
        if "[vvar_vclock]" in parked and "[vvar]" in parked:
            want["[vvar_vclock]"] = vvar.start + parked["[vvar]"][1]
    for name, (a, size) in parked.items():
        if name in want:
            _mremap(inj, a, size, want[name], name)
        else:
            inj.check("munmap", a, size)
    inj.gate = _find_gate(inj.pid)


def _mremap(inj: RestoreInjector, old: int, size: int, new: int, name: str) -> None:
    delta = new - old
    got = inj.check("mremap", old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, new)
    if got != new:
        raise MmError(errno.EINVAL, f"task {inj.pid}: {name} moved to {got:#x}, not {new:#x}")
    if name == "[vdso]":
        inj.gate += delta


def map_vma(inj: RestoreInjector, vma: Vma, obj, files: dict[str, tuple[int | None, int]]
            ) -> None:
    """mmap one VMA MAP_FIXED at its address (do_mmap): anonymous, file, or object."""
    length = vma.end - vma.start
    shared = bool(vma.flags & MAP_SHARED)
    flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_FIXED | (vma.flags & KEEP_FLAGS)
    if obj is None and not vma.path:
        inj.check("mmap", vma.start, length, vma.prot, flags | MAP_ANONYMOUS, -1, 0)
        return
    if obj is not None and obj.kind == "sysv":
        how = SHM_REMAP | (0 if vma.prot & PROT_WRITE else SHM_RDONLY)
        got = inj.call("shmat", obj.shmid, vma.start, how)
        if got != vma.start:
            raise MmError(-got if got < 0 else errno.EINVAL, f"task {inj.pid}: VMA "
                          f"{vma.start:#x}: shmat of SysV segment {obj.shmid}: "
                          f"{os.strerror(-got) if got < 0 else hex(got)}")
        return
    path = obj.task_path if obj is not None else vma.path
    if obj is None:
        check_file(vma.path, files, f"task {inj.pid}: VMA {vma.start:#x}")
    mode = os.O_RDWR if shared and vma.prot & PROT_WRITE else os.O_RDONLY
    if obj is not None:
        mode = os.O_RDWR
    fd = inj.call("openat", AT_FDCWD & 0xFFFFFFFFFFFFFFFF, inj.put_str(path, 1024), mode, 0)
    if fd < 0:
        raise MmError(-fd, f"task {inj.pid}: VMA {vma.start:#x}: open {path}: "
                      f"{os.strerror(-fd)}")
    try:
        inj.check("mmap", vma.start, length, vma.prot, flags, fd, vma.pgoff)
    finally:
        inj.call("close", fd)


def install_poison(inj: RestoreInjector, vma: Vma | None, start: int, end: int) -> None:
    """Poison markers (PTE_MARKER_POISONED: a read or write there is SIGBUS) by UFFDIO_POISON
    (mm/userfaultfd.c mfill_atomic_poison, 6.6+): the task makes a userfaultfd of its own,
    registers the range for missing faults, poisons it and closes the fd; the markers stay,
    the registration goes with the fd (measured here, 6.18). Only where userfaultfd can
    register (vma_can_userfault: anonymous, shmem, hugetlb memory), into none ptes."""
    where = f"task {inj.pid}: poison marker at {start:#x}"
    if vma is None or (vma.path and vma.obj is None):
        raise MmError(errno.ENOTSUP, f"{where}: in a mapping of {vma.path if vma else '?'}, "
                      "where the kernel cannot re-create it (userfaultfd registers "
                      "anonymous, shmem and hugetlb memory only)")
    fd = inj.call("userfaultfd", os.O_CLOEXEC)
    if fd < 0:
        raise MmError(-fd, f"{where}: userfaultfd: {os.strerror(-fd)}")
    try:
        steps = (("UFFDIO_API with UFFD_FEATURE_POISON", UFFDIO_API,
                  struct.pack("<3Q", UFFD_API, UFFD_FEATURE_POISON, 0)),
                 ("UFFDIO_REGISTER", UFFDIO_REGISTER,
                  struct.pack("<4Q", start, end - start, UFFDIO_REGISTER_MODE_MISSING, 0)),
                 ("UFFDIO_POISON", UFFDIO_POISON, struct.pack("<4Q", start, end - start, 0, 0)))
        for what, request, arg in steps:
            got = inj.call("ioctl", fd, request, inj.put(arg))
            if got < 0:
                raise MmError(-got, f"{where}: {what}: {os.strerror(-got)}")
    finally:
        inj.call("close", fd)


def check_file(path: str, files: dict[str, tuple[int | None, int, list[int] | None]],
               where: str, verb: str = "maps") -> None:
    """The file a VMA maps must be the one dumped: there, of the size recorded, and for an
    ELF file with the build-id recorded (CRIU's --file-validation=build-id, files-reg.c)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise MmError(e.errno, f"{where} {verb} {path}: {e.strerror}") from None
    size, _, want = files.get(path, (None, 0, None))
    if size is not None and st.st_size != size:
        raise MmError(errno.ESTALE, f"{where} {verb} {path}: changed since the dump "
                      f"({st.st_size} bytes, {size} when dumped)")
    if want:
        got = buildid.build_id(path) or []
        if _trimmed(got) != _trimmed(want):
            raise MmError(errno.ESTALE, f"{where} {verb} {path}: changed since the dump "
                          "(its ELF build-id differs)")


def _trimmed(words) -> list[int]:
    """A build-id's words without the zero padding (CRIU and we may pad it differently)."""
    out = list(words)
    while out and out[-1] == 0:
        out.pop()
    return out


class LinuxObject:
    """A shared object the restorer re-created and holds until every task mapped it.

    hugetlb objects (page_size a huge page size) come back in huge pages of that size:
    MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB ("/anon_hugepage (deleted)"), memfd_create with
    MFD_HUGETLB, shmget with SHM_HUGETLB, each with the page size in the flags' HUGE_SHIFT
    bits. hugetlbfs files take no write(2) (hugetlbfs_file_operations has no write_iter), so
    their pages are copied in through a mapping of ours; only the stored huge pages are
    touched, and the others stay unallocated, as the dumped holes were."""

    def __init__(self, kind: str, size: int, name: str, ino: int, seals: int,
                 page_size: int) -> None:
        self.kind, self.size, self.seals, self.page_size = kind, size, seals, page_size
        self.huge = page_size != PAGE_SIZE
        what = f"{kind} object {name or ino}"
        if self.huge:
            check_huge_size(page_size, what)
        self.length = -(-size // page_size) * page_size or page_size
        self.fd = -1
        self.map: pymmap.mmap | None = None
        self.shmid = -1
        self.addr = 0
        huge = huge_flags(page_size, 0) if self.huge else 0
        try:
            if kind == "shmem-anon":
                # MAP_SHARED|MAP_ANONYMOUS: "/dev/zero (deleted)" (or "/anon_hugepage"),
                # opened by tasks through our map_files entry (§3.1), the same inode.
                flags = pymmap.MAP_SHARED | (MAP_HUGETLB | huge if self.huge else 0)
                self._map(pymmap.mmap(-1, self.length, flags))
                self.task_path = f"/proc/{os.getpid()}/map_files/{self.addr:x}-" \
                                 f"{self.addr + self.length:x}"
            elif kind == "memfd":
                flags = (MFD_ALLOW_SEALING if seals else 0) | (MFD_HUGETLB | huge)
                self.fd = os.memfd_create(name, flags if self.huge else flags & ~MFD_HUGETLB)
                os.ftruncate(self.fd, size)
                if self.huge or (size and size % PAGE_SIZE == 0):  # for copy_self
                    self._map(pymmap.mmap(self.fd, self.length, pymmap.MAP_SHARED))
                self.task_path = f"/proc/{os.getpid()}/fd/{self.fd}"
            elif kind == "sysv":
                self.shmid = sysv_create(ino, size, name, SHM_HUGETLB | huge if self.huge else 0)
                self.addr = _shmat(self.shmid)
                self.task_path = ""
            else:
                raise MmError(errno.ENOTSUP, f"{what}: not restored on Linux yet")
        except OSError as e:
            self.discard()
            if not self.huge or e.errno not in (errno.ENOMEM, errno.ENOSPC):
                raise
            raise MmError(e.errno, f"{what}: {self.length >> 20} MiB in "
                          f"{page_size >> 10} KiB huge pages: {e.strerror} "
                          f"({huge_pages_free(page_size)} free; vm.nr_hugepages)") from None

    def _map(self, m: pymmap.mmap) -> None:
        self.map = m
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(m))

    def write(self, offset: int, data: bytes) -> None:
        """The dumped pages at offset: UFFDIO_COPY into our mapping of a shmem object (no
        zeroing first); else copied into our mapping for hugetlb and SysV (whose files take
        no write(2)), or pwrite to the memfd or to the shmem inode (opened through our
        map_files entry)."""
        if self.addr and not self.huge:
            n = min(len(data), self.length - offset)
            if rst_write.copy_self(self.addr, self.length, offset, memoryview(data)[:n]):
                return
        if self.huge or self.kind == "sysv":
            n = min(len(data), self.length - offset)
            rst_write.write_self(self.addr + offset, memoryview(data)[:n])
            return
        if self.fd < 0:
            self.fd = os.open(self.task_path, os.O_RDWR | os.O_CLOEXEC)
        size = self.size if self.kind == "memfd" else self.length
        n = min(len(data), max(size - offset, 0))  # the last page's tail is past EOF
        rst_write.write_fd(self.fd, offset, memoryview(data)[:n])

    def release(self) -> None:
        if self.map is not None:  # first: F_SEAL_WRITE is refused while we map it
            self.map.close()
            self.map = None
        if self.fd >= 0:
            if self.seals and self.kind == "memfd":
                import fcntl

                fcntl.fcntl(self.fd, F_ADD_SEALS, self.seals)
            os.close(self.fd)
            self.fd = -1
        if self.shmid >= 0 and self.addr:
            _libc.shmdt(ctypes.c_void_p(self.addr))
        self.addr = 0

    def discard(self) -> None:
        """A failed restore's: released, and a SysV segment removed (IPC_RMID), which would
        outlive every process (the others go with their last fd or mapping)."""
        self.release()
        if self.shmid >= 0:
            _libc.shmctl(self.shmid, 0, None)  # IPC_RMID
            self.shmid = -1


def check_huge_size(page_size: int, what: str) -> None:
    """The huge page size must be one this kernel has (/sys/kernel/mm/hugepages)."""
    if not os.path.isdir(f"{HUGEPAGES}/hugepages-{page_size >> 10}kB"):
        raise MmError(errno.ENOTSUP, f"{what}: this kernel has no {page_size >> 10} KiB "
                      f"huge pages (none in {HUGEPAGES})")


def huge_pages_free(page_size: int) -> int:
    """free_hugepages of that size (the pool nr_hugepages fills); -1 if unreadable."""
    try:
        with open(f"{HUGEPAGES}/hugepages-{page_size >> 10}kB/free_hugepages") as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
SHM_NEXT_ID = "/proc/sys/kernel/shm_next_id"


def sysv_create(want: int, size: int, name: str, flags: int = 0) -> int:
    """shmget with the dumped key (from the maps name /SYSVkey) and, through
    kernel/shm_next_id (ipc_idr_alloc takes it as the next id, then resets it to -1), the
    dumped id (the maps inode): tasks attach it by id."""
    ipc_key = int(name.removeprefix("/SYSV"), 16) if name.startswith("/SYSV") else 0
    try:
        with open(SHM_NEXT_ID, "w") as f:
            f.write(str(want))
    except OSError as e:
        raise MmError(e.errno, f"SysV segment {want}: {SHM_NEXT_ID}: {e.strerror}") from None
    shmid = _libc.shmget(ipc_key, size, IPC_CREAT | IPC_EXCL | flags | 0o600)
    err = ctypes.get_errno()
    if shmid < 0:
        # The id was not taken: spend it on a throwaway segment, so that it is not left
        # for whoever creates one next (the sysctl refuses -1).
        spare = _libc.shmget(0, PAGE_SIZE, IPC_CREAT | 0o600)
        if spare >= 0:
            _libc.shmctl(spare, 0, None)  # IPC_RMID
        raise MmError(err, f"SysV segment {want} (key {ipc_key:#x}): shmget: "
                      f"{os.strerror(err)}")
    if shmid != want:
        _libc.shmctl(shmid, 0, None)
        raise MmError(errno.EEXIST, f"SysV segment {want}: got id {shmid} (taken?)")
    return shmid


def _shmat(shmid: int) -> int:
    addr = _libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise MmError(err, f"SysV segment {shmid}: shmat: {os.strerror(err)}")
    return addr

