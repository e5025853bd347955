"""dumper restores on Linux what it dumped (and what CRIU 4.2 dumped), and the programs run
on as if nothing had happened.

Each self-checking program (the C programs of tests/linux/cprogs, built here with gcc, and
a Python one in rst_progs) sets up its state, prints READY, waits for SIGUSR1 and then
checks everything itself. rst_cycle.py (its own process, a child subreaper) dumps the tree,
kills and reaps it, runs `dumper restore DIR -d`, signals the restored root and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .rst_build import build

HERE = Path(__file__).parent
CPROGS = HERE / "cprogs"
CYCLE = HERE / "rst_cycle.py"
PYPROG = HERE / "rst_progs" / "py_check.py"
CRIU = Path(os.environ.get("DUMPER_CRIU", "/var/cache/dumper/criu-4.2/criu"))
ROOT = HERE.parents[1]

PROGRAMS = {
    "mem_fp": "heap, anonymous, PROT_NONE with data, written private file pages; ymm regs",
    "threads_fp": "three threads (dynamically linked), each with its own ymm values",
    "tree_zombie": "root -> A -> B, and a zombie child with exit code 7",
    "pipe_read": "a child blocked in read on a pipe from its parent; buffered pipe data",
    "sleep_sig": "nanosleep (-ERESTART_RESTARTBLOCK: EINTR), SA_SIGINFO handler, SIG_IGN, "
                 "sigmask; a file open at an offset",
    "cow_fork": "private memory shared copy-on-write after fork",
    "shared_mem": "MAP_SHARED anonymous the parent unmapped; a memfd mapped by two tasks",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("cprogs"), {name: (name,) for name in PROGRAMS})


def cycle(program: Path, work: Path, how: str, *args: str) -> dict:
    """One dump/kill/restore/signal cycle by rst_cycle.py; its JSON report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(CYCLE), str(CRIU), str(program), str(work), how,
                        *args], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _passed(res: dict) -> None:
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_dumper_restores_its_own_dump(name, built, tmp_path):
    _passed(cycle(built / name, tmp_path, "dumper"))


# This issue's own programs (dumper's dump only: CRIU refuses SysV shm in the host IPC
# namespace, restore.md §8.4, and reads no guards-PID.img).
OWN = {
    "rst_sysv": "a SysV segment attached by parent and child, holes in it; same id after "
                "restore (kernel/shm_next_id), data and sharing kept",
    "rst_pending": "signals blocked and queued at the dump (one standard, two real-time "
                   "with values) are queued again, in order",
    "rst_holes_guard": "a memfd and a MAP_SHARED anonymous object report the same "
                       "SEEK_DATA extents after restore; a guard region still faults",
}


@pytest.mark.parametrize("name", sorted(OWN))
def test_own_programs(name, tmp_path):
    _passed(cycle(build(tmp_path, {name: (name,)}) / name, tmp_path, "dumper"))


def test_python_interpreter_runs_on(tmp_path):
    res = cycle(PYPROG, tmp_path, "dumper")
    _passed(res)


def test_leave_stopped_then_verify_finds_nothing_lost(built, tmp_path):
    """--leave-stopped: `dumper verify DIR --pid ROOT` on the stopped tree (every private
    and object page), and every page a child shares with its parent in the images shares
    its parent's PFN again, as fork made it."""
    res = cycle(built / "cow_fork", tmp_path / "cow", "dumper", "--leave-stopped",
                "--check-cow")
    _passed(res)
    rc, text = res["verify"]
    assert rc == 0 and "nothing lost" in text, text
    total, same = res["cow"]
    assert total > 2000 and same == total, res["cow"]


def test_leave_stopped_then_verify_shared_objects(built, tmp_path):
    """The same for MAP_SHARED anonymous memory and a memfd (whose descriptor the program
    keeps open)."""
    res = cycle(built / "shared_mem", tmp_path / "shm", "dumper", "--leave-stopped")
    _passed(res)
    assert res["verify"][0] == 0 and "nothing lost" in res["verify"][1], res["verify"]


def test_restore_verify_in_one_command(built, tmp_path):
    res = cycle(built / "mem_fp", tmp_path, "dumper", "--verify")
    _passed(res)
    assert "nothing lost" in res["log"], res["log"]


def test_pidfile_holds_the_root(built, tmp_path):
    pidfile = tmp_path / "root.pid"
    res = cycle(built / "cow_fork", tmp_path / "w", "dumper", "--pidfile", str(pidfile))
    _passed(res)
    assert pidfile.read_text() == f"{res['root']}\n"


def test_without_detach_waits_and_passes_the_exit_status(built, tmp_path):
    res = cycle(built / "pipe_read", tmp_path, "dumper", "--no-detach")
    _passed(res)
    assert res["rc"] == 0, res


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_dumper_restores_criu_dump(name, built, tmp_path):
    """The same programs dumped by CRIU 4.2 itself (its images, its conventions)."""
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU} (.ci/run builds it with "
                    "../shared/vendor/build-criu.sh)")
    _passed(cycle(built / name, tmp_path, "criu", "--shell-job"))


def test_restore_verify_of_a_criu_set(built, tmp_path):
    """restore --verify of CRIU 4.2's own set (its [vsyscall] VMA is no one's data)."""
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")
    res = cycle(built / "cow_fork", tmp_path, "criu", "--shell-job", "--verify")
    _passed(res)
    assert "nothing lost" in res["log"], res["log"]


def _dump(pid: int, images: Path) -> None:
    """`dumper dump --pid PID --tree` of a test's own tree (pytest's capture files are
    deleted files: left out), which must succeed."""
    r = subprocess.run([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid),
                        "--tree", "--leave-out", "any", "-o", str(images)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def _restore(images: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper.cli", "restore", str(images), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_taken_pid_is_one_line_before_anything_is_created(tmp_path):
    _, images, p = sleeper_dumped(tmp_path)
    try:
        r = _restore(images, "-d")  # the dumped task still runs: its pid is taken
        assert r.returncode == 2
        assert r.stderr.strip() == (f"dumper: error: pid {p.pid} is taken (by sleeper): the "
                                    "restored task needs it; nothing was created"), r.stderr
    finally:
        p.kill()
        p.wait()


def _new_build_id(exe: Path) -> None:
    """Change one byte of exe's GNU build-id note in place (same size, same code)."""
    import struct

    from dumper.linux import buildid

    words = buildid.build_id(str(exe))
    assert words, f"{exe} has no build-id"
    raw = struct.pack(f"<{len(words)}I", *words).rstrip(b"\0")
    data = bytearray(exe.read_bytes())
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0
    data[at] ^= 0xFF
    exe.write_bytes(bytes(data))


def sleeper_dumped(tmp_path: Path) -> tuple[Path, Path, subprocess.Popen]:
    """A copy of /bin/sleep running in a session of its own, dumped: (its file, the
    images, the process, still running: the caller ends it)."""
    exe = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        time.sleep(0.2)
        images = tmp_path / "images"
        _dump(p.pid, images)
    except BaseException:
        p.kill()
        p.wait()
        raise
    return exe, images, p


@pytest.mark.parametrize("change", ["grown", "build-id"])
def test_a_changed_file_fails_atomically_naming_it(tmp_path, change):
    """A mapped file that changed since the dump stops the restore: one line naming it,
    exit 2, and the stub that was created is killed (its pid is free again). Changed: 4 KiB
    longer, or the same size with another ELF build-id (CRIU's build-id validation)."""
    exe, images, p = sleeper_dumped(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if change == "grown":
        with open(exe, "ab") as f:
            f.write(b"\0" * 4096)
    else:
        _new_build_id(exe)
    r = _restore(images, "-d")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(exe) in r.stderr and "changed since the dump" in r.stderr, r.stderr
    assert ("build-id" in r.stderr) == (change == "build-id"), r.stderr
    assert not os.path.exists(f"/proc/{p.pid}"), "the failed restore left its stub behind"


LOGGER = """
import signal, sys, time
log = open(sys.argv[1], "a")
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
log.write("start\\n"); log.flush()
while not got:
    time.sleep(0.05)
log.write("after the restore\\n"); log.flush()
"""


def test_an_append_only_log_that_grew_since_the_dump_is_no_change(tmp_path):
    """A log open O_WRONLY|O_APPEND grows while the dumped service runs on: its size is not
    recorded nor checked (CRIU's should_check_size), and the restored task appends on."""
    log = tmp_path / "log"
    p = subprocess.Popen([sys.executable, "-c", LOGGER, str(log)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text() == "start\n"):
            assert time.monotonic() < deadline, "the logger never started"
            time.sleep(0.02)
        images = tmp_path / "images"
        _dump(p.pid, images)
        with open(log, "a") as f:
            f.write("written by another process after the dump\n")
    finally:
        p.kill()
        p.wait()
    r = _restore(images, "-d")
    assert r.returncode == 0, r.stderr
    try:
        os.kill(p.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while "after the restore" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        assert log.read_text().splitlines()[-1] == "after the restore"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


def test_a_failed_restore_leaves_no_task_of_the_tree(tmp_path):
    """A shell job whose exec'd child maps a file changed since the dump: the restore fails
    at the child, after the parent was made; both are killed and reaped (the restorer is
    their subreaper meanwhile), so no pid of the tree is left taken, not even by a zombie."""
    exe = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen(["/bin/sh", "-c", f"{exe} 60 & wait"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    child = 0
    try:
        deadline = time.monotonic() + 30
        while not child:
            assert time.monotonic() < deadline, "the shell never started its child"
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
            child = int(kids[0]) if kids else 0
            time.sleep(0.02)
        time.sleep(0.2)  # the child has exec'd
        images = tmp_path / "images"
        _dump(p.pid, images)
    finally:
        if child:  # the shell waits for it, reaps it and exits: no orphan for an init
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        p.kill()
        p.wait()
    assert not os.path.exists(f"/proc/{child}"), f"pid {child} was not reaped by its shell"
    _new_build_id(exe)
    r = _restore(images, "-d")
    assert r.returncode == 2 and "changed since the dump" in r.stderr, r.stderr
    assert [pid for pid in (p.pid, child) if os.path.exists(f"/proc/{pid}")] == [], \
        "the failed restore left a task of the tree behind"


def _sysv_ids() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        return {int(line.split()[1]) for line in list(f)[1:]}


def test_a_failed_restore_removes_the_sysv_segment_it_made(tmp_path):
    """The restore re-creates a SysV segment (it would outlive every process), then fails
    at a mapped file changed since the dump: the segment goes with the tasks (IPC_RMID)."""
    from dumper.images.reader import ImageSet

    exe = build(tmp_path, {"rst_sysv": ("rst_sysv",)}) / "rst_sysv"
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        p = subprocess.Popen([str(exe)], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             start_new_session=True)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while "READY" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.02)
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(c) for c in f.read().split()]
        images = tmp_path / "images"
        _dump(p.pid, images)
    finally:
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.kill()
        p.wait()
    with ImageSet.open(images) as s:
        ids = {o.ino for o in s.objects.values() if o.kind == "sysv"}
    assert ids
    deadline = time.monotonic() + 30
    while ids & _sysv_ids():  # the dumped segment goes with its last (killed) attacher
        assert time.monotonic() < deadline, "the dumped segment never went"
        time.sleep(0.05)
    _new_build_id(exe)
    # --pidns: the killed child may wait as a zombie for an init that reaps late (or, as
    # pytest is pid 1 in CI's emulation, never); its pid is then no conflict
    r = _restore(images, "-d", "--pidns")
    left = ids & _sysv_ids()
    for shmid in left:  # the test leaves nothing either way
        subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True)
    assert r.returncode == 2 and "changed since the dump" in r.stderr, r.stderr
    assert not left, "the failed restore left its SysV segment behind"
