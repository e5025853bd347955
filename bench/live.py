"""Live dump throughput on the real kernel, side by side in one run: dump.dump(LinuxHost(),
pid, out, "auto") (raw pages; durable: every file fsynced, as `dumper dump --pid` does) of a
helper holding 1 GiB of written private memory and of one holding 1 GiB of written
MAP_SHARED memory, against copying the same number of bytes into a file on the same disk:
one write(2) of a warm 1 GiB buffer, as CRIU's figure for a plain copy was taken
(../shared/facts/criu.md), and the same followed by fsync, which is what a durable dump has
to match. Both dumps are also timed with --no-fsync (buffered writes left to the page cache,
as CRIU writes), against the plain write(). Repeats interleaved; medians. GB/s is 10^9 bytes
per second, as CRIU's figures (1.8-2.2 GB/s here, without any fsync) are; bests too, as
criu.md gives CRIU's and the plain write's.

    python -m bench.live --json [--mib 1024] [--repeats 5] [--dir /var/tmp] [--profile]

Also the peak RSS of `dumper dump --pid` run as a process of its own, and the time of
`verify --pid` (verify_live), for each helper.
Needs root (ptrace, map_files). Every helper is killed and every file removed on the way
out, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from dumper.dump import dump
from dumper.images.reader import ImageSet
from dumper.linux import LinuxHost
from dumper.verify import verify_live

# The helper: map, write every page (a distinct first word per page, the rest a pattern),
# say where, then sleep in read(2) until told to go (or until its stdin closes).
HELPER = r"""
import ctypes, mmap, sys
size, shared = int(sys.argv[1]), sys.argv[2] == "shared"
flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
m = mmap.mmap(-1, size, flags=flags | mmap.MAP_ANONYMOUS)
m.write(b"\x5a" * size)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
pages = (ctypes.c_uint64 * (size // 8)).from_address(addr)
for i in range(0, size // 8, 512):
    pages[i] = i
del pages
sys.stdout.write(f"{addr}\n")
sys.stdout.flush()
sys.stdin.read(1)
"""


KINDS = ("private", "shared", "private_nofsync", "shared_nofsync", "copy", "copy_fsync")


def start_helper(size: int, kind: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", HELPER, str(size), kind],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline() if p.stdout else ""
    if not line.strip().isdigit():
        p.kill()
        p.wait()
        raise RuntimeError(f"{kind} helper did not start (exit {p.poll()})")
    return p


def stop_helper(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


def time_dump(host: LinuxHost, pid: int, base: str, sync: bool = True) -> tuple[float, int]:
    out = os.path.join(base, f"set-{pid}")
    t = time.perf_counter()
    s = dump(host, pid, out, "auto", tree=False, truth=False, leave_out=frozenset({"any"}),
             sync=sync)
    dt = time.perf_counter() - t
    shutil.rmtree(out)
    return dt, s.private_pages + s.shared_pages


def time_verify(host: LinuxHost, pid: int, base: str) -> float:
    """`dumper verify DIR --pid` of a fresh dump, in-process: the set's pages against the
    live ones (digests on both sides), the helper frozen meanwhile."""
    out = os.path.join(base, f"verify-{pid}")
    dump(host, pid, out, "auto", tree=False, truth=False, leave_out=frozenset({"any"}))
    try:
        with ImageSet.open(out) as images, host.freeze([pid]):
            t = time.perf_counter()
            report = verify_live(images, host)
            dt = time.perf_counter() - t
        if not report.ok:
            raise RuntimeError(f"verify of the helper {pid} found losses: {report.line()}")
    finally:
        shutil.rmtree(out)
    return dt


def time_copy(buf: mmap.mmap, base: str, sync: bool) -> float:
    path = os.path.join(base, "copy.img")
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(buf)
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    os.unlink(path)
    return dt


# Runs the command line in-process, then reports VmHWM: the peak RSS of this exec'd image
# alone (wait4's ru_maxrss would count the benchmark's own memory, copied by fork).
_RSS_PROBE = r"""
import sys
from dumper.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
status = open("/proc/self/status").read()
hwm = next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM {hwm}\n")
sys.exit(code)
"""


def cli_dump_rss(pid: int, base: str) -> int:
    """Peak RSS (KiB) of `dumper dump --pid PID` run as a process of its own: the
    interpreter, the pooled buffers and everything else."""
    out = os.path.join(base, f"cli-{pid}")
    r = subprocess.run([sys.executable, "-c", _RSS_PROBE, "dump", "--pid", str(pid),
                        "--leave-out", "any", "-o", out], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    shutil.rmtree(out, ignore_errors=True)
    hwm = [line.split()[1] for line in r.stderr.splitlines() if line.startswith("VmHWM ")]
    if r.returncode != 0 or not hwm:
        raise RuntimeError(f"dumper dump --pid {pid} exited {r.returncode}: {r.stderr[-300:]}")
    return int(hwm[0])


def gbs(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 3)


def run(mib: int, repeats: int, directory: str, profile: bool = False) -> dict:
    size = mib << 20
    base = tempfile.mkdtemp(prefix="dumper-bench-live-", dir=directory)
    helpers: list[subprocess.Popen[str]] = []
    try:
        helpers = [start_helper(size, "private"), start_helper(size, "shared")]
        buf = mmap.mmap(-1, size)
        buf.write(b"\x5a" * size)  # warm, like the helpers' memory
        host = LinuxHost(digest_while_reading=False)
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        pages: dict[str, int] = {}
        for _ in range(repeats):
            for kind, h in zip(("private", "shared"), helpers, strict=True):
                dt, n = time_dump(host, h.pid, base)
                times[kind].append(dt)
                pages[kind] = n
            times["copy_fsync"].append(time_copy(buf, base, True))
            for kind, h in zip(("private", "shared"), helpers, strict=True):
                times[f"{kind}_nofsync"].append(time_dump(host, h.pid, base, False)[0])
            times["copy"].append(time_copy(buf, base, False))
        rss = {kind: cli_dump_rss(h.pid, base)
               for kind, h in zip(("private", "shared"), helpers, strict=True)}
        verify_s = {kind: time_verify(host, h.pid, base)
                    for kind, h in zip(("private", "shared"), helpers, strict=True)}
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(time_dump, host, helpers[0].pid, base)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
        buf.close()
    finally:
        for h in helpers:
            stop_helper(h)
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    res: dict = {"mib": mib, "repeats": repeats,
                 "private_pages": pages["private"], "shared_pages": pages["shared"]}
    for k in KINDS:
        res[f"{k}_s"] = round(med[k], 3)
        res[f"{k}_gbs"] = gbs(size, med[k])
    best = {k: min(v) for k, v in times.items()}  # as criu.md quotes CRIU: median and best
    for k in KINDS:
        res[f"{k}_best_s"] = round(best[k], 3)
    for k in ("private", "shared"):  # each against the copy that promises as much
        res[f"{k}_vs_copy_fsync"] = round(med["copy_fsync"] / med[k], 3)
        res[f"{k}_nofsync_vs_copy"] = round(med["copy"] / med[f"{k}_nofsync"], 3)
        res[f"{k}_nofsync_vs_copy_best"] = round(best["copy"] / best[f"{k}_nofsync"], 3)
    for k in ("private", "shared"):
        res[f"{k}_cli_peak_rss_mib"] = round(rss[k] / 1024, 1)
        res[f"{k}_verify_live_s"] = round(verify_s[k], 3)
    for k in KINDS:
        res[f"{k}_runs_s"] = [round(x, 3) for x in times[k]]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.live")
    ap.add_argument("--json", action="store_true", help="one JSON line (bench/__main__.py)")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp", help="a directory on the disk to measure")
    ap.add_argument("--profile", action="store_true", help="cProfile one private dump")
    a = ap.parse_args()
    res = run(a.mib, a.repeats, a.dir, a.profile)
    if a.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        print(f"{k:18s} {v}")


if __name__ == "__main__":
    main()
