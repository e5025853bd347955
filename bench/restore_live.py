"""Live restore time on the real kernel, side by side in one run: `dumper restore DIR -d`
of dumper's set and `criu restore -D DIR --shell-job -d` of CRIU 4.2's own set of the same
program, for a program holding 1 GiB of written private memory and one holding 1 GiB of
written MAP_SHARED anonymous memory, against a plain read (cat > /dev/null) of dumper's image
files from the page cache; and the fixed cost: the same for a program holding nothing.
Each restore is timed as a process of its own (Python's start-up included for dumper, as a
user sees it); the restored tree is killed and reaped between repeats (we are the child
subreaper it is reparented to). Repeats interleaved; medians and bests.

    python -m bench.restore_live [--mib 1024] [--repeats 3] [--criu PATH]

Needs root, gcc and CRIU 4.2 (its side is skipped without it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t sz = (size_t)atol(argv[1]) << 20;
    int shared = argv[2][0] == 's';
    char *m = sz ? mmap(NULL, sz, PROT_READ | PROT_WRITE,
                        (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0) : NULL;
    for (size_t i = 0; i < sz; i += 4096) memset(m + i, (int)(i >> 12) | 1, 4096);
    printf("READY\n"); fflush(stdout);
    for (;;) pause();
}
"""


def _kill_all_children() -> None:
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
            for pid in map(int, f.read().split()):
                os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _start(binary: Path, mib: int, kind: str, work: Path) -> int:
    with open(work / "out.txt", "w") as out:
        p = subprocess.Popen([str(binary), str(mib), kind], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=out, start_new_session=True, cwd=work)
    while "READY" not in (work / "out.txt").read_text():
        time.sleep(0.05)
    return p.pid


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr[-500:]}")
    return took


def one_program(binary: Path, mib: int, kind: str, repeats: int, criu: Path | None,
                base: Path) -> dict:
    work = Path(tempfile.mkdtemp(dir=base))
    ours, theirs = work / "dumper", work / "criu"
    pid = _start(binary, mib, kind, work)
    _timed([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid), "--tree", "--no-fsync",
            "--leave-out", "any", "-q", "-o", str(ours)])
    if criu is not None:
        theirs.mkdir()
        _timed([str(criu), "dump", "-t", str(pid), "-D", str(theirs), "--shell-job",
                "--leave-running"])
    _kill_all_children()
    times: dict[str, list[float]] = {"dumper": [], "criu": [], "read": []}
    for _ in range(repeats):
        times["dumper"].append(_timed([sys.executable, "-m", "dumper.cli", "restore", str(ours),
                                       "-d"]))
        _kill_all_children()
        if criu is not None:
            times["criu"].append(_timed([str(criu), "restore", "-D", str(theirs), "--shell-job",
                                         "-d"]))
            _kill_all_children()
        files = [str(p) for p in ours.iterdir()]
        times["read"].append(_timed(["sh", "-c", 'cat "$@" > /dev/null', "cat", *files]))
    shutil.rmtree(work)
    return {k: {"median": statistics.median(v), "best": min(v)} for k, v in times.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--criu", default="/var/cache/dumper/criu-4.2/criu")
    a = ap.parse_args()
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    criu = Path(a.criu) if Path(a.criu).exists() else None
    base = Path(tempfile.mkdtemp(prefix="rst-bench-", dir="/var/tmp"))
    try:
        binary = base / "hold"
        (base / "hold.c").write_text(SRC)
        subprocess.run(["gcc", "-O1", "-o", str(binary), str(base / "hold.c")], check=True)
        out = {f"{a.mib} MiB private": one_program(binary, a.mib, "p", a.repeats, criu, base),
               f"{a.mib} MiB shared": one_program(binary, a.mib, "s", a.repeats, criu, base),
               "empty (fixed cost)": one_program(binary, 0, "p", a.repeats, criu, base)}
        print(json.dumps(out, indent=1))
    finally:
        _kill_all_children()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
