"""Replay: scenarios x kernel profiles x strategies in one run, with reports.

For every scenario, profile and strategy: pages lost, pages dumped, image bytes, observation
cost (PTEs walked, page-cache lookups, syscalls), and every expectation of the scenario
checked. The text table reads like the thread's argument: which strategy loses what under
which kernel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dumper.model.kernels import Profile
from dumper.scenarios.check import Failure, check_outcome, check_views
from dumper.scenarios.format import Scenario
from dumper.scenarios.run import Outcome, RegionPicture, build, dump_restore_verify, picture


@dataclass
class Replay:
    scenarios: list[Scenario]
    profiles: list[Profile]
    strategies: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    pictures: dict[tuple[str, str], list[RegionPicture]] = field(default_factory=dict)

    def outcome(self, scenario: str, profile: str, strategy: str) -> Outcome | None:
        for o in self.outcomes:
            if (o.scenario, o.profile, o.strategy) == (scenario, profile, strategy):
                return o
        return None


def replay(scenarios: list[Scenario], profiles: list[Profile], strategies: list[str],
           pictures: bool = False, lenient: bool = False, progress=None,
           workdir: str | None = None, compress: str | None = None) -> Replay:
    """Run everything; pictures: keep each scenario's page map per profile (for HTML)."""
    r = Replay(scenarios, profiles, strategies)
    for sc in scenarios:
        if progress:
            progress(f"replaying {sc.name}")
        for prof in profiles:
            r.failures += check_views(sc, prof)
            if pictures:
                r.pictures[(sc.name, prof.name)] = picture(build(sc, prof, lenient))
            for strategy in strategies:
                o = dump_restore_verify(sc, prof, strategy, workdir, compress, lenient)
                r.outcomes.append(o)
                r.failures += check_outcome(sc, o)
    return r


def _cell(o: Outcome | None) -> str:
    if o is None:
        return "-"
    return "ok" if o.lost == 0 else f"{o.lost} lost"


def format_table(r: Replay) -> str:
    """Per scenario: strategies down, profiles across, pages lost; then the cost of looking."""
    names = [p.name for p in r.profiles]
    w = max(14, *(len(n) + 2 for n in names))
    out = []
    for sc in r.scenarios:
        cite = f"  ({', '.join(sc.cite)})" if sc.cite else ""
        out.append(f"{sc.name}{cite}")
        out.append("  " + "strategy".ljust(13) + "".join(n.rjust(w) for n in names))
        for s in r.strategies:
            row = "".join(_cell(r.outcome(sc.name, n, s)).rjust(w) for n in names)
            out.append("  " + s.ljust(13) + row)
        out.append("")
    out.append("Cost of looking (summed over the scenarios): PTEs walked / page-cache lookups /"
               " syscalls, and pages dumped")
    out.append("  " + "strategy".ljust(13) + "".join(n.rjust(w + 10) for n in names))
    for s in r.strategies:
        cells = [f"{c.walked}/{c.lookups}/{c.syscalls} {c.pages}p" for c in cost_row(r, s)]
        out.append("  " + s.ljust(13) + "".join(c.rjust(w + 10) for c in cells))
    out.append("")
    out.append(summary_line(r))
    for f in r.failures:
        out.append("FAILED " + f.line_text())
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Cost:
    """What one strategy paid to look under one profile, summed over the scenarios."""

    walked: int
    lookups: int
    syscalls: int
    pages: int


def cost_row(r: Replay, strategy: str) -> list[Cost]:
    """The cost of looking of strategy under each profile (the table's row)."""
    row = []
    for p in r.profiles:
        os_ = [o for o in r.outcomes if o.strategy == strategy and o.profile == p.name]
        row.append(Cost(sum(o.ptes_walked for o in os_), sum(o.pagecache_lookups for o in os_),
                        sum(o.syscalls for o in os_), sum(o.pages_dumped for o in os_)))
    return row


def summary_line(r: Replay) -> str:
    lossy = sum(1 for o in r.outcomes if o.lost)
    return (f"{len(r.scenarios)} scenarios x {len(r.profiles)} profiles x "
            f"{len(r.strategies)} strategies = {len(r.outcomes)} dumps restored and verified; "
            f"{lossy} lost data; {len(r.failures)} expectations failed")


def format_json(r: Replay) -> str:
    doc = {
        "profiles": [p.name for p in r.profiles],
        "strategies": r.strategies,
        "scenarios": [{"name": s.name, "path": s.path, "cite": s.cite} for s in r.scenarios],
        "outcomes": [
            {"scenario": o.scenario, "profile": o.profile, "strategy": o.strategy,
             "lost": o.lost, "pages_dumped": o.pages_dumped, "image_bytes": o.image_bytes,
             "ptes_walked": o.ptes_walked, "pagecache_lookups": o.pagecache_lookups,
             "syscalls": o.syscalls, "selection_unchanged": o.selection_unchanged,
             "lost_pages": [{"pid": p.pid, "addr": p.addr, "shmid": p.shmid,
                             "offset": p.offset, "expected": f"{p.expected:016x}",
                             "found": None if p.found is None else f"{p.found:016x}"}
                            for p in o.lost_pages]}
            for o in r.outcomes
        ],
        "failures": [vars(f) for f in r.failures],
        "summary": summary_line(r),
    }
    return json.dumps(doc, indent=2) + "\n"


