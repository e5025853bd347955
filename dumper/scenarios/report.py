"""The HTML replay report: one self-contained page.

A table of contents; per scenario its header (thread references linked to their entries in
docs/thread.md), the lost-pages matrix and, on one grid, a panel of page strips per kernel
profile — profiles whose pictures and outcomes are identical share one panel that names
them all. Every page square carries its state as a glyph as well as a colour, from the
Okabe-Ito palette (distinguishable with the common colour-vision deficiencies); lost pages
are hatched too. Then the cost of looking, as the terminal table prints it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from dumper.scenarios.format import Scenario
from dumper.scenarios.replay import Replay, cost_row, summary_line
from dumper.scenarios.run import Outcome, RegionPicture

COVER_LETTER = "20210807032521.7591-1-peterx@redhat.com"  # the RFC series (docs/thread.md #0)
LORE = f"https://lore.kernel.org/all/{COVER_LETTER}/"

# Okabe & Ito, "Color Universal Design" (2008): state -> (fill, glyph colour, meaning).
STATES = {
    "P": ("#0072B2", "#fff", "present (mapped by this task)"),
    "R": ("#56B4E9", "#000", "resident, not mapped here"),
    "W": ("#F0E442", "#000", "in the swap cache"),
    "S": ("#E69F00", "#000", "swapped out"),
    "G": ("#CC79A7", "#000", "under migration"),
    "M": ("#009E73", "#fff", "PTE marker"),
    "H": ("#eeeeee", "#777", "hole / untouched"),
    " ": ("#ffffff", "#fff", "unmapped"),
}
DUMP = {  # dump row: (fill, glyph, glyph colour, meaning)
    "lost": ("url(#lost)", "\u2717", "#000", "lost"),
    "dumped": ("#555555", "\u2022", "#fff", "dumped"),
    "not": ("#ffffff", "", "#000", "not dumped (nothing to lose)"),
}
CELL = 14
LABEL_W = 96


def thread_doc() -> str:
    """Where the report links thread references: this tree's docs/thread.md, else relative."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "thread.md"
    return doc.as_uri() if doc.exists() else "docs/thread.md"


def _link_refs(text: str, doc: str) -> str:
    """Escape text, linking every `thread:ID` (and bare message ids) to its docs entry."""
    out, pos = [], 0
    for m in re.finditer(r"thread:([a-z]+(?:-re-[a-z]+)?-\d{4}-\d\d-\d\d[a-z]?(?:-cover)?)",
                         text):
        out.append(html.escape(text[pos : m.start()]))
        out.append(f'<a class="ref" href="{doc}#{m.group(1)}">{html.escape(m.group(0))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _glyph(x: int, y: int, text: str, colour: str) -> str:
    return (f'<text class="glyph" x="{x + (CELL - 2) / 2}" y="{y + CELL - 4}" '
            f'fill="{colour}">{html.escape(text)}</text>') if text else ""


def _svg(pic: RegionPicture, r: Replay, sc: Scenario, prof: str) -> str:
    n = len(pic.states)
    rows = 1 + len(r.strategies)
    width, height = LABEL_W + n * CELL + 4, rows * (CELL + 3) + 16
    whose = "object's page" if pic.shmid is not None else "task's PTE"
    e = html.escape
    parts = [f'<svg class="pages" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="{e(pic.task)} {e(pic.region)}">',
             f'<text class="label state-label" x="0" y="{CELL - 3}">{whose}</text>']
    for i, st in enumerate(pic.states):
        fill, ink, what = STATES.get(st, ("#999999", "#000", st))
        x = LABEL_W + i * CELL
        parts.append(f'<rect class="page state-{st.strip() or "none"}" x="{x}" y="0" '
                     f'width="{CELL - 2}" height="{CELL - 2}" fill="{fill}"><title>page {i}: '
                     f'{what}</title></rect>' + _glyph(x, 0, st.strip(), ink))
    for j, s in enumerate(r.strategies, start=1):
        o = r.outcome(sc.name, prof, s)
        y = j * (CELL + 3)
        parts.append(f'<text class="label" x="0" y="{y + CELL - 3}">{e(s)}</text>')
        lost = {p.addr for p in (o.lost_pages if o else []) if p.pid == pic.pid}
        lost_obj = {(p.shmid, p.offset) for p in (o.lost_pages if o else [])
                    if p.shmid is not None}
        covered = o.covered.get(pic.pid, set()) if o else set()
        for i in range(n):
            addr = pic.addr + i * 4096
            if addr in lost or (pic.shmid, pic.first_offset + i * 4096) in lost_obj:
                key = "lost"
            elif addr in covered:
                key = "dumped"
            else:
                key = "not"
            fill, glyph, ink, what = DUMP[key]
            x = LABEL_W + i * CELL
            parts.append(f'<rect class="page dump-{what.split()[0]}" x="{x}" y="{y}" '
                         f'width="{CELL - 2}" height="{CELL - 2}" fill="{fill}" stroke="#bbb">'
                         f'<title>{e(s)}, page {i}: {what}</title></rect>'
                         + _glyph(x, y, glyph, ink))
    step = 1 if n <= 16 else 4
    y = rows * (CELL + 3) + 10
    parts.append(f'<text class="label" x="0" y="{y}">page</text>')
    parts += [f'<text class="tick" x="{LABEL_W + i * CELL + (CELL - 2) / 2}" y="{y}">{i}</text>'
              for i in range(0, n, step)]
    parts.append("</svg>")
    return "".join(parts)


def _signature(r: Replay, sc: Scenario, prof: str) -> tuple:
    """What a panel shows: two profiles with the same signature draw the same panel."""
    pics = tuple((p.task, p.region, p.addr, p.states) for p in r.pictures.get((sc.name, prof), []))
    outs = []
    for s in r.strategies:
        o = r.outcome(sc.name, prof, s)
        outs.append(None if o is None else (
            o.lost, tuple(sorted((p.pid, p.addr) for p in o.lost_pages)),
            tuple(sorted((k, tuple(sorted(v))) for k, v in o.covered.items()))))
    return pics, tuple(outs)


def _panels(r: Replay, sc: Scenario) -> list[str]:
    groups: dict[tuple, list[str]] = {}
    for p in r.profiles:
        if r.pictures.get((sc.name, p.name)):
            groups.setdefault(_signature(r, sc, p.name), []).append(p.name)
    out = []
    for names in groups.values():
        e = html.escape
        same = (f'<p class="folded">{len(names)} profiles behave identically here: '
                f'{e(", ".join(names))}</p>') if len(names) > 1 else ""
        figs = "".join(
            f"<figure><figcaption>{e(p.task)} (pid {p.pid}) {e(p.region)} @{p.addr:#x}"
            + (f", object offset {p.first_offset:#x}" if p.shmid is not None else "")
            + f"</figcaption>{_svg(p, r, sc, names[0])}</figure>"
            for p in r.pictures[(sc.name, names[0])])
        out.append(f'<div class="panel"><h3>{e(" = ".join(names))}</h3>{same}{figs}</div>')
    return out


def _matrix_cell(o: Outcome | None) -> str:
    if o is None:
        return "<td>-</td>"
    cls = "ok" if o.lost == 0 else "lost"
    title = html.escape(f"{o.pages_dumped} pages dumped, {o.image_bytes} bytes, "
                        f"{o.ptes_walked} PTEs walked, {o.pagecache_lookups} page-cache lookups")
    text = "\u2713 ok" if o.lost == 0 else f"\u2717 {o.lost} lost"
    return f'<td class="{cls}" title="{title}">{text}</td>'


def _cost_table(r: Replay) -> str:
    e = html.escape
    head = "".join(f"<th>{e(p.name)}</th>" for p in r.profiles)
    rows = "".join(
        f"<tr><th>{e(s)}</th>" + "".join(
            f"<td>{c.walked} / {c.lookups} / {c.syscalls}<br>{c.pages} pages</td>"
            for c in cost_row(r, s)) + "</tr>"
        for s in r.strategies)
    return ('<section id="cost"><h2>Cost of looking</h2><p>Summed over the scenarios: PTEs '
            'walked / page-cache lookups / syscalls, and pages dumped.</p>'
            f'<table class="cost"><tr><th>strategy</th>{head}</tr>{rows}</table></section>')


def _legend() -> str:
    e = html.escape
    keys = [(f, g, s, w) for s, (f, g, w) in STATES.items() if s != " "]
    items = "".join(f'<span class="key"><i style="background:{f};color:{g}">{e(s)}</i>{e(w)}'
                    "</span>" for f, g, s, w in keys)
    items += ('<span class="key"><i style="background:#555;color:#fff">\u2022</i>dumped</span>'
              '<span class="key"><i class="hatch">\u2717</i>lost</span>')
    return f'<p class="legend">{items}</p>'


def format_html(r: Replay, doc: str | None = None) -> str:
    """The whole page (doc: where docs/thread.md is, for the thread links)."""
    doc = doc or thread_doc()
    e = html.escape
    names = [p.name for p in r.profiles]
    toc = ['<nav id="toc"><h2>Contents</h2><ol>']
    if r.failures:
        toc.append('<li><a href="#failures">Failed expectations</a></li>')
    toc += [f'<li><a href="#{e(sc.name)}">{e(sc.name)}</a></li>' for sc in r.scenarios]
    toc.append('<li><a href="#cost">Cost of looking</a></li></ol></nav>')
    body = ['<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
            '<pattern id="lost" width="4" height="4" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="4" height="4" fill="#D55E00"/>'
            '<rect width="1.5" height="4" fill="#000"/></pattern></defs></svg>',
            "<h1>dumper replay</h1>",
            f"<p id='summary'>{e(summary_line(r))}</p>",
            f'<p class="series">The series under discussion: Peter Xu, "[RFC PATCH 0/5] mm: '
            f'Enable PM_SWAP for shmem with PTE_MARKER", <a id="lore" href="{LORE}">'
            f'{COVER_LETTER}</a> (lore.kernel.org); the messages, one by one, in '
            f'<a href="{doc}">docs/thread.md</a>.</p>',
            "".join(toc), _legend()]
    if r.failures:
        body.append("<h2 id='failures'>Failed expectations</h2><ul class='failures'>" + "".join(
            f"<li>{e(f.line_text())}</li>" for f in r.failures) + "</ul>")
    for sc in r.scenarios:
        body.append(f'<section class="scenario" id="{e(sc.name)}"><h2>{e(sc.name)}</h2>')
        if sc.cite:
            body.append('<p class="cite">From ' + ", ".join(
                f'<a class="ref" href="{doc}#{e(c)}">{e(c)}</a>' for c in sc.cite) + "</p>")
        if sc.header:
            body.append(f"<pre class='header'>{_link_refs(sc.header, doc)}</pre>")
        rows = "".join(
            "<tr><th>" + e(s) + "</th>" + "".join(
                _matrix_cell(r.outcome(sc.name, n, s)) for n in names) + "</tr>"
            for s in r.strategies)
        body.append('<div class="grid"><div class="panel"><table class="matrix"><tr><th>pages '
                    'lost</th>' + "".join(f"<th>{e(n)}</th>" for n in names)
                    + f"</tr>{rows}</table></div>" + "".join(_panels(r, sc)) + "</div>")
        body.append("</section>")
    body.append(_cost_table(r))
    script = ("document.body.dataset.rendered = document.querySelectorAll('svg.pages').length;"
              "document.getElementById('summary').dataset.pages = "
              "document.querySelectorAll('rect.page').length;"
              "document.body.dataset.grids = [...document.querySelectorAll('div.grid')]"
              ".filter(g => getComputedStyle(g).display == 'grid').length;")
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "table.matrix td,table.matrix th,table.cost td,table.cost th{border:1px solid #999;"
        "padding:2px 6px;text-align:center}td.lost{background:#f6c9ad}td.ok{background:#cde6f5}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px;"
        "align-items:start}.panel{border:1px solid #ddd;padding:6px;overflow-x:auto}"
        ".panel h3{margin:0 0 4px 0;font-size:14px}p.folded{font-size:12px;margin:0 0 4px 0;"
        "font-style:italic}figure{margin:0 0 .5em 0}figcaption{font-size:12px}"
        "pre.header{font-size:11px;background:#f5f5f5;padding:4px;white-space:pre-wrap}"
        "svg text.label{font-size:10px}svg text.glyph{font-size:9px;text-anchor:middle;"
        "font-family:monospace}svg text.tick{font-size:8px;text-anchor:middle;fill:#555}"
        ".key{margin-right:1em;font-size:12px}.key i{display:inline-block;width:12px;"
        "height:12px;margin-right:3px;border:1px solid #999;font-size:9px;font-style:normal;"
        "text-align:center;line-height:12px;font-family:monospace}"
        ".key i.hatch{background:repeating-linear-gradient(45deg,#D55E00 0 2px,#000 2px 3px);"
        "color:#fff}nav#toc ol{columns:3;font-size:13px}"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dumper replay"
        f"</title><style>{style}</style></head><body>" + "".join(body)
        + f"<script>{script}</script></body></html>\n"
    )
