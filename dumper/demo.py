"""`dumper demo`: the thread's first scenario run on the model under every kernel profile."""

from __future__ import annotations

import click

from dumper.kabi import PAGE_SIZE, PM_PRESENT, PM_SWAP, SEEK_DATA
from dumper.model import PROFILES, Model, ModelError
from dumper.model.observe import shmem_file_llseek

N = 8


def _views(m: Model, pid: int, addr: int) -> str:
    words = m.pagemap(pid, addr, N * PAGE_SIZE)
    pm = "".join("P" if w & PM_PRESENT else "S" if w & PM_SWAP else "-" for w in map(int, words))
    mc = "".join(str(b) for b in m.mincore(pid, addr, N * PAGE_SIZE))
    obj = m.object_at(pid, addr)
    ls = ""
    for i in range(N):
        try:
            hit = shmem_file_llseek(m.k, obj, i * PAGE_SIZE, SEEK_DATA) == i * PAGE_SIZE
        except ModelError:
            hit = False
        ls += "D" if hit else "."
    return f"pagemap={pm}  mincore={mc}  lseek={ls}"


def run_demo() -> None:
    click.echo("Scenario 1, fork-unmap-after-swapout (David Hildenbrand, 2021-08-17):")
    click.echo(f"A maps shared anonymous memory and writes {N} pages; the system swaps them")
    click.echo("out; A forks B; A unmaps. What can a dumper see of B's memory?\n")
    for name, profile in PROFILES.items():
        m = Model(profile)
        a = m.spawn("A")
        r = m.mmap(a, N * PAGE_SIZE, shared=True)
        m.write(a, r, N * PAGE_SIZE)
        m.reclaim(a, r, N * PAGE_SIZE)
        before_fork = _views(m, a, r)
        b = m.fork(a, "B")
        m.munmap(a, r, N * PAGE_SIZE)
        click.echo(f"[{name}] {profile.summary}")
        click.echo(f"  A after swap-out : {before_fork}")
        click.echo(f"  B after A unmaps : {_views(m, b, r)}")
        click.echo(f"  B's bytes intact : {m.peek(b, r, N * PAGE_SIZE) != bytes(N * PAGE_SIZE)}")
        click.echo("")
    click.echo("pagemap sees B's data only where the kernel looks into the page cache;")
    click.echo("lseek(SEEK_DATA) on the object (via /proc/PID/map_files) sees it everywhere.")
