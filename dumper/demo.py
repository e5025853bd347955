"""`dumper demo`: the main job on the embedded model.

Replays the whole scenario library of the 2021 thread under every kernel profile and every
page-selection strategy — each run a real dump into a CRIU-format image set, a restore into a
fresh model and a byte-for-byte verification — prints the matrix of pages lost, and writes
the HTML report with a picture of every task's pages.
"""

from __future__ import annotations

import os
import sys

import click

from dumper.model.kernels import PROFILES
from dumper.scenarios import replay as rp
from dumper.scenarios.check import library
from dumper.scenarios.format import load
from dumper.scenarios.report import format_html
from dumper.select import STRATEGIES


def run_demo(out: str = "out/replay.html") -> int:
    scs = [load(p) for p in library()]
    click.echo(f"dumper demo: {len(scs)} scenarios from the linux-mm thread on PTE markers, "
               f"{len(PROFILES)} kernel profiles, {len(STRATEGIES)} strategies.")
    click.echo("Each cell: a dump, a restore into a fresh model, and a verification of every "
               "byte every task could read.\n")
    r = rp.replay(scs, list(PROFILES.values()), list(STRATEGIES), pictures=True,
                  progress=lambda m: click.echo(f"  {m}", err=True))
    click.echo(rp.format_table(r), nl=False)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(format_html(r))
    os.replace(tmp, out)
    must = [o for o in r.outcomes if o.strategy in ("auto", "lseek")]
    lossy = sorted({o.strategy for o in r.outcomes if o.lost})
    if all(o.lost == 0 for o in must):
        click.echo(f"\nThe thread's conclusion holds on the model: `lseek` and `auto` lost no "
                   f"page in {len(must)} dumps; {', '.join(lossy) or 'no strategy'} lost data.")
    else:
        bad = sorted({f"{o.scenario} {o.profile}/{o.strategy}" for o in must if o.lost})
        click.echo(f"\n`lseek`/`auto` LOST data in: {', '.join(bad)}")
    click.echo(f"HTML report (matrix and page pictures per scenario): {os.path.abspath(out)}")
    return 1 if r.failures or any(o.lost for o in must) else 0


if __name__ == "__main__":
    sys.exit(run_demo())
