"""Issue 15 on live dumps: SIGKILL debris removed by the next dump, SIGINT/SIGTERM exit
130/143 with one line, the tree thawed and nothing left; a live set's mutants refused by
restore's up-front validation and fuzzed through inspect and verify."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.images import magic as M
from dumper.images.errors import ImageError
from dumper.images.reader import ImageSet
from dumper.restore import restore

from .procs import task_states

pytestmark = pytest.mark.linux

ROOT = Path(__file__).resolve().parents[2]
PAGES = 64 << 8  # 64 MiB written: a dump long enough to be caught in the middle


def _helper(procs):
    p = procs.start(cpu=0)
    p.mmap("big", PAGES)
    p.write("big", range(PAGES), tag=15)
    p.quiesce()
    return p


def _start_dump(pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid),
                             "--leave-out", "any", "-o", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _temp_dirs(parent: Path, out: Path) -> list[str]:
    return [n for n in os.listdir(parent) if n.startswith(f".{out.name}.dumper-")]


def _when_writing(d: subprocess.Popen, parent: Path, out: Path) -> bool:
    """Wait until the dump has its temporary directory (it is writing pages); False if it
    finished first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _temp_dirs(parent, out):
            return True
        if d.poll() is not None:
            return False
        time.sleep(0.0005)
    raise AssertionError("the dump never started writing")


def _not_stopped(pid: int) -> None:
    states = task_states(pid)
    assert not any(s in "tT" for s in states.values()), states


def test_sigkill_debris_removed_by_next_dump(procs, tmp_path):
    p = _helper(procs)
    out = tmp_path / "out"
    for _ in range(5):
        d = _start_dump(p.pid, out)
        if _when_writing(d, tmp_path, out):
            d.kill()
        d.communicate(timeout=60)
        if d.returncode == -signal.SIGKILL:
            break
        shutil.rmtree(out)  # it finished first: again
    else:
        pytest.fail("five dumps finished before they could be killed")
    debris = _temp_dirs(tmp_path, out)
    assert len(debris) == 1 and ".out.dumper-tmp-" in debris[0] and not out.exists()
    _not_stopped(p.pid)  # the kernel detached the killed tracer's tracees
    p.quiesce()
    d = _start_dump(p.pid, out)
    _, err = d.communicate(timeout=120)
    assert d.returncode == 0, err
    assert _temp_dirs(tmp_path, out) == [] and ImageSet.open(out).tasks


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_mid_dump(procs, tmp_path, sig):
    p = _helper(procs)
    out = tmp_path / "out"
    for _ in range(5):
        d = _start_dump(p.pid, out)
        if _when_writing(d, tmp_path, out):
            d.send_signal(sig)
        _, err = d.communicate(timeout=60)
        if d.returncode != 0:
            break
        shutil.rmtree(out)  # it finished first: again
    else:
        pytest.fail("five dumps finished before they could be signalled")
    lines = [x for x in err.splitlines() if not x.startswith("dumper: warning")]
    assert d.returncode == 128 + sig, err
    assert lines == [f"dumper: interrupted by {signal.Signals(sig).name}"], err
    left = {n: sorted(os.listdir(tmp_path / n)) for n in _temp_dirs(tmp_path, out)}
    assert not out.exists() and left == {}, (err, left)
    _not_stopped(p.pid)
    assert p.call("ping") is not None  # the helper runs on


def _catches_sigterm(pid: int) -> bool:
    """Whether pid has a handler for SIGTERM (SigCgt): dumper.interrupts.early() has run,
    which Python itself never does (it catches SIGINT from its own start)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            cgt = next(x for x in f if x.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(cgt, 16) & (1 << (signal.SIGTERM - 1)))


def test_sigint_during_start_up(procs, tmp_path):
    """From our first import on: no KeyboardInterrupt traceback, exit 130 (or the dump had
    already ended). Before it, in the interpreter's own start, SIGINT is Python's."""
    p = _helper(procs)
    exe = Path(sys.executable).with_name("dumper")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dumper.cli"]
    for delay in (0, 0.01, 0.03, 0.06, 0.1, 0.2):
        out = tmp_path / f"out-{delay}"
        d = subprocess.Popen([*cmd, "dump", "--pid", str(p.pid), "--leave-out", "any", "-o",
                              str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not _catches_sigterm(d.pid) and d.poll() is None:
            assert time.monotonic() < deadline, "dumper never got to its imports"
            time.sleep(0.0005)
        time.sleep(delay)
        d.send_signal(signal.SIGINT)
        _, err = d.communicate(timeout=60)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        if d.returncode == -signal.SIGINT:  # in the interpreter's finalization, which puts
            assert ImageSet.open(out).tasks  # SIG_DFL back: the dump had ended, whole
            continue
        assert d.returncode in (0, 130), (delay, d.returncode, err)
        if d.returncode == 130:
            assert "dumper: interrupted by SIGINT" in err
            assert not out.exists() and _temp_dirs(tmp_path, out) == []
        _not_stopped(p.pid)


# -- a live set: restore's up-front validation, and fuzzing through inspect and verify ---------


class SpyTarget:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append(name)


@pytest.fixture
def live_set(procs, tmp_path):
    from click.testing import CliRunner

    from dumper.cli import main

    p = procs.start(cpu=0)
    p.mmap("a", 64)
    p.write("a", range(0, 64, 3), tag=7)
    p.mmap("s", 16, shared=True)
    p.write("s", range(16), tag=8)
    p.quiesce()
    out = tmp_path / "live"
    r = CliRunner().invoke(main, ["dump", "--pid", str(p.pid), "--leave-out", "any", "-o",
                                  str(out)])
    assert r.exit_code == 0, r.output
    return out, p.pid


def _edit(out: Path, name: str, change) -> None:
    import sys as _sys

    _sys.path.insert(0, str(ROOT / "tests"))
    from imagesupport import rewrite

    rewrite(out / name, change)


@pytest.mark.parametrize("mutation", [
    "vma past the address space", "thread repeated", "object missing", "truth pages",
])
def test_live_set_mutants_refused_before_restore(live_set, mutation):
    out, pid = live_set
    if mutation == "vma past the address space":
        _edit(out, M.mm(pid), lambda e: setattr(e[0].vmas[0], "end", 1 << 58))
    elif mutation == "thread repeated":
        _edit(out, M.PSTREE, lambda e: e[0].threads.append(pid))
    elif mutation == "object missing":
        _edit(out, M.OBJECTS, lambda e: e.__delitem__(-1))
    else:  # a VMA twice the size of everything else (no truth: the budget is what holds)
        def grow(e):
            e[0].vmas[-2].end = e[0].vmas[-2].start + (1 << 46)  # below [vsyscall]
        _edit(out, M.mm(pid), grow)
    spy = SpyTarget()
    with pytest.raises(ImageError), ImageSet.open(out) as s:
        restore(s, spy)
    assert spy.calls == []


def test_live_set_fuzzed_through_inspect_and_verify(live_set, tmp_path):
    """Seeded mutants of a live set through inspect and verify (never restored: a live set
    must not start processes), each in a worker under RLIMIT_AS with a per-command alarm."""
    out, _ = live_set
    summary = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzzsupport.py"), "--no-model",
                        "--live", str(out), "--count", "150", "--batch", "150", "--seed",
                        "1501", "--subprocess-every", "50", "-o", str(summary)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    doc = __import__("json").loads(summary.read_text())
    assert doc["mutants"] == 150 and not doc["findings"], doc["findings"][:3]
    assert r.returncode == 0, r.stderr[-2000:]
