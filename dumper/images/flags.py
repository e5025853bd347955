"""Names of the bit fields and codes in images (criu.md §3.4-3.5), for JSON and text output.

`names(value, table)` renders `"A | B | 0x..."` as crit --pretty does (unknown bits in hex);
`parse(text, table)` reads that back, and also accepts plain numbers.
"""

from __future__ import annotations

from dumper import kabi

# criu/include/image.h
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_SOCKET = 1 << 11
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14
VMA_AREA_SHSTK = 1 << 15
VMA_AREA_GUARD = 1 << 16
VMA_AREA_UPROBES = 1 << 17
VMA_EXT_PLUGIN = 1 << 27
VMA_UNSUPP = 1 << 31

VMA_STATUS = {
    VMA_AREA_REGULAR: "VMA_AREA_REGULAR",
    VMA_AREA_STACK: "VMA_AREA_STACK",
    VMA_AREA_VSYSCALL: "VMA_AREA_VSYSCALL",
    VMA_AREA_VDSO: "VMA_AREA_VDSO",
    VMA_AREA_HEAP: "VMA_AREA_HEAP",
    VMA_FILE_PRIVATE: "VMA_FILE_PRIVATE",
    VMA_FILE_SHARED: "VMA_FILE_SHARED",
    VMA_ANON_SHARED: "VMA_ANON_SHARED",
    VMA_ANON_PRIVATE: "VMA_ANON_PRIVATE",
    VMA_AREA_SYSVIPC: "VMA_AREA_SYSVIPC",
    VMA_AREA_SOCKET: "VMA_AREA_SOCKET",
    VMA_AREA_VVAR: "VMA_AREA_VVAR",
    VMA_AREA_AIORING: "VMA_AREA_AIORING",
    VMA_AREA_MEMFD: "VMA_AREA_MEMFD",
    VMA_AREA_SHSTK: "VMA_AREA_SHSTK",
    VMA_AREA_GUARD: "VMA_AREA_GUARD",
    VMA_AREA_UPROBES: "VMA_AREA_UPROBES",
    VMA_EXT_PLUGIN: "VMA_EXT_PLUGIN",
    1 << 28: "VMA_CLOSE",
    1 << 29: "VMA_NO_PROT_WRITE",
    1 << 30: "VMA_PREMMAPED",
    VMA_UNSUPP: "VMA_UNSUPP",
}

PROT = {kabi.PROT_READ: "PROT_READ", kabi.PROT_WRITE: "PROT_WRITE", kabi.PROT_EXEC: "PROT_EXEC"}

MMAP_FLAGS = {
    kabi.MAP_SHARED: "MAP_SHARED",
    kabi.MAP_PRIVATE: "MAP_PRIVATE",
    0x8: "MAP_DROPPABLE",
    kabi.MAP_ANONYMOUS: "MAP_ANON",  # crit's spelling, so its encode takes our JSON
    kabi.MAP_GROWSDOWN: "MAP_GROWSDOWN",
    kabi.MAP_LOCKED: "MAP_LOCKED",
    kabi.MAP_NORESERVE: "MAP_NORESERVE",
    kabi.MAP_HUGETLB: "MAP_HUGETLB",
}

# criu/include/pagemap.h
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2
PAGEMAP_FLAGS = {PE_PARENT: "PE_PARENT", PE_LAZY: "PE_LAZY", PE_PRESENT: "PE_PRESENT"}

SEALS = {
    1: "F_SEAL_SEAL",
    2: "F_SEAL_SHRINK",
    4: "F_SEAL_GROW",
    8: "F_SEAL_WRITE",
    0x10: "F_SEAL_FUTURE_WRITE",
}

# criu/include/pid.h, compel task-state.h; named as they are, not as crit 3.17 labels them.
TASK_ALIVE = 1
TASK_DEAD = 2
TASK_STOPPED = 3
TASK_ZOMBIE = 6
TASK_STATES = {
    TASK_ALIVE: "Alive",
    TASK_DEAD: "Dead",
    TASK_STOPPED: "Stopped",
    TASK_ZOMBIE: "Zombie",
}


_ALIASES = {"MAP_ANONYMOUS": kabi.MAP_ANONYMOUS}


def names(value: int, table: dict[int, str]) -> str:
    """`A | B`, unknown bits as one trailing hex number, `0` for none."""
    parts = [name for bit, name in table.items() if value & bit]
    rest = value & ~sum(bit for bit in table if value & bit)
    if rest:
        parts.append(f"{rest:#x}")
    return " | ".join(parts) or "0"


def parse(text: str | int, table: dict[int, str]) -> int:
    """The inverse of names(); ValueError on an unknown name."""
    if isinstance(text, int):
        return text
    by_name = {n: b for b, n in table.items()} | _ALIASES
    value = 0
    for part in (p.strip() for p in text.split("|")):
        if part in by_name:
            value |= by_name[part]
        else:
            try:
                value |= int(part, 0)
            except ValueError:
                raise ValueError(f"unknown flag {part!r}") from None
    return value


def code_name(value: int, table: dict[int, str]) -> str:
    """A single code's name, or its number when unknown."""
    return table.get(value, str(value))


def parse_code(text: str | int, table: dict[int, str]) -> int:
    if isinstance(text, int):
        return text
    for v, n in table.items():
        if n == text:
            return v
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"unknown code {text!r}") from None


def perms(prot: int, shared: bool | None = None) -> str:
    """`rw-`, or `rw-s`/`rw-p` when sharing is given (as /proc/PID/maps)."""
    s = kabi.prot_string(prot, bool(shared))
    return s if shared is not None else s[:3]
