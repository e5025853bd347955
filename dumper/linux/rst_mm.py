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

from dumper.host import parse_maps
from dumper.images import flags as F
from dumper.images.records import Vma
from dumper.kabi import MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_WRITE
from dumper.linux import procfs
from dumper.linux.rst_inject import AT_FDCWD, RestoreInjector
from dumper.linux.taskstate import rseq_config

SCRATCH_SIZE = 2 * PAGE_SIZE
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
RSEQ_FLAG_UNREGISTER = 1
MAP_FIXED, MAP_NORESERVE = 0x10, 0x4000
KEEP_FLAGS = MAP_GROWSDOWN | MAP_NORESERVE
SHM_RDONLY, SHM_REMAP = 0o10000, 0o40000
MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 4, 102, 103
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]")
MFD_ALLOW_SEALING, F_ADD_SEALS = 2, 1033


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


def check_file(path: str, files: dict[str, tuple[int | None, int]], where: str) -> None:
    """The file a VMA maps must be the one dumped: there, and of the size recorded."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise MmError(e.errno, f"{where} maps {path}: {e.strerror}") from None
    size = files.get(path, (None, 0))[0]
    if size is not None and st.st_size != size:
        raise MmError(errno.ESTALE, f"{where} maps {path}: changed since the dump "
                      f"({st.st_size} bytes, {size} when dumped)")


class LinuxObject:
    """A shared object the restorer re-created and holds until every task mapped it."""

    def __init__(self, kind: str, size: int, name: str, ino: int, seals: int,
                 page_size: int) -> None:
        if page_size != PAGE_SIZE:
            raise MmError(errno.ENOTSUP, f"{kind} {name or ino}: hugetlb objects "
                          f"({page_size >> 10} KiB pages) are not restored on Linux yet")
        self.kind, self.size, self.seals = kind, size, seals
        self.length = -(-size // PAGE_SIZE) * PAGE_SIZE or PAGE_SIZE
        self.fd = -1
        self.map: pymmap.mmap | None = None
        self.shmid = -1
        self.addr = 0
        if kind == "shmem-anon":
            # MAP_SHARED|MAP_ANONYMOUS: "/dev/zero (deleted)", opened by tasks through
            # our map_files entry (§3.1), the same inode.
            self.map = pymmap.mmap(-1, self.length, pymmap.MAP_SHARED)
            self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
            self.task_path = f"/proc/{os.getpid()}/map_files/{self.addr:x}-" \
                             f"{self.addr + self.length:x}"
        elif kind == "memfd":
            self.fd = os.memfd_create(name, MFD_ALLOW_SEALING if seals else 0)
            os.ftruncate(self.fd, size)
            self.task_path = f"/proc/{os.getpid()}/fd/{self.fd}"
        elif kind == "sysv":
            self.shmid = sysv_create(ino, size, name)
            self.addr = _shmat(self.shmid)
            self.task_path = ""
        else:
            raise MmError(errno.ENOTSUP, f"{kind} object {name}: not restored on Linux yet")

    def write(self, offset: int, data: bytes) -> None:
        if self.fd >= 0:
            n = min(len(data), max(self.size - offset, 0))  # the last page's tail is past EOF
            os.pwrite(self.fd, data[:n], offset)
        else:
            n = min(len(data), self.length - offset)
            ctypes.memmove(self.addr + offset, data, n)

    def release(self) -> None:
        if self.fd >= 0:
            if self.seals:
                import fcntl

                fcntl.fcntl(self.fd, F_ADD_SEALS, self.seals)
            os.close(self.fd)
        if self.map is not None:
            del self.addr
            self.map.close()
        if self.shmid >= 0:
            _libc.shmdt(ctypes.c_void_p(self.addr))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
SHM_NEXT_ID = "/proc/sys/kernel/shm_next_id"


def sysv_create(want: int, size: int, name: str) -> int:
    """shmget with the dumped key (from the maps name /SYSVkey) and, through
    kernel/shm_next_id (ipc_idr_alloc takes it as the next id, then resets it to -1), the
    dumped id (the maps inode): tasks attach it by id."""
    ipc_key = int(name.removeprefix("/SYSV"), 16) if name.startswith("/SYSV") else 0
    try:
        with open(SHM_NEXT_ID, "w") as f:
            f.write(str(want))
    except OSError as e:
        raise MmError(e.errno, f"SysV segment {want}: {SHM_NEXT_ID}: {e.strerror}") from None
    shmid = _libc.shmget(ipc_key, size, IPC_CREAT | IPC_EXCL | 0o600)
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

