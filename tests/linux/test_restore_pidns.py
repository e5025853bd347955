"""`dumper restore --pidns`: the tree comes back in a fresh pid namespace with its dumped
pids inside it, though the host's pids are taken (rst_cycle --hold-pids takes every one of
them with a sleeper first), and runs on: each program checks itself (PASS) after SIGUSR1.

Inside, pid 1 is dumper's init (comm dumper-init), the root is its child; NSpid of every
restored thread shows the dumped id inside and another one on the host, and the /proc the
tree sees (through /proc/HOSTPID/root) lists init and the dumped pids, not the host's.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from .rst_build import build
from .test_linux_restore import CRIU, _passed, _restore, cycle, sleeper_dumped

PROGRAMS = {name: (name,) for name in ("tree_zombie", "threads_fp", "pipe_read", "shared_mem",
                                       "sleep_sig", "rst_status")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cprogs"), PROGRAMS)


def _inside_is_dumped(res: dict) -> None:
    """Every restored thread's id inside the namespace is a dumped one (held on the host by
    a sleeper, so its host id differs), and the root is the dumped root."""
    held = set(res["held"])
    inner = {host: ids[-1] for host, ids in res["nspid"].items()}
    assert inner, res
    for host, ids in res["nspid"].items():
        assert len(ids) >= 2 and ids[-1] in held and int(host) != ids[-1], res["nspid"]
    assert res["root"] in inner.values(), res
    assert res["init_comm"] == "dumper-init", res
    # the tree's /proc is its namespace's (init and the dumped pids), ours is still ours
    assert set(res["proc_inside"]) <= {1, *inner.values()}, res
    assert {1, res["root"]} <= set(res["proc_inside"]), res
    assert os.readlink("/proc/self") == str(os.getpid())


@pytest.mark.parametrize("name", ["tree_zombie", "threads_fp", "pipe_read", "shared_mem"])
def test_pidns_restores_with_the_dumped_pids_inside(name, built, tmp_path):
    res = cycle(built / name, tmp_path, "dumper", "--pidns", "--hold-pids")
    _passed(res)
    _inside_is_dumped(res)
    if name == "threads_fp":  # every thread, not only the leaders, has its dumped tid
        assert sorted(ids[-1] for ids in res["nspid"].values()) == sorted(res["held"])


@pytest.mark.parametrize("name", ["tree_zombie", "threads_fp"])
def test_pidns_restores_a_criu_dump(name, built, tmp_path):
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    res = cycle(built / name, tmp_path, "criu", "--shell-job", "--pidns", "--hold-pids")
    _passed(res)
    _inside_is_dumped(res)


def test_taken_host_pids_stop_a_restore_without_pidns(built, tmp_path):
    res = cycle(built / "sleep_sig", tmp_path, "dumper", "--hold-pids")
    assert res.get("rc") == 2, res
    assert res["log"].strip().splitlines() == [
        f"dumper: error: pid {res['root']} is taken (by sleep): the restored task needs it; "
        "nothing was created"], res["log"]


def test_pidns_without_detach_passes_the_root_status_through_init(built, tmp_path):
    """The root kills itself with SIGTERM: init exits 128+15, and so does the command."""
    res = cycle(built / "rst_status", tmp_path, "dumper", "--pidns", "--no-detach")
    _passed(res)
    assert res["rc"] == 128 + signal.SIGTERM, res


def test_pidns_init_forwards_signals_to_the_root(built, tmp_path):
    _passed(cycle(built / "sleep_sig", tmp_path, "dumper", "--pidns", "--signal-init"))


def test_pidns_leave_stopped(built, tmp_path):
    """--leave-stopped in a namespace: every task stopped, and `dumper verify DIR --pid
    HOSTPID` maps the tree's pids through NSpid and finds nothing lost."""
    res = cycle(built / "pipe_read", tmp_path, "dumper", "--pidns", "--leave-stopped")
    _passed(res)
    assert set(res["stopped"].values()) == {"T"}, res["stopped"]
    assert res["verify"][0] == 0 and "nothing lost" in res["verify"][1], res["verify"]


def test_pidns_verify_in_one_command(built, tmp_path):
    res = cycle(built / "shared_mem", tmp_path, "dumper", "--pidns", "--verify")
    _passed(res)
    assert "nothing lost" in res["log"], res["log"]


def _in_child_ns(pid: int) -> list[int]:
    """Host pids of tasks that are pid in a pid namespace below ours."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/status") as f:
                    ids = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(ids) > 1 and int(ids[-1]) == pid:
                out.append(int(d))
    return out


def test_pidns_failure_is_atomic(tmp_path):
    """A mapped file changed since the dump: one line naming it, exit 2, and neither the
    namespace's init nor the root stub is left (the dumped task still runs: its host pid
    is no conflict)."""
    exe, images, p = sleeper_dumped(tmp_path)
    try:
        bigger = tmp_path / "bigger"  # the running copy's file cannot be written: replaced
        shutil.copy(exe, bigger)
        with open(bigger, "ab") as f:
            f.write(b"\0" * 4096)
        os.replace(bigger, exe)
        r = _restore(images, "-d", "--pidns")
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(exe) in r.stderr and "changed since the dump" in r.stderr, r.stderr
        assert _in_child_ns(p.pid) == [], "the failed restore left its stub behind"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
