"""Run every benchmark side by side in one process and print a Markdown report.

Results go in BENCH.md with the date, the machine and the command (`make bench`). Each
benchmark runs in a fresh subprocess so peak RSS is its own; timings are medians of repeats.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BENCHES = [
    ("model_scale", "bench.model_scale", 3),
    ("explore", "bench.explore", 3),
    ("pipeline", "bench.pipeline", 1),
    ("live", "bench.live", 1),  # real processes: needs root
    ("startup", "bench.startup", 1),  # interleaved rounds inside; dumps need root and CRIU
    ("restore_live", "bench.restore_live", 1),  # interleaved repeats inside; root, CRIU
]


def run_one(module: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", module, "--json"], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## {now} — `make bench`\n")
    print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}\n")
    for name, module, repeats in BENCHES:
        runs = [run_one(module) for _ in range(repeats)]
        if "blocks" in runs[0]:  # bench.live: its own table, contestants side by side
            from bench.live import markdown

            print(f"### {name}\n")
            print(markdown(runs[0]["blocks"], runs[0]["skipped"]), end="\n\n")
            continue
        if "restore" in runs[0]:  # bench.restore_live: seconds, median / best, and ratios
            from bench.restore_live import markdown as restore_table

            print(f"### {name}\n")
            print(restore_table(runs[0]["restore"]), end="\n\n")
            continue
        print(f"### {name} ({repeats} runs; median, [min–max])\n")
        print("| metric | median | range |")
        print("| --- | --- | --- |")
        for key in runs[0]:
            vals = [r[key] for r in runs]
            if all(isinstance(v, int | float) for v in vals):
                print(f"| {key} | {statistics.median(vals)} | {min(vals)}–{max(vals)} |")
            else:
                print(f"| {key} | {vals[0]} | |")
        print()


if __name__ == "__main__":
    main()
