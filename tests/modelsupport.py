"""Helpers to read the model the way kernel.md §7 writes its observations."""

from __future__ import annotations

from dumper.kabi import PAGE_SIZE, PM_PRESENT, PM_SWAP, SEEK_DATA, pagemap_flag_string
from dumper.model import Model, ModelError
from dumper.model.observe import shmem_file_llseek

PAGE = PAGE_SIZE


def pm(m: Model, pid: int, addr: int, n: int = 8) -> str:
    """pagemap as P / S / - per page."""
    return "".join(
        "P" if w & PM_PRESENT else "S" if w & PM_SWAP else "-"
        for w in (int(x) for x in m.pagemap(pid, addr, n * PAGE))
    )


def flags(m: Model, pid: int, addr: int, n: int = 8) -> str:
    """pagemap flag letters per page (P S F G W X D), 0 for none."""
    return " ".join(pagemap_flag_string(int(w)) or "0" for w in m.pagemap(pid, addr, n * PAGE))


def mc(m: Model, pid: int, addr: int, n: int = 8) -> str:
    return "".join(str(b) for b in m.mincore(pid, addr, n * PAGE))


def ls(m: Model, pid: int, addr: int, n: int = 8) -> str:
    """D where page i of the object behind addr starts a SEEK_DATA answer at i, else '.'."""
    obj = m.object_at(pid, addr)
    vma = m.k.task(pid).find_vma(addr)
    first = vma.pgoff + vma.index(addr)
    out = []
    for i in range(first, first + n):
        try:
            out.append("D" if shmem_file_llseek(m.k, obj, i * PAGE, SEEK_DATA) == i * PAGE else ".")
        except ModelError:
            out.append(".")
    return "".join(out)


def frames(m: Model, pid: int, addr: int, n: int = 8) -> list[int]:
    return [int(w) & ((1 << 55) - 1) for w in m.pagemap(pid, addr, n * PAGE)]
