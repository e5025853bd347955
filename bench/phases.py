"""Where a live dump's time goes, phase by phase: one dump of the bench.live helper run in
this process, with timers around the functions each phase is made of (wall time summed per
function, whichever thread ran it; the Sink's hashing and writing run beside the reads, so
the phases add up to more than the dump). Start-up is timed apart, as `python -c "import
dumper.cli"` in a fresh interpreter.

    python -m bench.phases [--mib 1024] [--kind private|shared] [--no-fsync] [--compress zstd]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

from bench.live import Helper, build_helper

TIMES: dict[str, float] = defaultdict(float)
_LOCK = threading.Lock()


def timed(owner: object, name: str, phase: str) -> None:
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            with _LOCK:
                TIMES[phase] += time.perf_counter() - t

    setattr(owner, name, wrapper)


class TimedHash:
    """A stored hash whose update() is timed (the Sink's checksum)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def update(self, data) -> None:
        t = time.perf_counter()
        self.inner.update(data)
        with _LOCK:
            TIMES["checksum (Sink thread)"] += time.perf_counter() - t

    def digest(self) -> bytes:
        return self.inner.digest()

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def instrument() -> None:
    from dumper import dump as d
    from dumper.images import pages, writer
    from dumper.linux import freeze, mapfiles, memread
    from dumper.linux import host as lhost

    timed(freeze.Freezer, "seize_process", "freeze (seize)")
    timed(freeze.Freezer, "seize_tree", "freeze (seize)")
    timed(freeze, "_thaw_all", "thaw")
    timed(d, "collect", "maps/pagemap/selection (collect)")
    timed(d, "find_cow", "find_cow")
    timed(lhost.LinuxHost, "pagemap", "pagemap reads (in read_memory)")
    timed(memread, "read_runs", "private reads (/proc/PID/mem)")
    timed(mapfiles.MapFile, "readinto", "object reads (pread)")
    timed(pages.Sink, "_write", "writes (Sink thread)")
    timed(pages.PagesWriter, "_compress", "zstd compress (workers)")
    timed(writer.ImageSetWriter, "commit", "commit (metadata, validate, fsync dir, rename)")
    timed(writer.ImageSetWriter, "_validate", "  of which validate")
    timed(writer, "_fsync_dir", "  of which fsync dir")
    timed(os, "fsync", "fsync (pages and metadata files)")
    real_hash = pages.stored_hash
    pages.stored_hash = lambda *a: TimedHash(real_hash(*a))  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.phases")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--kind", choices=("private", "shared"), default="private")
    ap.add_argument("--no-fsync", dest="sync", action="store_false")
    ap.add_argument("--compress", choices=("zstd",))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dumper.cli"], check=True)
    startup = time.perf_counter() - t
    from dumper.dump import dump
    from dumper.linux import LinuxHost

    instrument()
    base = tempfile.mkdtemp(prefix="dumper-bench-phases-", dir=a.dir)
    try:
        helper = Helper(build_helper(base), a.mib << 20, a.kind, base)
        try:
            out = os.path.join(base, "set")
            t = time.perf_counter()
            s = dump(LinuxHost(digest_while_reading=False), helper.pid, out, "auto",
                     tree=False, truth=False, sync=a.sync, compress=a.compress,
                     threads=a.threads if a.compress else 0)
            total = time.perf_counter() - t
            gap = helper.gap()
        finally:
            helper.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    how = f"{a.mib} MiB {a.kind}, {'durable' if a.sync else '--no-fsync'}" + (
        f", {a.compress} x{a.threads}" if a.compress else "")
    print(f"| phase ({how}) | seconds |\n| --- | --- |")
    print(f"| start-up: import dumper.cli (fresh interpreter) | {startup:.3f} |")
    for k, v in TIMES.items():
        print(f"| {k} | {v:.3f} |")
    print(f"| **dump() in all** | {total:.3f} |")
    print(f"| tree frozen (dump's report / helper's longest stop) | {s.frozen_seconds:.3f} / "
          f"{gap:.3f} |")


if __name__ == "__main__":
    main()
