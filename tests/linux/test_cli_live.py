"""The CLI on live processes, as a CRIU user drives it: init, kernel threads and zombies
named, children left out with a warning, criu's -t/--leave-running/--shell-job, crit (3.17
and 4.2) exploring our sets, and `inspect x`/`inspect info` printing what crit 4.2 prints on
a set CRIU 4.2 made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

BIN = Path(sys.executable).with_name("dumper")
CMD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "dumper.cli"]
CRIT317 = "/usr/bin/crit"
CRIU42 = Path("/var/cache/dumper/criu-4.2")


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=300)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_sleeping(pid: int) -> None:
    """Until pid sits in its sleep (its stack no longer changes)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == "230":  # clock_nanosleep
                return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never went to sleep")


@contextmanager
def started(argv: list[str], children: int = 0) -> Iterator[list[int]]:
    """A process in its own session, stdio on /dev/null; yields [pid, *its children's pids];
    ends them all by pid and reaps what it started, whatever happens."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while len(kids) < children and time.monotonic() < deadline:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
            time.sleep(0.01)
        assert len(kids) >= children
        for pid in [p.pid, *kids] if argv[0] == "sleep" else kids:
            _wait_sleeping(pid)
        yield [p.pid, *kids]
    finally:
        for k in kids:
            with suppress(ProcessLookupError):
                os.kill(k, 9)
        p.kill()
        p.wait(10)


def test_init_kernel_threads_and_zombies_are_named(tmp_path):
    r = run("dump", "--pid", 1, "-o", tmp_path / "a")
    assert r.returncode == 2 and "pid 1 (" in r.stderr and ") is init" in r.stderr
    r = run("dump", "--pid", 2, "-o", tmp_path / "b")
    assert r.returncode == 2 and "pid 2 (kthreadd) is a kernel thread" in r.stderr
    p = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while _state(p.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        r = run("dump", "--pid", p.pid, "-o", tmp_path / "c")
        assert r.returncode == 2 and f"pid {p.pid} (true) is a zombie" in r.stderr, r.stderr
    finally:
        p.wait(10)
    assert not any((tmp_path / x).exists() for x in "abc")


def test_children_left_out_warn_and_criu_t_dumps_the_tree(tmp_path):
    with started(["sh", "-c", "sleep 100 & sleep 100 & wait"], children=2) as (sh, *kids):
        r = run("dump", "--pid", sh, "-o", tmp_path / "one", "--leave-running", "--shell-job")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("dumped 1 task, ")
        assert (f"dumper: warning: pid {sh} has 2 children ({kids[0]}, {kids[1]}) that this "
                "dump leaves out; pass --tree (or criu's -t PID) to dump the whole tree") \
            in r.stderr
        r = run("dump", "-t", sh, "-D", tmp_path / "tree", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["tasks"] == 3 and "leaves out" not in r.stderr and d["frozen_seconds"] > 0
        assert "tree frozen" in d["summary"]


def test_verify_of_a_live_set_needs_the_live_tree(tmp_path):
    with started(["sleep", "100"]) as (pid,):
        assert run("dump", "--pid", pid, "-o", tmp_path / "s").returncode == 0
        r = run("verify", tmp_path / "s")
        assert r.returncode == 2
        assert r.stderr == (f"dumper: error: {tmp_path / 's'}: a live set (dumped from pid {pid}) "
                            f"is verified against the live tree: pass --pid {pid} while it "
                            "still runs unchanged\n")
        r = run("verify", tmp_path / "s", "--pid", pid, "--json")
        d = json.loads(r.stdout)["verify"]
        assert r.returncode == (0 if d["ok"] else 1) and d["pages_checked"] > 0


def _crits() -> list[str]:
    out = [c for c in (CRIT317, str(CRIU42 / "crit")) if os.path.exists(c)]
    if not out:
        pytest.skip("no crit: Debian's criu package, or CRIU 4.2 built in "
                    f"{CRIU42} (build-criu.sh)")
    return out


@pytest.fixture(scope="module")
def our_sets(tmp_path_factory) -> list[Path]:
    """A live set of a small tree and a model set whose root task has no VMA."""
    base = tmp_path_factory.mktemp("ours")
    with started(["sh", "-c", "sleep 100 & wait"], children=1) as (sh, _):
        r = run("dump", "-t", sh, "-o", base / "live", "-q")
        assert r.returncode == 0, r.stderr
    r = run("dump", "--scenario", "1", "-o", base / "model", "-q")  # A unmapped everything
    assert r.returncode == 0, r.stderr
    return [base / "live", base / "model"]


@pytest.mark.parametrize("what", ["ps", "mems", "rss"])
def test_crit_explores_our_sets(our_sets, what):
    for crit in _crits():
        for s in our_sets:
            r = subprocess.run([crit, "x", str(s), what], capture_output=True, text=True)
            assert r.returncode == 0, (crit, s, r.stderr[-500:])
            ours = run("inspect", "x", s, what)
            if crit != CRIT317:  # 4.2 is what `inspect x` prints (3.17 spells a few differently)
                assert ours.stdout == r.stdout, (s, what)
            if what == "mems" and s.name == "live":
                assert "\texe                                     /usr/bin/" in r.stdout
                assert "unknown path" not in r.stdout


def test_crit_fds_on_our_sets_needs_the_fd_images(our_sets):
    """Until dumper writes ids/fdinfo/fs images (issue 11), crit has nothing to show and
    `inspect x fds` says which image is missing; once they exist both must agree."""
    for s in our_sets:
        ours = run("inspect", "x", s, "fds")
        if not list(s.glob("ids-*.img")):
            assert ours.returncode == 2, ours.stderr
            assert "/ids-" in ours.stderr and ".img: No such file" in ours.stderr, ours.stderr
            continue
        for crit in _crits():
            r = subprocess.run([crit, "x", str(s), "fds"], capture_output=True, text=True)
            assert r.returncode == 0 and r.stdout == ours.stdout, (crit, r.stderr[-300:])


@pytest.fixture(scope="module")
def criu_set(tmp_path_factory) -> Path:
    """A set CRIU 4.2 made of a sleeping process (criu dump -t PID --leave-running)."""
    if not (CRIU42 / "criu").exists():
        pytest.skip(f"CRIU 4.2 is not built in {CRIU42} (bash vendor/build-criu.sh)")
    d = tmp_path_factory.mktemp("criu42")
    with started(["sleep", "100"]) as (pid,):
        r = subprocess.run([str(CRIU42 / "criu"), "dump", "-t", str(pid), "-D", str(d),
                            "--leave-running", "--shell-job", "-o", "dump.log"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (d / "dump.log").read_text()[-2000:]
    return d


@pytest.mark.parametrize("what", ["ps", "fds", "mems", "rss"])
def test_inspect_x_prints_what_crit_42_prints(criu_set, what):
    crit = subprocess.run([str(CRIU42 / "crit"), "x", str(criu_set), what],
                          capture_output=True, text=True)
    assert crit.returncode == 0, crit.stderr
    ours = run("inspect", "x", criu_set, what)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == crit.stdout
    if what == "fds":
        assert "\t      0: /dev/null\n" in ours.stdout and "\t    cwd: " in ours.stdout


def test_inspect_info_of_one_image_is_crit_info(criu_set, our_sets):
    crit = str(CRIU42 / "crit")
    if not os.path.exists(crit):
        pytest.skip("crit 4.2 missing")
    names = set()
    for d in (criu_set, *our_sets):
        for img in sorted(d.glob("*.img")):
            want = subprocess.run([crit, "info", str(img)], capture_output=True, text=True)
            ours_only = img.name.startswith(("pages-", "dumper", "objects", "truth-", "cow-",
                                             "guards-"))
            if ours_only:  # raw page data, and dumper's own images: unknown to crit
                assert want.returncode != 0, img
                continue
            assert want.returncode == 0, (img, want.stderr[-300:])
            ours = run("inspect", "info", img, "--json")
            assert ours.returncode == 0, ours.stderr
            assert json.loads(ours.stdout) == json.loads(want.stdout), img
            names.add(json.loads(want.stdout)["magic"])
    assert {"PSTREE", "MM", "PAGEMAP", "FDINFO", "FS", "FILES"} <= names
    r = run("inspect", "info", criu_set / "fdinfo-2.img")
    assert r.stdout.startswith(f"{criu_set / 'fdinfo-2.img'}: FDINFO image, ")


def test_a_live_dump_on_a_terminal_shows_progress_and_the_frozen_time(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_cli_habits import on_tty

    with started(["sleep", "100"]) as (pid,):
        rc, out, tty = on_tty("dump", "--pid", pid, "-o", tmp_path / "s")
    assert rc == 0 and "tree frozen " in out
    assert "freezing and collecting" in tty and "writing pages" in tty and "100%" in tty
