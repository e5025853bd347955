"""Live restore time on the real kernel, side by side in one run: `dumper restore DIR -d`
of dumper's set and `criu restore -D DIR --shell-job -d` of CRIU 4.2's own set of the same
program, for a program holding 1 GiB of written private memory and one holding 1 GiB of
written MAP_SHARED anonymous memory, against a plain read (cat > /dev/null) of dumper's image
files from the page cache and a floor (the helper itself reading dumper's pages image into
memory it has just mapped: what putting the bytes into a new process costs at best, the
page zeroing included); and the fixed cost: the same for a program holding nothing.
Each restore is timed as a process of its own (Python's start-up included for dumper, as a
user sees it, with dumper's bytecode compiled as an installed package has it); the restored
tree is killed and reaped between repeats (we are the child subreaper it is reparented to).
Repeats interleaved; medians and bests; ratios of dumper's time to CRIU's, the read's and
the floor's (below 1: faster).

    python -m bench.restore_live [--json] [--mib 1024] [--repeats 3] [--criu PATH]

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
#include <fcntl.h>
int main(int argc, char **argv) {
    if (argv[1][0] == 'r') { /* r FILE: read it into fresh anonymous memory */
        int fd = open(argv[2], O_RDONLY);
        size_t n = (size_t)lseek(fd, 0, SEEK_END), done = 0;
        char *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        while (done < n) {
            ssize_t r = pread(fd, m + done, n - done, done);
            if (r <= 0) return 1;
            done += r;
        }
        return 0;
    }
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


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
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
    times: dict[str, list[float]] = {"dumper": [], "criu": [], "read": [], "floor": []}
    pages = max(ours.glob("pages-*.img"), key=lambda p: p.stat().st_size, default=None)
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
        if mib and pages is not None:
            times["floor"].append(_timed([str(binary), "r", str(pages)]))
    shutil.rmtree(work)
    out = {k: {"median": round(statistics.median(v), 3), "best": round(min(v), 3)}
           for k, v in times.items() if v}
    for other in ("criu", "read", "floor"):
        if other in out:
            out[f"dumper/{other}"] = {
                k: round(out["dumper"][k] / out[other][k], 2) for k in ("median", "best")}
    return out


def markdown(res: dict) -> str:
    """The side-by-side table: seconds (median / best) and dumper's ratios."""
    cols = ["dumper", "criu", "read", "floor", "dumper/criu", "dumper/read", "dumper/floor"]
    lines = ["| program | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for prog, r in res.items():
        cells = [f"{r[c]['median']} / {r[c]['best']}" if c in r else "" for c in cols]
        lines.append(f"| {prog} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--criu", default="/var/cache/dumper/criu-4.2/criu")
    ap.add_argument("--json", action="store_true", help="one JSON line (bench/__main__.py)")
    a = ap.parse_args()
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    criu = Path(a.criu) if Path(a.criu).exists() else None
    base = Path(tempfile.mkdtemp(prefix="rst-bench-", dir="/var/tmp"))
    try:
        binary = base / "hold"
        (base / "hold.c").write_text(SRC)
        subprocess.run(["gcc", "-O1", "-o", str(binary), str(base / "hold.c")], check=True)
        # dumper's bytecode, as an installed package has it (not recompiled every run)
        subprocess.run([sys.executable, "-m", "compileall", "-q",
                        str(Path(__file__).parents[1] / "dumper")], check=True, env=ENV,
                       stdout=subprocess.DEVNULL)
        out = {f"{a.mib} MiB private": one_program(binary, a.mib, "p", a.repeats, criu, base),
               f"{a.mib} MiB shared": one_program(binary, a.mib, "s", a.repeats, criu, base),
               "empty (fixed cost)": one_program(binary, 0, "p", a.repeats, criu, base)}
        if a.json:
            print(json.dumps({"restore": out}))
        else:
            print(markdown(out))
    finally:
        _kill_all_children()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
