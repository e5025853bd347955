"""The tree, the maps and the smaps of live tasks, from /proc (fs/proc/array.c, task_mmu.c)."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

from dumper.host import MapEntry, TaskInfo, parse_maps_line
from dumper.linux.errors import ProcError


def proc_path(pid: int, *parts: str | int) -> str:
    return "/".join([f"/proc/{pid}", *map(str, parts)])


def read_text(pid: int, *parts: str | int) -> str:
    """Read a whole /proc file; every failure becomes a ProcError naming pid and file."""
    path = proc_path(pid, *parts)
    try:
        with open(path, "rb", buffering=0) as f:
            chunks = []
            while chunk := f.read(1 << 20):
                chunks.append(chunk)
    except OSError as e:
        raise ProcError.from_os(pid, path, e) from None
    return b"".join(chunks).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat a dumper needs (fs/proc/array.c do_task_stat)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks after boot: orders siblings by creation when pids wrap

    def task_info(self) -> TaskInfo:
        return TaskInfo(pid=self.pid, ppid=self.ppid, comm=self.comm, pgid=self.pgid,
                        sid=self.sid)


def parse_stat(text: str) -> Stat:
    # comm may contain spaces and ')' : it runs from the first '(' to the last ')'.
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2 :].split()
    return Stat(
        pid=int(text[:lpar]),
        comm=text[lpar + 1 : rpar],
        state=rest[0],
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        sid=int(rest[3]),
        starttime=int(rest[19]),
    )


def read_stat(pid: int, tid: int | None = None) -> Stat:
    """/proc/PID/stat, or /proc/PID/task/TID/stat for one thread."""
    if tid is None:
        return parse_stat(read_text(pid, "stat"))
    return parse_stat(read_text(pid, "task", tid, "stat"))


def threads(pid: int) -> list[int]:
    """The thread ids of a process, leader first."""
    path = proc_path(pid, "task")
    try:
        tids = sorted(int(t) for t in os.listdir(path))
    except OSError as e:
        raise ProcError.from_os(pid, path, e) from None
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids


def children(pid: int) -> list[int]:
    """Direct children of a process, in fork order.

    /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN, fs/proc/array.c children_seq_show)
    lists the children of each *thread* in the order of its ->children list, i.e. fork
    order; without it, scan every /proc/N/stat for ppid and order by start time."""
    out: list[int] = []
    for tid in threads(pid):
        try:
            text = read_text(pid, "task", tid, "children")
        except ProcError as e:
            if e.reason == "gone" and os.path.exists(proc_path(pid, "task", tid)):
                return _children_by_ppid(pid)  # the file itself is missing
            if e.reason == "gone" and tid != pid:
                continue  # that thread exited meanwhile
            raise
        out.extend(int(c) for c in text.split())
    return out


def _children_by_ppid(pid: int) -> list[int]:
    found: list[Stat] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = read_stat(int(name))
        except ProcError:
            continue  # exited while we looked
        if st.ppid == pid:
            found.append(st)
    found.sort(key=lambda s: (s.starttime, s.pid))
    return [s.pid for s in found]


def discover_tree(root: int) -> list[TaskInfo]:
    """The tree under root: root first, then each child's subtree in fork order (pre-order).

    Children that exit while we walk are dropped; the root being gone is an error."""
    out: list[TaskInfo] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            info = read_stat(pid).task_info()
            kids = children(pid)
        except ProcError as e:
            if e.reason == "gone" and pid != root:
                continue
            raise
        out.append(info)
        stack.extend(reversed(kids))
    return out


def read_maps(pid: int) -> str:
    """The text of /proc/PID/maps (show_map_vma)."""
    return read_text(pid, "maps")


# The x86_64 vsyscall page: fs/proc/task_mmu.c m_next appends get_gate_vma(mm), a VMA that
# is not in the mm (no pagemap, no page tables of the task; its address is above 2^63), and
# that every process gets back from the kernel, as CRIU's VMA_AREA_VSYSCALL never carries pages.
GATE_AREA = "[vsyscall]"


def task_maps(pid: int) -> str:
    """/proc/PID/maps without the gate area: the VMAs of the task's own mm."""
    text = read_maps(pid)
    if GATE_AREA not in text:
        return text
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.rstrip().endswith(GATE_AREA))


@dataclass(frozen=True)
class Smaps:
    """One VMA of /proc/PID/smaps (show_smap): its range and the kB counters."""

    start: int
    end: int
    fields: dict[str, int] = field(default_factory=dict)
    vmflags: frozenset[str] = frozenset()  # two-letter VM_* mnemonics (show_smap_vma_flags)

    @property
    def rss_kb(self) -> int:
        return self.fields.get("Rss", 0)

    @property
    def swap_kb(self) -> int:
        return self.fields.get("Swap", 0)

    @property
    def swap_pss_kb(self) -> int:
        return self.fields.get("SwapPss", 0)


def parse_smaps(text: str) -> list[Smaps]:
    out: list[Smaps] = []
    cur: Smaps | None = None
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            start, end = head.split("-")
            cur = Smaps(int(start, 16), int(end, 16), {})
            out.append(cur)
        elif cur is not None and head == "VmFlags:":
            cur = Smaps(cur.start, cur.end, cur.fields, frozenset(line.split()[1:]))
            out[-1] = cur
        elif cur is not None and head.endswith(":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():  # "Rss: 24 kB"
                cur.fields[head[:-1]] = int(parts[1])
    return out


def read_vmas(pid: int) -> list[tuple[MapEntry, Smaps, str]]:
    """Every VMA from one read of /proc/PID/smaps (its header lines are the maps lines):
    the maps entry, its smaps counters and flags, and its vma_kind."""
    text = read_text(pid, "smaps")
    entries = [parse_maps_line(line) for line in text.splitlines()
               if line and not line.split(None, 1)[0].endswith(":")]
    return [(e, sm, vma_kind(e, sm)) for e, sm in zip(entries, parse_smaps(text), strict=True)]


def read_smaps(pid: int) -> list[Smaps]:
    """Every VMA of /proc/PID/smaps, with Rss, Swap, SwapPss, ... in kB."""
    return parse_smaps(read_text(pid, "smaps"))


_SMAPS_START = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ ", re.M)
_SMAPS_VMFLAGS = re.compile(r"^VmFlags:(.*)$", re.M)


def read_vmflags(pid: int) -> dict[int, list[str]]:
    """VMA start -> its smaps VmFlags mnemonics, sorted (show_smap_vma_flags prints one
    VmFlags line per VMA, after its header): two scans of the text in C, not a parse of
    every counter line (30,000 VMAs: 0.75 million lines)."""
    path = proc_path(pid, "smaps")
    text = read_text(pid, "smaps")
    starts, flags = _SMAPS_START.findall(text), _SMAPS_VMFLAGS.findall(text)
    if len(starts) != len(flags):
        raise ProcError(pid, path, errno.EBADMSG,
                        f"{len(starts)} VMAs but {len(flags)} VmFlags lines")
    return {int(a, 16): sorted(f.split()) for a, f in zip(starts, flags, strict=True)}


def smaps_of(pid: int, addr: int) -> Smaps:
    """The smaps entry of the VMA containing addr."""
    for s in read_smaps(pid):
        if s.start <= addr < s.end:
            return s
    raise ProcError(pid, proc_path(pid, "smaps"), 0, f"no VMA contains {addr:#x}")


# What a dumper can do with a VMA, judged as CRIU's proc_parse.c does from the maps line,
# refined by smaps VmFlags when given ('ht' hugetlb, 'io' VM_IO, 'pf' VM_PFNMAP, 'mm'
# VM_MIXEDMAP: device memory no read can copy).
ANON, PRIVATE_FILE, SHMEM, SHARED_FILE, HUGETLB, DEVICE, SPECIAL = (
    "anon", "private-file", "shmem", "shared-file", "hugetlb", "device", "special")
_SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")


def vma_kind(entry: MapEntry, smaps: Smaps | None = None) -> str:
    """anon / private-file (data from pagemap + /proc/PID/mem), shmem (from map_files),
    shared-file (a regular file: referenced, not copied), hugetlb, device, special (vdso &
    co., recreated by the kernel) — the last three cannot be dumped."""
    flags = smaps.vmflags if smaps is not None else frozenset()
    path = entry.path
    if path in _SPECIAL:  # before the flags: [vvar] is VM_IO|VM_PFNMAP
        return SPECIAL
    if "ht" in flags or path.startswith(("/anon_hugepage", "/dev/hugepages/")):
        return HUGETLB
    if flags & {"io", "pf", "mm"} or _device_path(path):
        return DEVICE
    if entry.shared:
        return SHMEM if entry.shmem_kind is not None else SHARED_FILE
    if not path or path.startswith("[") or path == "/dev/zero (deleted)":
        return ANON  # [heap], [stack], [anon:name], and MAP_PRIVATE of /dev/zero
    return PRIVATE_FILE


def _device_path(path: str) -> bool:
    # Without smaps, a guess from the name: /dev/shm is tmpfs, /dev/zero is anonymous memory.
    return path.startswith("/dev/") and not path.startswith(("/dev/shm/", "/dev/zero"))
