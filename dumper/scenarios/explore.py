"""Explore: random (or all short) operation programs, replayed under every profile and
strategy; for each strategy that loses data, the smallest program that shows it.

Shrinking is delta debugging over a program's operation lines (Zeller's ddmin): drop chunks
of lines, keep any smaller program that still loses pages under the same profile and
strategy, until no single line can go. The result is printed as a scenario file, with the
`expect lost` line that the replay then checks.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dumper.model.kernels import Profile
from dumper.scenarios.format import Scenario, ScenarioError, parse
from dumper.scenarios.randgen import random_program
from dumper.scenarios.run import dump_restore_verify

MUST_NOT_LOSE = ("auto", "lseek")
HEAD = ("scenario", "swap", "task")


@dataclass
class Finding:
    strategy: str
    profile: str
    lost: int
    program: str  # the shrunk scenario text
    seed: int | None


@dataclass
class Exploration:
    programs: int = 0
    runs: int = 0
    seconds: float = 0.0
    losing_programs: dict[tuple[str, str], int] = field(default_factory=dict)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)

    @property
    def violations(self) -> list[Finding]:
        """Findings for strategies that must never lose."""
        return [f for f in self.findings.values() if f.strategy in MUST_NOT_LOSE]


def lost_pages(text: str, profile: Profile, strategy: str) -> int:
    """Pages a program loses under profile/strategy; 0 for a program that is not valid."""
    try:
        sc = parse(text, "explore.scn")
        return dump_restore_verify(sc, profile, strategy, lenient=True).lost
    except ScenarioError:
        return 0


def shrink(text: str, still_fails: Callable[[str], bool]) -> str:
    """ddmin over the operation lines (the head lines and the dump line stay)."""
    lines = text.strip().splitlines()
    head = [x for x in lines if x.split()[0] in HEAD]
    ops = [x for x in lines if x.split()[0] not in HEAD and not x.startswith("dump ")]
    tail = [x for x in lines if x.startswith("dump ")]

    def build(subset: list[str]) -> str:
        return "\n".join(head + subset + tail) + "\n"

    n = 2
    while len(ops) >= 2:
        size = max(1, len(ops) // n)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        reduced = False
        for i in range(len(chunks)):
            rest = [x for j, c in enumerate(chunks) if j != i for x in c]
            if still_fails(build(rest)):
                ops, n, reduced = rest, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(ops):
                break
            n = min(len(ops), n * 2)
    if len(ops) == 1 and still_fails(build([])):
        ops = []
    return build(ops)


def annotate(f: Finding) -> str:
    """The shrunk program as a scenario file one can replay."""
    origin = f"seed {f.seed}" if f.seed is not None else "exhaustive search"
    lines = f.program.strip().splitlines()
    lines = [x if not x.startswith("scenario ") else
             f"scenario explore-{f.strategy}-{f.profile}" for x in lines]
    head = [f"# Found by dumper explore ({origin}) and shrunk: the `{f.strategy}` strategy",
            f"# loses {f.lost} pages under `{f.profile}`."]
    return "\n".join(head + lines + [f"expect lost {f.strategy} {f.profile} = {f.lost}"]) + "\n"


def explore(programs: Iterator[tuple[int | None, str]], profiles: list[Profile],
            strategies: list[str], do_shrink: bool = True) -> Exploration:
    """Replay every program under every profile and strategy, keeping for each losing
    (strategy, profile) the smallest program found."""
    ex = Exploration()
    t0 = time.perf_counter()
    for seed, text in programs:
        ex.programs += 1
        try:
            sc: Scenario = parse(text, f"seed-{seed}.scn")
        except ScenarioError:
            continue
        for prof in profiles:
            for strategy in strategies:
                ex.runs += 1
                lost = dump_restore_verify(sc, prof, strategy, lenient=True).lost
                if not lost:
                    continue
                key = (strategy, prof.name)
                ex.losing_programs[key] = ex.losing_programs.get(key, 0) + 1
                best = ex.findings.get(key)
                if best is not None and not do_shrink:
                    continue
                small = shrink(text, lambda t, p=prof, s=strategy: lost_pages(t, p, s) > 0) \
                    if do_shrink else text
                if best is None or len(small.splitlines()) < len(best.program.splitlines()):
                    ex.findings[key] = Finding(strategy, prof.name, lost_pages(small, prof,
                                                                              strategy),
                                               small, seed)
    ex.seconds = time.perf_counter() - t0
    return ex


def random_programs(seed: int, count: int, depth: int) -> Iterator[tuple[int, str]]:
    for i in range(count):
        s = seed + i
        yield s, random_program(random.Random(s), depth, f"seed-{s}")


# The exhaustive alphabet: one shared and one private region of two pages in a root task,
# and the operations that move pages between the states the thread argues about.
PROLOGUE = ["scenario exhaustive", "swap on", "task A", "mmap A s 2 shared", "mmap A p 2"]
ALPHABET = [
    "write A s 0", "write A s 1", "write A p 0", "read A s 1", "reclaim A s all",
    "reclaim A s 0 keep-swapcache", "reclaim A p all", "fork A {child}", "munmap A s",
    "zap A s 0", "madvise A s 0 pageout", "swapcache-drop", "migrate A s 0 pending",
]


def exhaustive_programs(depth: int) -> Iterator[tuple[None, str]]:
    """Every program of up to depth operations over ALPHABET (forks get fresh names)."""
    for n in range(depth + 1):
        for combo in itertools.product(ALPHABET, repeat=n):
            ops, kids = [], 0
            for op in combo:
                if "{child}" in op:
                    kids += 1
                    op = op.format(child=f"B{kids}")
                ops.append(op)
            if ops.count("munmap A s") > 1:
                continue
            yield None, "\n".join(PROLOGUE + ops + ["dump A"]) + "\n"
