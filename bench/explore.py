"""Explore throughput: random programs (depth 12) replayed under every profile and strategy
(24 dumps, restores and verifications each), and the exhaustive mode's program count."""

from __future__ import annotations

import json
import sys

from dumper.model.kernels import PROFILES
from dumper.scenarios import explore as ex
from dumper.select import STRATEGIES


def main() -> dict:
    count = int(sys.argv[sys.argv.index("--count") + 1]) if "--count" in sys.argv else 40
    profiles = list(PROFILES.values())
    r = ex.explore(ex.random_programs(1000, count, 12), profiles, list(STRATEGIES))
    e = ex.explore(ex.exhaustive_programs(2), profiles, ["auto", "lseek"], do_shrink=False)
    assert not r.violations and not e.violations
    return {
        "random_programs": r.programs, "random_runs": r.runs,
        "random_programs_per_s": round(r.programs / r.seconds, 2),
        "random_runs_per_s": round(r.runs / r.seconds, 1),
        "losing_strategy_profile_pairs": len(r.findings),
        "exhaustive_depth2_programs": e.programs,
        "exhaustive_programs_per_s": round(e.programs / e.seconds, 2),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
