"""Build the small golden image sets under images/ (fixtures and README examples).

    python -m dumper.images.golden images/

The sets are written from hand-made memory, not a dump, and are byte-for-byte reproducible:

- basic: a parent and a forked child. Private anonymous memory, a stack; a memfd, a
  MAP_SHARED|MAP_ANONYMOUS region and a SysV segment shared by both; the child's first
  page is COW-shared with its parent and stored once; ground truth for both. Raw pages.
- zstd: the same memory, pages in zstd frames of two pages.
- lseek: the same tree dumped as an lseek strategy would: the memfd's zero-filled data page
  is stored too, and the child's private page was written after the first dump.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dumper.images.flags import VMA_AREA_VSYSCALL
from dumper.images.records import CowRun, SharedObject, Vma
from dumper.images.writer import ImageSetWriter
from dumper.kabi import MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE
from dumper.model.content import ContentStore
from dumper.model.host import ModelHost, cid_digest

RW = 3
PARENT, CHILD = 4242, 4243
HEAP = 0x55550000
STACK = 0x7FFFFFFDE000
VSYSCALL = 0xFFFFFFFFFF600000
MEMFD_AT, ANON_AT, SYSV_AT = 0x7F0000000000, 0x7F0000100000, 0x7F0000200000
MEMFD, ANON, SYSV = 0x2001, 0x2002, 32769  # inode numbers; the SysV segment's IPC id


def page(text: str) -> bytes:
    """A page of readable bytes: text repeated, so a hexdump shows whose page it is."""
    line = (text + " " * 16)[:16].encode()
    return line * (PAGE_SIZE // 16)


ZERO = bytes(PAGE_SIZE)


def _vmas() -> list[Vma]:
    return [
        Vma(HEAP, HEAP + 4 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS),
        Vma(MEMFD_AT, MEMFD_AT + 2 * PAGE_SIZE, RW, MAP_SHARED, obj=MEMFD),
        Vma(ANON_AT, ANON_AT + 2 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS, obj=ANON),
        Vma(SYSV_AT, SYSV_AT + PAGE_SIZE, RW, MAP_SHARED, obj=SYSV),
        Vma(STACK, STACK + 2 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN),
        # Every x86-64 task has it, and crit x rss needs a VMA after the last dumped page.
        Vma(
            VSYSCALL, VSYSCALL + PAGE_SIZE, 5, MAP_PRIVATE | MAP_ANONYMOUS, status=VMA_AREA_VSYSCALL
        ),
    ]


def _memory(variant: str) -> dict[int, dict[int, bytes]]:
    """Every mapped page's bytes, per task: what the truth images describe."""
    shared = {
        MEMFD_AT: page("memfd page 0"),
        MEMFD_AT + PAGE_SIZE: ZERO,
        ANON_AT: page("anon shared 0"),
        ANON_AT + PAGE_SIZE: page("anon shared 1"),
        SYSV_AT: page("sysv segment"),
    }
    parent = {HEAP + i * PAGE_SIZE: page(f"parent heap {i}") for i in range(3)}
    parent[HEAP + 3 * PAGE_SIZE] = ZERO
    parent[STACK] = ZERO
    parent[STACK + PAGE_SIZE] = page("parent stack")
    child = dict(parent)
    child[HEAP + PAGE_SIZE] = page("child heap 1" if variant != "lseek" else "child heap 1'")
    child[STACK + PAGE_SIZE] = page("child stack")
    return {PARENT: {**parent, **shared}, CHILD: {**child, **shared}}


def _truth(mem: dict[int, bytes]) -> Iterator[tuple[int, np.ndarray]]:
    """The truth a model dump records (ModelHost.truth: digests of canonical content ids), so
    that `dumper verify` and `restore --verify`, which restore into the model, compare like
    with like."""
    store = ContentStore()
    for v in _vmas():
        if v.status & VMA_AREA_VSYSCALL:
            continue  # the kernel's page, not the task's memory
        data = b"".join(mem[a] for a in range(v.start, v.end, PAGE_SIZE))
        yield v.start, cid_digest(store.intern_pages(data))


def build(out: Path, variant: str) -> Path:
    mem = _memory(variant)
    w = ImageSetWriter(
        out / variant,
        force=True,
        compress="zstd" if variant == "zstd" else None,
        level=19,
        strategy="lseek" if variant == "lseek" else "pagemap",
        profile="linux-6.18",
        host_kind="model",
        frame_size=2 * PAGE_SIZE,
        arch="x86_64",
    )
    with w:
        memfd_runs = [(0, 2)] if variant == "lseek" else [(0, 1)]
        memfd_pages = [mem[PARENT][MEMFD_AT + r * PAGE_SIZE] for r in range(memfd_runs[0][1])]
        w.add_shared_object(
            SharedObject(MEMFD, "memfd", 2 * PAGE_SIZE, dev=0x1, ino=MEMFD, name="ring"),
            memfd_runs,
            memfd_pages,
        )
        w.add_shared_object(
            SharedObject(
                ANON, "shmem-anon", 2 * PAGE_SIZE, dev=0x1, ino=ANON, name="/dev/zero (deleted)"
            ),
            [(0, 2)],
            [mem[PARENT][ANON_AT], mem[PARENT][ANON_AT + PAGE_SIZE]],
        )
        w.add_shared_object(
            SharedObject(SYSV, "sysv", PAGE_SIZE, dev=0x1, ino=0, name="key 0x1234"),
            [(0, 1)],
            [mem[PARENT][SYSV_AT]],
        )
        w.add_task(
            PARENT,
            0,
            "server",
            _vmas(),
            exe="/usr/bin/server",
            mm={
                "mm_start_brk": HEAP,
                "mm_brk": HEAP + 4 * PAGE_SIZE,
                "mm_start_stack": STACK + 2 * PAGE_SIZE,
            },
        )
        w.add_task(CHILD, PARENT, "worker", _vmas(), pgid=PARENT, sid=PARENT, exe="/usr/bin/server")
        # The parent's non-zero private pages; the stack's first page was never touched.
        p_runs = [(HEAP, 3), (STACK + PAGE_SIZE, 1)]
        w.add_private_pages(
            PARENT,
            p_runs,
            [
                mem[PARENT][HEAP] + mem[PARENT][HEAP + PAGE_SIZE],  # chunks of any size
                mem[PARENT][HEAP + 2 * PAGE_SIZE],
                mem[PARENT][STACK + PAGE_SIZE],
            ],
        )
        # The child wrote heap page 1 and its stack; heap pages 0 and 2 are still the
        # parent's physical pages: stored once, as COW runs.
        w.add_private_pages(
            CHILD,
            [(HEAP + PAGE_SIZE, 1), (STACK + PAGE_SIZE, 1)],
            [mem[CHILD][HEAP + PAGE_SIZE], mem[CHILD][STACK + PAGE_SIZE]],
        )
        w.add_cow(
            CHILD,
            [
                CowRun(CHILD, HEAP, 1, PARENT, HEAP),
                CowRun(CHILD, HEAP + 2 * PAGE_SIZE, 1, PARENT, HEAP + 2 * PAGE_SIZE),
            ],
        )
        for pid in (PARENT, CHILD):
            w.add_truth(pid, _truth(mem[pid]), algo=ModelHost.truth_algo)
    return out / variant


VARIANTS = ("basic", "zstd", "lseek")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "images")
    for v in VARIANTS:
        print(build(out, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
