"""Operation programs that run both on real helper processes and on the model.

A program is a list of Op, one per line in text form:

    spawn A                    a new helper process (at most two: A and B, joined by a socket)
    fork A C                   A forks C (C inherits A's mappings and fds)
    mmap A r0 8 anon           private anonymous, 8 pages, at region r0's fixed address
    mmap A r1 8 shared         MAP_SHARED|MAP_ANONYMOUS
    memfd A m 16               memfd_create + ftruncate to 16 pages
    mmap A r2 8 memfd m 6      MAP_SHARED of memfd m from its page 6
    mmap A r3 8 sysv           a private SysV segment (shmget, shmat, IPC_RMID at once)
    pwrite A m 0-3             write(2) whole pages through the fd
    punch A m 2 2              fallocate(PUNCH_HOLE|KEEP_SIZE) of pages 2-3
    send A m B                 SCM_RIGHTS: B gets its own fd on memfd m
    write A r0 0,2-3           the task writes those pages, in order
    read A r0 1                the task reads them (first byte), in order
    munmap A r0
    dontneed A r0 0 4          madvise(MADV_DONTNEED) of pages 0-3; likewise pageout
                               (MADV_PAGEOUT), remove (MADV_REMOVE), guard and unguard
                               (MADV_GUARD_INSTALL / MADV_GUARD_REMOVE), free (MADV_FREE),
                               cold (MADV_COLD), dontfork / dofork (whole regions only, so a
                               child maps a region whole or not at all), wipeonfork /
                               keeponfork, hugepage / nohugepage (MADV_HUGEPAGE)
    mmap A r0 512 anon         one PMD of private memory (regions are 2 MiB aligned)
    mmap A r0 512 hugetlb      MAP_PRIVATE|MAP_HUGETLB (hugetlb-shared: MAP_SHARED), whole
                               2 MiB pages; DONTNEED, mprotect and munmap in whole ones
    mprotect A r0 2 3 none     mprotect of pages 2-4 to PROT_NONE (or r, rw)
    mremap A r0 12             grow or shrink in place (flags 0) to 12 pages
    writeback A                wait until the kernel has no writeback in flight (nothing on
                               the model, whose swap cache stage lasts until reclaimed again)

Regions live at fixed addresses (REGION_BASE + index * REGION_STRIDE) in every process and
in the model, so fault-around windows (aligned to 16 pages inside a page table) are the same
on both sides. Checker.apply() tells whether an op is valid where it stands (no access to a
guard page, MADV_REMOVE only on shared mappings, ...): the generator and the shrinker use it.
After every op, each runner reports, per process and mapped region, pagemap flags
(P S F G W X), mincore, and for shared regions the object's SEEK_DATA/SEEK_HOLE extents
(not for SysV: shm_file_operations' llseek is noop_llseek).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

REGION_BASE = 0x2000_0000_0000
REGION_STRIDE = 1 << 22  # 4 MiB: 2 MiB aligned, and a 512-page region has a gap after it
MAX_PAGES = 16  # one fault-around window
HPAGE = 512  # a private anonymous region may also be one PMD (a THP under MADV_HUGEPAGE)
KINDS = ("anon", "shared", "memfd", "sysv")
HUGETLB = ("hugetlb", "hugetlb-shared")  # MAP_HUGETLB (the hugetlb fixture's pool), 512 pages
ADVICE = ("dontneed", "pageout", "remove", "guard", "unguard", "free", "cold", "dontfork",
          "dofork", "wipeonfork", "keeponfork", "hugepage", "nohugepage")
PROTS = ("none", "r", "rw")


class Invalid(Exception):
    """An op that cannot run where it stands (it would fault, or name what does not exist)."""


@dataclass(frozen=True)
class Op:
    verb: str
    proc: str
    args: tuple = ()

    def __str__(self) -> str:
        return " ".join([self.verb, self.proc, *map(_fmt, self.args)])


def _fmt(a: object) -> str:
    if isinstance(a, tuple):
        return pages_text(a)
    return str(a)


def pages_text(pages: tuple[int, ...]) -> str:
    out, i = [], 0
    while i < len(pages):
        j = i
        while j + 1 < len(pages) and pages[j + 1] == pages[j] + 1:
            j += 1
        out.append(str(pages[i]) if i == j else f"{pages[i]}-{pages[j]}")
        i = j + 1
    return ",".join(out)


def parse_pages(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return tuple(out)


def parse(text: str) -> list[Op]:
    """Program text (one op per line, # comments) -> ops."""
    ops = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        verb, proc, rest = words[0], words[1], words[2:]
        if verb in ("write", "read", "pwrite"):
            args: tuple = (rest[0], parse_pages(rest[1]))
        elif verb in ADVICE or verb == "punch":
            args = (rest[0], int(rest[1]), int(rest[2]))
        elif verb == "mprotect":
            args = (rest[0], int(rest[1]), int(rest[2]), rest[3])
        elif verb in ("memfd", "mremap"):
            args = (rest[0], int(rest[1]))
        elif verb == "mmap":
            args = (rest[0], int(rest[1]), rest[2], *([rest[3], int(rest[4])] if
                                                      rest[2] == "memfd" else []))
        else:
            args = tuple(rest)
        ops.append(Op(verb, proc, args))
    return ops


def text(ops: list[Op]) -> str:
    return "\n".join(map(str, ops))


def region_addr(region: str) -> int:
    return REGION_BASE + int(region[1:]) * REGION_STRIDE


@dataclass(frozen=True)
class Region:
    kind: str  # anon / shared / memfd / sysv
    npages: int
    memfd: str | None = None
    offset: int = 0  # object page of the region's first page
    objpages: int = 0  # the object's size in pages (a page past it is SIGBUS)

    @property
    def shared(self) -> bool:
        return self.kind not in ("anon", "hugetlb")

    @property
    def hugetlb(self) -> bool:
        return self.kind in HUGETLB

    @property
    def seekable(self) -> bool:
        """SEEK_DATA/SEEK_HOLE answer on its map_files fd (shm_file_operations: noop_llseek)."""
        return self.shared and self.kind != "sysv"


@dataclass
class Checker:
    """What exists at each point of a program, to tell valid ops from invalid ones."""

    roots: dict[str, str] = field(default_factory=dict)  # process -> the spawn it descends from
    regions: dict[str, dict[str, Region]] = field(default_factory=dict)
    guards: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    fds: dict[str, set[str]] = field(default_factory=dict)  # process -> memfds it holds
    sizes: dict[str, int] = field(default_factory=dict)  # memfd -> pages
    forks: dict[str, int] = field(default_factory=dict)  # spawn -> forks in its tree
    prots: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # per page
    dontfork: set[tuple[str, str]] = field(default_factory=set)
    wipe: dict[tuple[str, str], set[int]] = field(default_factory=dict)  # WIPEONFORK pages

    def readable(self, p: str, r: str, pages) -> bool:
        """Every page mapped, backed (not past the object's end), not PROT_NONE."""
        reg = self.regions[p][r]
        prot = self.prots[(p, r)]
        return all(i < reg.npages and prot[i] != "none" and (
            not reg.shared or reg.offset + i < reg.objpages) for i in pages)

    def apply(self, op: Op) -> None:
        p, a = op.proc, op.args
        if op.verb == "spawn":
            _need(p not in self.roots and len(self.forks) < 2, op)
            self.roots[p], self.forks[p] = p, 0
            self.regions[p], self.fds[p] = {}, set()
            return
        _need(p in self.roots, op)
        if op.verb == "fork":
            (c,) = a
            _need(c not in self.roots, op)
            self.roots[c] = self.roots[p]
            self.forks[self.roots[p]] += 1
            self.regions[c] = {r: reg for r, reg in self.regions[p].items()
                               if (p, r) not in self.dontfork}
            self.fds[c] = set(self.fds[p])
            for r in self.regions[c]:
                self.prots[(c, r)] = list(self.prots[(p, r)])
                wipe = self.wipe.get((p, r), set())
                if wipe:
                    self.wipe[(c, r)] = set(wipe)
                g = self.guards.get((p, r), set()) - wipe  # a wiped page has no marker
                if g:
                    self.guards[(c, r)] = g
        elif op.verb == "memfd":
            name, n = a
            _need(name not in self.sizes and 0 < n <= 64, op)
            self.sizes[name] = n
            self.fds[p].add(name)
        elif op.verb in ("pwrite", "punch"):
            name = a[0]
            _need(name in self.fds[p], op)
            last = max(a[1]) if op.verb == "pwrite" else a[1] + a[2] - 1
            _need(last < self.sizes[name] and (op.verb == "pwrite" or a[2] > 0), op)
        elif op.verb == "send":
            name, q = a
            _need(name in self.fds[p] and q in self.roots and name not in self.fds[q]
                  and self.roots[q] != self.roots[p], op)
            self.fds[q].add(name)
        elif op.verb == "mmap":
            r, n, kind = a[:3]
            _need(r not in self.regions[p] and (kind in KINDS and (
                0 < n <= MAX_PAGES or kind == "anon" and n == HPAGE)
                or kind in HUGETLB and n % HPAGE == 0 and 0 < n <= 2 * HPAGE), op)
            reg = Region(kind, n, *(a[3:] if kind == "memfd" else ()))
            if kind == "memfd":
                _need(reg.memfd in self.fds[p] and reg.offset + n <= self.sizes[reg.memfd], op)
            reg = Region(reg.kind, n, reg.memfd, reg.offset,
                         self.sizes[reg.memfd] if kind == "memfd" else n)
            self.regions[p][r] = reg
            self.prots[(p, r)] = ["rw"] * n
        elif op.verb == "munmap":
            _need(a[0] in self.regions[p], op)
            del self.regions[p][a[0]]
            for d in (self.guards, self.prots, self.wipe):
                d.pop((p, a[0]), None)
            self.dontfork.discard((p, a[0]))
        elif op.verb == "mremap":
            r, n = a
            reg = self.regions[p].get(r)
            _need(reg is not None and 0 < n <= MAX_PAGES and n != reg.npages and not reg.hugetlb,
                  op)
            prot = self.prots[(p, r)]
            # Growing needs the region to be one VMA (vma_to_resize, else EFAULT), which the
            # new pages join: read-write all through, no WIPEONFORK part.
            _need(n < reg.npages or set(prot) == {"rw"} and not self.wipe.get((p, r)), op)
            self.regions[p][r] = Region(reg.kind, n, reg.memfd, reg.offset, reg.objpages)
            self.prots[(p, r)] = (prot + ["rw"] * n)[:n]
            for d in (self.guards, self.wipe):
                if (p, r) in d:
                    d[(p, r)] = {i for i in d[(p, r)] if i < n}
        elif op.verb == "mprotect":
            r, first, n, prot = a
            reg = self.regions[p].get(r)
            _need(reg is not None and n > 0 and first + n <= reg.npages and prot in PROTS, op)
            _need(not reg.hugetlb or first % HPAGE == 0 and n % HPAGE == 0, op)
            self.prots[(p, r)][first : first + n] = [prot] * n
        elif op.verb == "writeback":
            pass
        elif op.verb in ("write", "read"):
            r, pages = a
            reg = self.regions[p].get(r)
            _need(reg is not None and pages and max(pages) < reg.npages, op)
            _need(not set(pages) & self.guards.get((p, r), set()), op)
            _need(self.readable(p, r, pages), op)
            _need(op.verb == "read" or all(self.prots[(p, r)][i] == "rw" for i in pages), op)
        elif op.verb in ADVICE:
            r, first, n = a
            reg = self.regions[p].get(r)
            _need(reg is not None and n > 0 and first + n <= reg.npages, op)
            _need(op.verb != "remove" or reg.shared, op)
            _need(op.verb not in ("free", "wipeonfork") or reg.kind == "anon", op)
            # hugetlb: no LRU advice, no guards, DONTNEED from a huge page boundary
            _need(not reg.hugetlb or op.verb not in ("pageout", "cold", "guard", "unguard"), op)
            _need(not reg.hugetlb or op.verb != "dontneed" or first % HPAGE == 0, op)
            span = set(range(first, first + n))
            if op.verb in ("dontfork", "dofork"):
                _need(first == 0 and n == reg.npages, op)
                (self.dontfork.add if op.verb == "dontfork" else self.dontfork.discard)((p, r))
            elif op.verb in ("wipeonfork", "keeponfork"):
                w = self.wipe.setdefault((p, r), set())
                if op.verb == "wipeonfork":
                    w |= span
                else:
                    w -= span
            g = self.guards.setdefault((p, r), set())
            if op.verb == "guard":
                g |= span
            elif op.verb == "unguard":
                g -= span
        else:
            raise Invalid(f"unknown op {op}")

    def valid(self, ops: list[Op]) -> bool:
        try:
            for op in ops:
                self.apply(op)
        except Invalid:
            return False
        return True


def _need(cond: object, op: Op) -> None:
    if not cond:
        raise Invalid(str(op))


def check(ops: list[Op]) -> Checker:
    c = Checker()
    for op in ops:
        c.apply(op)
    return c


def uses_swap(ops: list[Op]) -> bool:
    return any(op.verb == "pageout" for op in ops)


# -- random programs ----------------------------------------------------------------------------

def random_program(seed: int, length: int = 14, pageout: bool = True,
                   repageout: bool = True, thp: bool = False) -> list[Op]:
    """A valid program of `length` ops after the two spawns, drawn from everything above;
    deterministic in seed. repageout=False steers clear of test_differential.REPAGEOUT's
    timing: a region is never paged out again once it was read after a page-out, because
    whether the kernel then frees the clean swap-cache folio at once or keeps it mapped
    depends on whether the first writeback has ended (the model takes it as ended).
    thp: some private regions are one PMD under MADV_HUGEPAGE (needs the thp fixture)."""
    rng = random.Random(seed)
    ops = [Op("spawn", "A"), Op("spawn", "B")]
    c = Checker()
    for op in ops:
        c.apply(op)
    procs = ["A", "B"]
    nreg = nmem = 0
    tries = 0
    paged: set[str] = set()  # regions paged out (by any process)
    reread: set[str] = set()  # ... and read since
    while len(ops) < length + 2 and tries < 2000:
        tries += 1
        p = rng.choice(procs)
        regs = list(c.regions[p])
        verb = rng.choices(
            ["mmap", "memfd", "fork", "write", "read", "dontneed", "pageout", "remove",
             "guard", "unguard", "munmap", "pwrite", "punch", "send", "mprotect", "mremap",
             "free", "cold", "dontfork", "dofork", "wipeonfork", "keeponfork"],
            [4, 1, 2, 6, 5, 2, 3 if pageout else 0, 2, 1, 1, 1, 2, 1, 1, 2, 1, 2, 1, 1, 1, 1,
             1])[0]
        if verb == "mmap":
            kind = rng.choice(KINDS)
            n = rng.randint(2, 8)
            if kind == "memfd":
                mine = sorted(c.fds[p])
                if not mine:
                    continue
                m = rng.choice(mine)
                off = rng.randint(0, max(0, c.sizes[m] - n))
                op = Op("mmap", p, (f"r{nreg}", min(n, c.sizes[m] - off), kind, m, off))
            else:
                if thp and kind == "anon" and rng.random() < 0.5:
                    n = HPAGE
                op = Op("mmap", p, (f"r{nreg}", n, kind))
        elif verb == "memfd":
            op = Op("memfd", p, (f"m{nmem}", rng.randint(4, 12)))
        elif verb == "fork":
            op = Op("fork", p, (f"{p}{len(procs)}",))
        elif verb in ("write", "read"):
            if not regs:
                continue
            r = rng.choice(regs)
            n = c.regions[p][r].npages
            k = rng.randint(1, min(3, n))
            op = Op(verb, p, (r, tuple(sorted(rng.sample(range(n), k)))))
        elif verb in ADVICE or verb in ("munmap", "mprotect", "mremap"):
            if not regs:
                continue
            r = rng.choice(regs)
            if verb == "pageout" and not repageout and r in reread:
                continue
            n = c.regions[p][r].npages
            first = rng.randrange(n)
            count = rng.randint(1, n - first)
            if verb in ("dontfork", "dofork"):
                first, count = 0, n
            if verb == "munmap":
                op = Op(verb, p, (r,))
            elif verb == "mremap":
                op = Op(verb, p, (r, rng.randint(1, MAX_PAGES)))
            elif verb == "mprotect":
                op = Op(verb, p, (r, first, count, rng.choice(PROTS)))
            else:
                op = Op(verb, p, (r, first, count))
        elif verb in ("pwrite", "punch"):
            mine = sorted(c.fds[p])
            if not mine:
                continue
            m = rng.choice(mine)
            size = c.sizes[m]
            first = rng.randrange(size)
            op = Op(verb, p, (m, tuple(sorted(rng.sample(range(size), min(3, size)))))) \
                if verb == "pwrite" else Op(verb, p, (m, first, rng.randint(1, size - first)))
        else:  # send
            mine = sorted(c.fds[p])
            others = [q for q in procs if c.roots[q] != c.roots[p]]
            if not mine or not others:
                continue
            op = Op("send", p, (rng.choice(mine), rng.choice(others)))
        try:
            c.apply(op)
        except Invalid:
            continue
        ops.append(op)
        if op.verb == "mmap" and op.args[1] == HPAGE:  # a THP with data in every page
            ops.append(Op("hugepage", p, (op.args[0], 0, HPAGE)))
            ops.append(Op("write", p, (op.args[0], (0,))))
            ops.append(Op("write", p, (op.args[0], tuple(range(HPAGE)))))
            for extra in ops[-3:]:
                c.apply(extra)
        if op.verb == "pageout":
            paged.add(op.args[0])
        elif op.verb == "read" and op.args[0] in paged:
            reread.add(op.args[0])
        if op.verb == "mmap":
            nreg += 1
        elif op.verb == "memfd":
            nmem += 1
        elif op.verb == "fork":
            procs.append(op.args[0])
    return ops


def shrink(ops: list[Op], fails) -> list[Op]:
    """Greedy one-op-at-a-time deletion while the program stays valid and still fails."""
    changed = True
    while changed:
        changed = False
        for i in range(len(ops) - 1, -1, -1):
            cand = ops[:i] + ops[i + 1 :]
            if Checker().valid(cand) and fails(cand):
                ops, changed = cand, True
    return ops
