"""Replay: scenarios x kernel profiles x strategies in one run, with reports.

For every scenario, profile and strategy: pages lost, pages dumped, image bytes, observation
cost (PTEs walked, page-cache lookups, syscalls), and every expectation of the scenario
checked. The text table reads like the thread's argument: which strategy loses what under
which kernel.
"""

from __future__ import annotations

import html
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
        cells = []
        for n in names:
            os_ = [o for o in r.outcomes if o.strategy == s and o.profile == n]
            walked = sum(o.ptes_walked for o in os_)
            lookups = sum(o.pagecache_lookups for o in os_)
            calls = sum(o.syscalls for o in os_)
            cells.append(f"{walked}/{lookups}/{calls} {sum(o.pages_dumped for o in os_)}p")
        out.append("  " + s.ljust(13) + "".join(c.rjust(w + 10) for c in cells))
    out.append("")
    out.append(summary_line(r))
    for f in r.failures:
        out.append("FAILED " + f.line_text())
    return "\n".join(out) + "\n"


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


# -- HTML ---------------------------------------------------------------------------------------

STATE_COLOURS = {
    "P": ("#2e7d32", "present (mapped by this task)"),
    "R": ("#81c784", "resident, not mapped here"),
    "W": ("#f9a825", "in the swap cache"),
    "S": ("#1565c0", "swapped out"),
    "G": ("#8e24aa", "under migration"),
    "M": ("#6d4c41", "PTE marker"),
    "H": ("#eeeeee", "hole / untouched"),
    " ": ("#ffffff", "unmapped"),
}
CELL = 14


def _svg(pic: RegionPicture, r: Replay, sc: Scenario, prof: str) -> str:
    n = len(pic.states)
    rows = 1 + len(r.strategies)
    label_w = 90
    width, height = label_w + n * CELL + 4, rows * (CELL + 3) + 4
    parts = [f'<svg class="pages" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(pic.task)} '
             f'{html.escape(pic.region)}">']
    parts.append(f'<text x="0" y="{CELL - 3}" font-size="10">state</text>')
    for i, st in enumerate(pic.states):
        colour, what = STATE_COLOURS.get(st, ("#ff00ff", st))
        parts.append(f'<rect class="page state-{st.strip() or "none"}" x="{label_w + i * CELL}"'
                     f' y="0" width="{CELL - 2}" height="{CELL - 2}" fill="{colour}">'
                     f'<title>page {i}: {what}</title></rect>')
    for j, s in enumerate(r.strategies, start=1):
        o = r.outcome(sc.name, prof, s)
        y = j * (CELL + 3)
        parts.append(f'<text x="0" y="{y + CELL - 3}" font-size="10">{html.escape(s)}</text>')
        lost = {p.addr for p in (o.lost_pages if o else []) if p.pid == pic.pid}
        lost_obj = {(p.shmid, p.offset) for p in (o.lost_pages if o else [])
                    if p.shmid is not None}
        covered = o.covered.get(pic.pid, set()) if o else set()
        for i in range(len(pic.states)):
            addr = pic.addr + i * 4096
            if addr in lost or (pic.shmid, pic.first_offset + i * 4096) in lost_obj:
                colour, what = "#c62828", "lost"
            elif addr in covered:
                colour, what = "#455a64", "dumped"
            else:
                colour, what = "#fafafa", "not dumped (nothing to lose)"
            parts.append(f'<rect class="page dump-{what.split()[0]}" x="{label_w + i * CELL}" '
                         f'y="{y}" width="{CELL - 2}" height="{CELL - 2}" fill="{colour}" '
                         f'stroke="#ccc"><title>{html.escape(s)}, page {i}: {what}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def format_html(r: Replay) -> str:
    """One self-contained page: per scenario, the lost-pages matrix beside a picture of every
    task's pages per region (state, and dumped / lost under each strategy) per profile."""
    e = html.escape
    names = [p.name for p in r.profiles]
    body = [f"<h1>dumper replay</h1><p id='summary'>{e(summary_line(r))}</p>"]
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{e(w)}</span>'
                     for c, w in STATE_COLOURS.values() if w != "unmapped")
    body.append(f'<p class="legend">{legend}<span class="key"><i style="background:#455a64">'
                f'</i>dumped</span><span class="key"><i style="background:#c62828"></i>lost'
                f'</span></p>')
    if r.failures:
        body.append("<h2>Failed expectations</h2><ul class='failures'>" + "".join(
            f"<li>{e(f.line_text())}</li>" for f in r.failures) + "</ul>")
    for sc in r.scenarios:
        body.append(f'<section class="scenario" id="{e(sc.name)}"><h2>{e(sc.name)}</h2>')
        if sc.header:
            body.append(f"<pre class='header'>{e(sc.header)}</pre>")
        rows = "".join(
            "<tr><th>" + e(s) + "</th>" + "".join(
                _matrix_cell(r.outcome(sc.name, n, s)) for n in names) + "</tr>"
            for s in r.strategies)
        body.append('<div class="row"><table class="matrix"><tr><th>pages lost</th>'
                    + "".join(f"<th>{e(n)}</th>" for n in names) + f"</tr>{rows}</table>")
        for n in names:
            pics = r.pictures.get((sc.name, n), [])
            if not pics:
                continue
            body.append(f'<div class="pictures"><h3>{e(n)}</h3>')
            for p in pics:
                body.append(f"<figure><figcaption>{e(p.task)} (pid {p.pid}) {e(p.region)} "
                            f"@{p.addr:#x}</figcaption>{_svg(p, r, sc, n)}</figure>")
            body.append("</div>")
        body.append("</div></section>")
    script = ("document.body.dataset.rendered = document.querySelectorAll('svg.pages').length;"
              "document.getElementById('summary').dataset.pages = "
              "document.querySelectorAll('rect.page').length;")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dumper replay</title>"
        "<style>body{font-family:sans-serif;margin:1em}table.matrix{border-collapse:collapse;"
        "margin-right:2em}table.matrix td,table.matrix th{border:1px solid #999;padding:2px 6px;"
        "text-align:center}td.lost{background:#ffcdd2}td.ok{background:#c8e6c9}"
        ".row{display:flex;flex-wrap:wrap;align-items:flex-start}.pictures{margin-right:1.5em}"
        "figure{margin:0 0 .5em 0}figcaption{font-size:12px}pre.header{font-size:11px;"
        "background:#f5f5f5;padding:4px}.key{margin-right:1em;font-size:12px}.key i{display:"
        "inline-block;width:10px;height:10px;margin-right:3px;border:1px solid #999}</style>"
        "</head><body>" + "".join(body) + f"<script>{script}</script></body></html>\n"
    )


def _matrix_cell(o: Outcome | None) -> str:
    if o is None:
        return "<td>-</td>"
    cls = "ok" if o.lost == 0 else "lost"
    title = html.escape(f"{o.pages_dumped} pages dumped, {o.image_bytes} bytes, "
                        f"{o.ptes_walked} PTEs walked, {o.pagecache_lookups} page-cache lookups")
    return f'<td class="{cls}" title="{title}">{_cell(o)}</td>'
