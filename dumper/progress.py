"""Progress of long operations: phases, bytes done, rate and time left.

`Progress` is the silent hook dump() and verify() call; `TerminalProgress` draws it with
click's progress bar on stderr, and only when stderr is a terminal (`for_stderr`), so
pipes, logs and `--quiet` runs see nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from dumper.kabi import PAGE_SIZE

MIB = 1 << 20


class Progress:
    """The no-op hook: phase(name, total bytes; 0 when unknown), advance(bytes), done()."""

    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def done(self) -> None:
        pass

    def counted(self, chunks: Iterable[Any]) -> Iterator[Any]:
        """The chunks, each advancing the bar by its length once it has been taken (pages
        dropped, dumper.images.records.Dropped, by the bytes they stand for)."""
        for c in chunks:
            yield c
            n = getattr(c, "nr_pages", None)
            self.advance(len(c) if n is None else n * 4096)


class TerminalProgress(Progress):
    """One click progress bar per phase on stderr: label, bar, percent, MiB done, rate, ETA."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._done = 0
        self._t0 = 0.0

    def phase(self, name: str, total: int) -> None:
        import click

        self.done()
        self._done, self._t0 = 0, time.monotonic()
        if total <= 0:  # no size to measure against: the phase's name is the progress
            click.echo(f"{name} ...", err=True)
            return
        self._bar = click.progressbar(length=total, label=name, file=sys.stderr,
                                      show_eta=True, show_percent=True, show_pos=False,
                                      item_show_func=self._rate)
        self._bar.__enter__()

    def _rate(self, _item: Any) -> str:
        secs = max(time.monotonic() - self._t0, 1e-6)
        return (f"{self._done // PAGE_SIZE:,} pages, {self._done / MIB:.1f} MiB, "
                f"{self._done / MIB / secs:.0f} MiB/s")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes, current_item=True)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def for_stderr(quiet: bool = False) -> Progress:
    """A bar when stderr is a terminal and not quiet; the silent hook otherwise."""
    return TerminalProgress() if not quiet and sys.stderr.isatty() else Progress()
