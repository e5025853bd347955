"""Start-up of the CLI and a small live dump, side by side with the bare interpreter and CRIU.

Interleaved rounds, each command a fresh process timed wall-clock: `python3 -c pass` (the
venv's interpreter, which runs dumper), `dumper --version`, `dumper --help`,
`dumper inspect --help` and `criu --version`; then a dump of a process holding 1 MiB of
written private memory (a C helper when a compiler is there, in its own session with stdio
on /dev/null) by `dumper dump --pid` (durable, and --no-fsync as CRIU writes) against
`criu dump -t PID --leave-running --shell-job`. Medians; the extra over the interpreter,
and dumper's dump time over CRIU's.

    python -m bench.startup --json [--rounds 15] [--dump-rounds 7]

The dumps need root and CRIU 4.2 in /var/cache/dumper/criu-4.2 (Debian's criu otherwise);
without them only the start-up figures are given. The helper is killed and every directory
removed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DUMPER = str(Path(sys.executable).with_name("dumper"))
CRIU = next((c for c in ("/var/cache/dumper/criu-4.2/criu", shutil.which("criu") or "")
             if c and os.path.exists(c)), None)

HELPER_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) { char *p = malloc(1 << 20); memset(p, 0x5a, 1 << 20); for (;;) pause(); }
"""
HELPER_PY = "import signal; b = bytearray(b'Z' * (1 << 20)); signal.pause()"


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def helper(tmp: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", HELPER_PY]
    if shutil.which("cc"):
        src, exe = os.path.join(tmp, "h.c"), os.path.join(tmp, "h")
        Path(src).write_text(HELPER_C)
        if subprocess.run(["cc", "-O1", "-o", exe, src], capture_output=True).returncode == 0:
            argv = [exe]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.3)  # memset done, in pause()
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dump-rounds", type=int, default=7)
    a = ap.parse_args()
    cmds = {"python_pass": [sys.executable, "-c", "pass"],
            "dumper_version": [DUMPER, "--version"], "dumper_help": [DUMPER, "--help"],
            "dumper_inspect_help": [DUMPER, "inspect", "--help"]}
    if CRIU:
        cmds["criu_version"] = [CRIU, "--version"]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(a.rounds):
        for k, argv in cmds.items():
            times[k].append(timed(argv))
    res: dict[str, object] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    bare = statistics.median(times["python_pass"])
    for k in ("dumper_version", "dumper_help", "dumper_inspect_help"):
        res[f"{k}_over_python_s"] = round(statistics.median(times[k]) - bare, 4)
    if os.geteuid() == 0 and CRIU:
        tmp = tempfile.mkdtemp(prefix="bench-startup-", dir="/var/tmp")
        p = helper(tmp)
        try:
            dumps: dict[str, list[float]] = {"dumper_dump_1mib": [],
                                             "dumper_dump_1mib_nofsync": [],
                                             "criu_dump_1mib": []}
            for i in range(a.dump_rounds):
                out = os.path.join(tmp, f"d{i}")
                dumps["dumper_dump_1mib"].append(timed(
                    [DUMPER, "dump", "--pid", str(p.pid), "-o", out, "-q"]))
                dumps["dumper_dump_1mib_nofsync"].append(timed(
                    [DUMPER, "dump", "--pid", str(p.pid), "-o", out + "n", "-q", "--no-fsync"]))
                cdir = os.path.join(tmp, f"c{i}")
                os.mkdir(cdir)
                dumps["criu_dump_1mib"].append(timed(
                    [CRIU, "dump", "-t", str(p.pid), "-D", cdir, "--leave-running",
                     "--shell-job", "-o", "dump.log"]))
                for d in (out, out + "n", cdir):
                    shutil.rmtree(d, ignore_errors=True)
            med = {k: statistics.median(v) for k, v in dumps.items()}
            res.update({k: round(v, 4) for k, v in med.items()})
            res["dump_over_criu"] = round(med["dumper_dump_1mib"] / med["criu_dump_1mib"], 2)
            res["dump_nofsync_over_criu"] = round(
                med["dumper_dump_1mib_nofsync"] / med["criu_dump_1mib"], 2)
        finally:
            p.kill()
            p.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res) if a.json else "\n".join(f"{k}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
