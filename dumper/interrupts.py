"""SIGINT and SIGTERM for the command line: one line, exit 128 + the signal, nothing left.

During start-up (imports, before a command runs) there is nothing to undo, so the signal
exits at once: no KeyboardInterrupt traceback. While a command runs, the signal raises
Interrupted, a BaseException that no `except Exception` swallows: it unwinds through the
freezer's thaw (dumper.linux.freeze defers the signal over its critical sections and
delivers it to this handler after) and the writer's abort (the temporary directory is
removed; one made just before the signal, whose writer never reached its `with`, is
removed by handled() from tempdirs' record), then handled() prints `dumper: interrupted by
SIGINT` and exits 130 (143 for SIGTERM), as a shell reports a death by that signal.
Click's own SIGINT path ("Aborted!", exit 1) is never reached: exit 1 means lost data. A
second signal while unwinding is ignored so that the cleanup runs to its end.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A SIGINT or SIGTERM arrived while a command ran."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_now(signum: int, frame: object) -> None:
    os.write(2, f"dumper: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def early() -> None:
    """At start-up: a signal exits at once (nothing is created before a command runs)."""
    if _main_thread():
        for sig in _honoured():
            signal.signal(sig, _exit_now)


def _honoured() -> list[int]:
    """The signals to handle: not one the parent left ignored (a shell's background job
    ignores SIGINT, and Python itself keeps that)."""
    return [sig for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


_held: list[int] | None = None  # signals that arrived inside held()


def _interrupt(signum: int) -> None:
    for sig in SIGNALS:  # one interrupt: the unwinding must finish
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def _raise(signum: int, frame: object) -> None:
    if _held is not None:
        _held.append(signum)
        return
    _interrupt(signum)


@contextmanager
def held() -> Iterator[None]:
    """A few statements no interrupt may split (make a directory and record it): a signal
    meanwhile is raised when they are done. Masking cannot do this: a process-directed
    signal goes to any thread not blocking it, and CPython runs the handler in the main
    thread at its next bytecode anyway (dumper.linux.freeze measured the same)."""
    global _held
    if _held is not None:
        yield
        return
    _held = []
    try:
        yield
    finally:
        pending, _held = _held, None
        if pending:
            _interrupt(pending[0])


@contextmanager
def handled() -> Iterator[None]:
    """Run a command with SIGINT/SIGTERM turned into Interrupted, reported on the way out."""
    if not _main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _raise) for sig in _honoured()}
    try:
        yield
    except Interrupted as e:
        from dumper.images import tempdirs

        tempdirs.remove_mine()  # a writer interrupted before its `with` could abort it
        print(f"dumper: interrupted by {e.name}", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


_ARGV0 = sys.argv[0] if sys.argv else ""
if os.path.basename(_ARGV0) == "dumper" or _ARGV0.endswith(os.path.join("dumper", "cli.py")):
    early()  # imported by the CLI started as a program: before click, numpy, protobuf load
