"""Random operation programs over random trees, written as scenario files.

A program is the text of a scenario (so any program can be saved, read and replayed like the
library's), built from the operations userspace and the system can do: fork, exit, mmap of
private / shared anonymous memory, of memfds and of SysV segments, munmap, mremap (moves,
grows, shrinks), mprotect, writes and reads (with fault-around), MADV_DONTNEED / PAGEOUT /
REMOVE / FREE / COLD / DONTFORK / DOFORK / WIPEONFORK / HUGEPAGE (THP), large shmem
folios (a quarter of the programs), hugetlb (when asked), guard regions,
PMD-split zaps, system reclaim (with or without the swap-cache stage), swap-cache drops,
NUMA migration (pending or finished), memfd writes and hole punches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_PAGES = 12
THP_PAGES = 1024
HUGEPAGES = 8


@dataclass
class _State:
    tasks: list[str] = field(default_factory=lambda: ["A"])
    alive: set[str] = field(default_factory=lambda: {"A"})
    regions: dict[str, dict[str, int]] = field(default_factory=lambda: {"A": {}})
    fds: dict[str, dict[str, int]] = field(default_factory=lambda: {"A": {}})
    shared: set[str] = field(default_factory=set)
    n_regions: int = 0
    n_fds: int = 0


def _pages(rng: random.Random, n: int) -> str:
    a = rng.randrange(n)
    b = rng.randrange(a, min(n, a + 6))
    return str(a) if a == b else f"{a}-{b}"


def random_program(rng: random.Random, depth: int = 12, name: str = "random",
                   hugetlb: bool = True) -> str:
    """A random scenario of about depth operations, ending with a dump of the root.
    hugetlb: also MAP_HUGETLB mappings (a pool of HUGEPAGES); a dump saves them as objects
    (shared) or anonymous memory (private) in huge pages."""
    st = _State()
    lines = [f"scenario {name}", f"swap {rng.choice(['on', 'on', 'async', 'off'])}"]
    lines += [f"hugepages {HUGEPAGES}"] if hugetlb else []
    lines += ["shmem-folio 16"] if rng.random() < 0.25 else []  # 64 KiB shmem folios
    lines.append("task A")
    for _ in range(depth):
        if hugetlb and rng.random() < 0.1:
            st.n_regions += 1
            r = f"r{st.n_regions}"
            t = rng.choice(sorted(st.alive))
            st.regions[t][r] = 512
            lines.append(f"mmap {t} {r} 512 {rng.choice(['private', 'shared'])} hugetlb")
            continue
        lines += _step(rng, st)
    lines.append("dump A")
    return "\n".join(lines) + "\n"


def _step(rng: random.Random, st: _State) -> list[str]:
    alive = sorted(st.alive)
    t = rng.choice(alive)
    regs = st.regions[t]
    choices = ["mmap", "mmap", "memfd", "fork", "shm", "thp"]
    if regs:
        choices += ["write"] * 4 + ["read"] * 2 + ["reclaim"] * 2 + [
            "dontneed", "pageout", "zap", "migrate", "munmap", "mremap", "guard", "remove",
            "punch", "mprotect", "resize", "free", "cold", "dontfork", "wipeonfork"]
    if len(alive) > 1:
        choices.append("exit")
    choices += ["swapcache-drop", "migrate-finish"]
    op = rng.choice(choices)
    if op == "mmap":
        st.n_regions += 1
        r = f"r{st.n_regions}"
        n = rng.randint(1, MAX_PAGES)
        fds = st.fds[t]
        if fds and rng.random() < 0.4:
            fd = rng.choice(sorted(fds))
            size = fds[fd]
            n = rng.randint(1, size)
            off = rng.randrange(size - n + 1)
            kind = rng.choice(["shared", "shared", "private"])
            regs[r] = n
            if kind == "shared":
                st.shared.add(r)
            return [f"mmap {t} {r} {n} {kind} fd={fd} offset={off}"]
        kind = rng.choice(["shared", "private"])
        regs[r] = n
        if kind == "shared":
            st.shared.add(r)
        return [f"mmap {t} {r} {n} {kind}"]
    if op == "thp":  # 4 MiB of private memory under MADV_HUGEPAGE: one aligned PMD at least
        st.n_regions += 1
        r = f"r{st.n_regions}"
        regs[r] = THP_PAGES
        return [f"mmap {t} {r} {THP_PAGES} private", f"madvise {t} {r} all hugepage"]
    if op == "shm":
        st.n_regions += 1
        r = f"r{st.n_regions}"
        regs[r] = rng.randint(1, MAX_PAGES)
        st.shared.add(r)
        return [f"shm {t} {r} {regs[r]}"]
    if op == "memfd":
        st.n_fds += 1
        fd = f"m{st.n_fds}"
        n = rng.randint(1, MAX_PAGES)
        for task in st.alive:  # make it visible to every task, as if passed by SCM_RIGHTS
            st.fds[task][fd] = n
        out = [f"memfd {t} {fd} {n}"]
        out += [f"sendfd {t} {fd} {o}" for o in sorted(st.alive) if o != t]
        if rng.random() < 0.5:
            out.append(f"pwrite {t} {fd} {_pages(rng, n)}")
        return out
    if op == "fork":
        child = f"T{len(st.tasks)}"
        st.tasks.append(child)
        st.alive.add(child)
        st.regions[child] = dict(regs)
        st.fds[child] = dict(st.fds[t])
        return [f"fork {t} {child}"]
    if op == "exit":
        victim = rng.choice([x for x in alive if x != "A"])
        st.alive.discard(victim)
        return [f"exit {victim}"]
    if op in ("swapcache-drop", "migrate-finish"):
        return [op]
    r = rng.choice(sorted(regs))
    n = regs[r]
    pages = _pages(rng, n)
    if op == "write":
        return [f"write {t} {r} {pages}"]
    if op == "read":
        return [f"read {t} {r} {pages}"]
    if op == "reclaim":
        return [f"reclaim {t} {r} {pages}" + (" keep-swapcache" if rng.random() < 0.3 else "")]
    if op in ("dontneed", "pageout"):
        return [f"madvise {t} {r} {pages} {op}"]
    if op == "remove":
        return [f"madvise {t} {r} {pages} remove"] if r in st.shared else []
    if op == "guard":
        return [f"madvise {t} {r} {pages} guard-install"]
    if op == "zap":
        return [f"zap {t} {r} {pages}"]
    if op == "migrate":
        return [f"migrate {t} {r} {pages}" + (" pending" if rng.random() < 0.5 else "")]
    if op == "munmap":
        del regs[r]
        return [f"munmap {t} {r}"]
    if op == "mremap":
        return [f"mremap {t} {r}"]
    if op == "resize":
        regs[r] = rng.randint(1, MAX_PAGES)
        return [f"mremap {t} {r} {regs[r]}"]
    if op == "mprotect":
        return [f"mprotect {t} {r} {pages} {rng.choice(['none', 'r', 'rw', 'rw'])}"]
    if op in ("free", "cold"):
        return [f"madvise {t} {r} {pages} {op}"]
    if op in ("dontfork", "wipeonfork"):
        undo = "dofork" if op == "dontfork" else "keeponfork"
        return [f"madvise {t} {r} {pages} {rng.choice([op, op, undo])}"]
    if op == "punch":
        fds = st.fds[t]
        if not fds:
            return []
        fd = rng.choice(sorted(fds))
        return [f"fallocate {t} {fd} {_pages(rng, fds[fd])} punch"]
    return []
