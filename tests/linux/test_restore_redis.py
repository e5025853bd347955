"""A real service through dumper's restore: redis-server (Debian's package) with its data,
listening on 127.0.0.1 and ::1 and on a unix socket, its epoll set, its pipes and its five
threads, dumped with no client connected, killed, restored by `dumper restore DIR -d`: it
answers on every listener with every key it had (a 1 MiB value, a list, a hash, a TTL),
takes a write, and shuts down cleanly (exit 0) when the test stops it by its pid.

redis_cycle.py does the cycle in a process of its own (a child subreaper: the restored
server becomes its child and is reaped there, whatever happens).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CRIU = Path(os.environ.get("DUMPER_CRIU", "/var/cache/dumper/criu-4.2/criu"))
REDIS = shutil.which("redis-server")

pytestmark = pytest.mark.skipif(REDIS is None, reason="needs redis-server (.ci/run installs it)")


def cycle(work: Path, how: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(HERE / "redis_cycle.py"), str(REDIS), str(work), how,
                        str(CRIU)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _passed(res: dict) -> None:
    assert res["ok"], (f"{res['stage']}: {json.dumps(res, indent=1)[:3000]}")
    assert res["threads"] == res["restored_threads"] == 5, res
    assert res["listeners"] == 3 and res["status"] == 0, res


def test_redis_dumped_by_dumper_restored_by_dumper(tmp_path):
    _passed(cycle(tmp_path, "dumper"))


def test_redis_dumped_by_criu_restored_by_dumper(tmp_path):
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    res = cycle(tmp_path, "criu")
    if res["stage"] == "dump":
        pytest.skip(f"CRIU 4.2 cannot dump redis here: {res['log']}"[:500])
    _passed(res)
