"""The scenario library, and checking a scenario's expectations across profiles x strategies."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dumper.kabi import PAGE_SIZE
from dumper.model.kernels import PROFILES, load_profile
from dumper.scenarios.format import Scenario, ScenarioError, load
from dumper.scenarios.run import Outcome, build, view
from dumper.select import STRATEGIES

LIBRARY = Path(__file__).parent / "library"


@dataclass(frozen=True)
class Failure:
    scenario: str
    path: str
    line: int
    profile: str
    strategy: str
    expected: str
    found: str

    def line_text(self) -> str:
        where = "/".join(x for x in (self.profile, self.strategy) if x)
        return (f"{self.path}:{self.line}: {self.scenario} [{where}]: expected {self.expected}, "
                f"found {self.found}")


def library() -> list[Path]:
    """The built-in scenario files, in order."""
    return sorted(LIBRARY.glob("*.scn"))


def resolve(spec: str) -> Scenario:
    """A scenario by file path, by name, or by its number in the library ("1", "09b")."""
    p = Path(spec)
    if p.is_file():
        return load(p)
    for f in library():
        sc = load(f)
        num = f.name.split("-", 1)[0]
        if spec in (sc.name, f.stem, num, num.lstrip("0")):
            return sc
    raise ScenarioError(spec, 0, "no such scenario file or library scenario")


def check_views(sc: Scenario, profile) -> list[Failure]:
    """Evaluate the scenario's view and same/differ expectations at its dump point."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    out = []
    w = None
    for e in sc.views:
        if profile.name not in e.profiles:
            continue
        w = w or build(sc, profile)
        found = view(w, e.task, e.region, e.view, e.line)
        if found != e.value:
            out.append(Failure(sc.name, sc.path, e.line, profile.name, "",
                               f"{e.view} {e.value!r}", repr(found)))
    for c in sc.compares:
        w = w or build(sc, profile)
        pages = c.pages
        addr_a, n = w.region(c.task_a, c.region, c.line)
        addr_b, _ = w.region(c.task_b, c.region, c.line)
        idx = range(n) if pages == "all" else pages
        for i in idx:
            a = w.model.peek(w.pids[c.task_a], addr_a + i * PAGE_SIZE, PAGE_SIZE)
            b = w.model.peek(w.pids[c.task_b], addr_b + i * PAGE_SIZE, PAGE_SIZE)
            if (a == b) != c.same:
                out.append(Failure(sc.name, sc.path, c.line, profile.name, "",
                                   f"page {i} {'same' if c.same else 'different'}",
                                   "different" if a != b else "same"))
    return out


def check_outcome(sc: Scenario, o: Outcome) -> list[Failure]:
    """The lost-pages expectation for this run, and that selection changed nothing."""
    out = []
    e = sc.expected_lost(o.strategy, o.profile)
    if e is not None and e.pages != o.lost:
        detail = "; ".join(p.describe() for p in o.lost_pages[:3])
        out.append(Failure(sc.name, sc.path, e.line, o.profile, o.strategy,
                           f"{e.pages} pages lost", f"{o.lost}" + (f" ({detail})" if detail
                                                                   else "")))
    if not o.selection_unchanged:
        line = sc.dump_line
        out.append(Failure(sc.name, sc.path, line, o.profile, o.strategy,
                           "selection to change no page state", "it changed"))
    return out


def run_matrix(scenarios: Iterable[Scenario], profiles: Iterable = tuple(PROFILES),
               strategies: Iterable[str] = STRATEGIES, workdir: str | None = None,
               compress: str | None = None) -> tuple[list[Outcome], list[Failure]]:
    """Every scenario under every profile and strategy: outcomes and failed expectations."""
    from dumper.scenarios.replay import replay

    r = replay(list(scenarios), [load_profile(p) if isinstance(p, str) else p for p in profiles],
               list(strategies), workdir=workdir, compress=compress)
    return r.outcomes, r.failures
