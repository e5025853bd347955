"""Live dumps against CRIU 4.2 and plain copies, side by side in one run, on the real kernel.

A small C helper (bench/helper.c, built here with cc) holds SIZE bytes of written memory,
private or MAP_SHARED; every contestant dumps it (or copies as many bytes) in turn, the
contestants interleaved within each repeat:

- criu      `criu dump -t PID -D DIR --leave-running --shell-job` (CRIU 4.2, built by
            ../shared/vendor/build-criu.sh; skipped with the reason where it is missing)
- nofsync   `dumper dump --pid PID --no-fsync` (buffered, as CRIU writes)
- durable   `dumper dump --pid PID` (O_DIRECT and fsync: survives a crash once it returns)
- zstd      `dumper dump --pid PID --no-fsync --compress zstd --threads 2`
- NAME_*    the same two raw dumps from another tree (--tree NAME=DIR, e.g. a checkout of
            an earlier commit) run with PYTHONPATH=DIR: before and after a change, same run
- write     one write(2) of a warm SIZE buffer into a new file (CRIU's "plain copy")
- write_fsync  the same, then fsync: what a durable dump has to match
- cp        `cp` of a SIZE file warm in the page cache

Every contestant runs as a process of its own under `helper rss` (its peak RSS from wait4);
wall time includes its start-up. The order rotates from one repeat to the next. The freeze
time is the longest gap the helper's ticker thread (1 ms period) saw during the run: how long
the helper was stopped, whoever stopped it; dumper's own report of it (`tree frozen X s` in
its summary line) is kept beside it. GB/s is 10^9 bytes of SIZE per second. Medians and bests
of the repeats; ratios to CRIU (its time over the contestant's: above 1 is faster than CRIU).

    python -m bench.live [--json] [--mib 1024 [4096 ...]] [--repeats 5] [--kinds private
        shared] [--dir /var/tmp] [--tree NAME=DIR ...] [--criu PATH]

Needs root. One helper at a time (a 4 GiB helper holds 4 GiB); each is killed and every file
removed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CRIU = "/var/cache/dumper/criu-4.2/criu"
HELPER_C = Path(__file__).with_name("helper.c")
DEVNULL = subprocess.DEVNULL
SETTLE = 0.3  # seconds between two runs: the same pause before every contestant


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    freeze_s: list[float] = field(default_factory=list)
    reported_freeze_s: list[float] = field(default_factory=list)
    dump_s: list[float] = field(default_factory=list)  # dumper's own "in X s"


def build_helper(base: str) -> str:
    exe = os.path.join(base, "helper")
    subprocess.run(["cc", "-O2", "-pthread", "-o", exe, str(HELPER_C)], check=True)
    return exe


class Helper:
    """The C helper holding the memory, started in a session of its own, stdio on
    /dev/null (nothing for CRIU to dump but the memory and itself)."""

    def __init__(self, exe: str, size: int, kind: str, base: str) -> None:
        self.status = os.path.join(base, f"status-{kind}")
        self.proc = subprocess.Popen([exe, "hold", str(size), kind, self.status],
                                     stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
                                     start_new_session=True)
        line = self._wait_status(120.0)
        self.pid = int(line.split()[0])
        if self.pid != self.proc.pid:
            raise RuntimeError(f"helper says pid {self.pid}, started {self.proc.pid}")

    def _wait_status(self, timeout: float) -> str:
        t = time.monotonic() + timeout
        while time.monotonic() < t:
            if self.proc.poll() is not None:
                raise RuntimeError(f"helper exited {self.proc.returncode}")
            try:
                return Path(self.status).read_text()
            except FileNotFoundError:
                time.sleep(0.002)
        raise RuntimeError("helper did not answer")

    def gap(self) -> float:
        """The longest stop since the last call, seconds."""
        os.unlink(self.status)
        os.kill(self.pid, signal.SIGUSR1)
        return int(self._wait_status(10.0)) / 1e9

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by pid
        self.proc.wait()


def run_rss(exe: str, argv: list[str], env: dict[str, str] | None = None
            ) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stderr) of argv run under `helper rss`."""
    t = time.perf_counter()
    r = subprocess.run([exe, "rss", *argv], stdin=DEVNULL, capture_output=True, text=True,
                       env=env, cwd=os.path.dirname(exe))  # not here: -m puts the cwd first
    dt = time.perf_counter() - t
    m = re.search(r"^RSS (\d+) (\d+)$", r.stderr, re.M)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: "
                           f"{(r.stderr + r.stdout)[-600:]}")
    return dt, int(m.group(1)), r.stdout + r.stderr


def dumper_argv(pid: int, out: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid), "-o", out, *extra]


@dataclass
class Contestant:
    name: str
    argv: Callable[[int, str], list[str]] | None = None  # (pid, out) -> command; None: copy
    env: dict[str, str] | None = None
    skip: str = ""  # why it does not run


def contestants(criu: str, trees: list[str]) -> list[Contestant]:
    here = str(Path(__file__).resolve().parent.parent)
    env_new = {**os.environ, "PYTHONPATH": here}
    out = [Contestant("criu", lambda p, o: [criu, "dump", "-t", str(p), "-D", o,
                                            "--leave-running", "--shell-job", "-o", "dump.log"],
                      skip="" if os.access(criu, os.X_OK) else
                      f"{criu} is missing: bash ../shared/vendor/build-criu.sh "
                      f"{os.path.dirname(criu)} builds it")]
    for name, extra in (("nofsync", ["--no-fsync"]), ("durable", []),
                        ("zstd", ["--no-fsync", "--compress", "zstd", "--threads", "2"])):
        out.append(Contestant(name, lambda p, o, x=extra: dumper_argv(p, o, ["--quiet", *x]),
                              env_new))
    for tree in trees:  # NAME=DIR; their CLI may predate --quiet
        label, _, path = tree.partition("=")
        env_old = {**os.environ, "PYTHONPATH": path}
        for name, extra in ((f"{label}_nofsync", ["--no-fsync"]), (f"{label}_durable", [])):
            out.append(Contestant(name, lambda p, o, x=extra: dumper_argv(p, o, x), env_old))
    return out + [Contestant("write"), Contestant("write_fsync"), Contestant("cp")]


def dir_bytes(path: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())


def one(c: Contestant, exe: str, helper: Helper, size: int, base: str, src: str,
        runs: Runs) -> None:
    out = os.path.join(base, f"out-{c.name}")
    if c.argv is None:
        if c.name == "cp":
            t = time.perf_counter()
            subprocess.run(["cp", src, out], check=True)
            runs.seconds.append(time.perf_counter() - t)
        else:
            r = subprocess.run([exe, "write", str(size), out, str(int(c.name == "write_fsync"))],
                               check=True, capture_output=True, text=True)
            runs.seconds.append(float(r.stdout))
        os.unlink(out)
        return
    if c.name == "criu":
        os.mkdir(out)
    helper.gap()  # a new measure from here
    try:
        dt, rss, text = run_rss(exe, c.argv(helper.pid, out), c.env)
        runs.freeze_s.append(helper.gap())
        if dir_bytes(out) < size // 64 and c.name != "zstd":
            raise RuntimeError(f"{c.name}: {dir_bytes(out)} bytes of images for {size}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    runs.seconds.append(dt)
    runs.rss_kib.append(rss)
    m = re.search(r"written in ([\d.]+) s", text)
    if m:
        runs.dump_s.append(float(m.group(1)))
    m = re.search(r"tree frozen ([\d.]+) s", text)
    if m:
        runs.reported_freeze_s.append(float(m.group(1)))


def block(exe: str, cs: list[Contestant], mib: int, kind: str, repeats: int, base: str
          ) -> dict[str, Runs]:
    """Every contestant against one helper, interleaved, repeats times."""
    size = mib << 20
    src = os.path.join(base, "cp-src")
    subprocess.run([exe, "write", str(size), src, "0"], check=True, stdout=DEVNULL)
    helper = Helper(exe, size, kind, base)
    live = [c for c in cs if not c.skip]
    res = {c.name: Runs() for c in live}
    try:
        for r in range(repeats):
            # Rotated: on this VM a buffered write is fast into memory just freed and slow
            # into memory the guest has returned to the host (free page reporting), so who
            # runs after whom matters; each contestant follows each other one in turn.
            for c in live[r % len(live):] + live[: r % len(live)]:
                time.sleep(SETTLE)
                one(c, exe, helper, size, base, src, res[c.name])
    finally:
        helper.stop()
        os.unlink(src)
    return res


def summarise(mib: int, kind: str, res: dict[str, Runs]) -> dict:
    size = mib << 20
    out: dict = {}
    crit = res.get("criu")
    for name, r in res.items():
        med, best = statistics.median(r.seconds), min(r.seconds)
        row = {"median_s": round(med, 3), "best_s": round(best, 3),
               "gbs": round(size / med / 1e9, 2), "best_gbs": round(size / best / 1e9, 2),
               "runs_s": [round(x, 3) for x in r.seconds]}
        if crit is not None:
            row["vs_criu"] = round(statistics.median(crit.seconds) / med, 2)
            row["vs_criu_best"] = round(min(crit.seconds) / best, 2)
        if r.rss_kib:
            row["peak_rss_mib"] = round(max(r.rss_kib) / 1024, 1)
        if r.freeze_s:
            row["freeze_s"] = round(statistics.median(r.freeze_s), 3)
        if r.reported_freeze_s:
            row["reported_freeze_s"] = round(statistics.median(r.reported_freeze_s), 3)
        if r.dump_s:
            row["in_dump_s"] = round(statistics.median(r.dump_s), 3)
        out[name] = row
    return {"mib": mib, "kind": kind, "repeats": len(next(iter(res.values())).seconds),
            "contestants": out}


def markdown(blocks: list[dict], skipped: dict[str, str]) -> str:
    lines = ["| size, memory | contestant | median s | best s | GB/s (median / best) | "
             "vs CRIU (median / best) | freeze s | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in blocks:
        for name, r in b["contestants"].items():
            vs = f"{r['vs_criu']} / {r['vs_criu_best']}" if "vs_criu" in r else ""
            fr = r.get("freeze_s", "")
            if "reported_freeze_s" in r:
                fr = f"{fr} (says {r['reported_freeze_s']})"
            lines.append(f"| {b['mib']} MiB {b['kind']} | {name} | {r['median_s']} | "
                         f"{r['best_s']} | {r['gbs']} / {r['best_gbs']} | {vs} | {fr} | "
                         f"{r.get('peak_rss_mib', '')} |")
    for name, why in skipped.items():
        lines.append(f"\n{name} skipped: {why}")
    return "\n".join(lines)


def run(mibs: list[int], repeats: int, kinds: list[str], directory: str, trees: list[str],
        criu: str) -> dict:
    base = tempfile.mkdtemp(prefix="dumper-bench-live-", dir=directory)
    try:
        exe = build_helper(base)
        cs = contestants(criu, trees)
        blocks = [summarise(mib, kind, block(exe, cs, mib, kind, repeats, base))
                  for mib in mibs for kind in kinds]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"blocks": blocks, "skipped": {c.name: c.skip for c in cs if c.skip}}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.live")
    ap.add_argument("--json", action="store_true", help="one JSON line (bench/__main__.py)")
    ap.add_argument("--mib", type=int, nargs="+", default=[1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", choices=("private", "shared"),
                    default=["private", "shared"])
    ap.add_argument("--dir", default="/var/tmp", help="a directory on the disk to measure")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="another tree to compare with (PYTHONPATH=DIR), repeatable")
    ap.add_argument("--criu", default=CRIU)
    a = ap.parse_args()
    res = run(a.mib, a.repeats, a.kinds, a.dir, a.tree, a.criu)
    if a.json:
        print(json.dumps(res))
        return
    print(markdown(res["blocks"], res["skipped"]))


if __name__ == "__main__":
    main()
