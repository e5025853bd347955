"""Live verify against the live dump of the same tree, side by side (issue 10 item 8): a
task with 30,000 VMAs, and a parent and child sharing 1 GiB of private memory copy-on-write.
Each case: `dumper dump --pid ROOT --tree --leave-stopped --no-fsync`, then `dumper verify
DIR --pid ROOT` on the still-stopped tree, both as the CLI runs them (subprocesses; times
include start-up), repeats interleaved; medians and the verify/dump ratio (the aim: at most 2).

    python -m bench.verify_scale --json [--vmas 30000] [--mib 1024] [--repeats 3]

Needs root. Every helper is killed and every set removed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# vmas: n one-page private mappings, each written, every other one PROT_READ so that no two
# neighbours merge into one VMA. cow: size bytes of private memory written, then a fork.
HELPER = r"""
import ctypes, mmap, os, sys
kind, n = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
if kind == "vmas":
    base = libc.mmap(None, n * 4096, 3, 0x22, -1, 0)
    for i in range(n):
        ctypes.c_uint64.from_address(base + i * 4096).value = i + 1
    for i in range(0, n, 2):
        libc.mprotect(base + i * 4096, 4096, 1)
else:
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"\x5a" * n)
    if os.fork() == 0:
        sys.stdin.read(1)
        os._exit(0)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read(1)
"""


def cli(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dumper.cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(c) for c in f.read().split()]
    return out


def run(vmas: int, mib: int, repeats: int, workdir: str) -> dict:
    cases = {"vmas": vmas, "cow": mib << 20}
    helpers = {}
    times: dict[str, list[float]] = {f"{c}_{w}": [] for c in cases for w in ("dump", "verify")}
    top = tempfile.mkdtemp(prefix="dumper-bench-verify-", dir=workdir)
    try:
        for case, n in cases.items():
            p = subprocess.Popen([sys.executable, "-c", HELPER, case, str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            helpers[case] = p
            assert p.stdout.readline().strip() == "ready"
        for r in range(repeats):
            for case, p in helpers.items():
                out = os.path.join(top, f"{case}-{r}")
                times[f"{case}_dump"].append(cli("dump", "--pid", str(p.pid), "--tree",
                                                 "--leave-stopped", "--no-fsync", "-q",
                                                 "-o", out))
                try:
                    times[f"{case}_verify"].append(cli("verify", out, "--pid", str(p.pid)))
                finally:
                    for pid in tree(p.pid):
                        os.kill(pid, signal.SIGCONT)
                shutil.rmtree(out)
    finally:
        for p in helpers.values():
            for pid in reversed(tree(p.pid)) if p.poll() is None else ():
                os.kill(pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(top, ignore_errors=True)
    res: dict = {k: statistics.median(v) for k, v in times.items()}
    for case in cases:
        res[f"{case}_ratio"] = res[f"{case}_verify"] / res[f"{case}_dump"]
    res.update(vmas=vmas, cow_mib=mib, repeats=repeats)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmas", type=int, default=30000)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run(a.vmas, a.mib, a.repeats, a.dir)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
