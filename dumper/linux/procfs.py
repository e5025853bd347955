"""The tree, the maps and the smaps of live tasks, from /proc (fs/proc/array.c, task_mmu.c)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dumper.host import TaskInfo
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


@dataclass(frozen=True)
class Smaps:
    """One VMA of /proc/PID/smaps (show_smap): its range and the kB counters."""

    start: int
    end: int
    fields: dict[str, int] = field(default_factory=dict)

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
        elif cur is not None and head.endswith(":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():  # "Rss: 24 kB"; skips VmFlags
                cur.fields[head[:-1]] = int(parts[1])
    return out


def read_smaps(pid: int) -> list[Smaps]:
    """Every VMA of /proc/PID/smaps, with Rss, Swap, SwapPss, ... in kB."""
    return parse_smaps(read_text(pid, "smaps"))


def smaps_of(pid: int, addr: int) -> Smaps:
    """The smaps entry of the VMA containing addr."""
    for s in read_smaps(pid):
        if s.start <= addr < s.end:
            return s
    raise ProcError(pid, proc_path(pid, "smaps"), 0, f"no VMA contains {addr:#x}")
