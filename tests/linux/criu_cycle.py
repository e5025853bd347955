"""One checkpoint/restore cycle of a self-checking program, run as a process of its own.

    python criu_cycle.py CRIU PROGRAM WORKDIR {dumper|criu} [ARGS...]

It makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER, restore.md §8.5), so the
tasks `criu restore -d` leaves behind become its children; it starts PROGRAM in a session
of its own with stdout/stderr on WORKDIR/out.txt, waits for the program's "READY" line,
dumps the tree (dumper's `dump --pid --tree` or CRIU's own `criu dump`), SIGKILLs and reaps
every task of the tree (their pids must be free again: §8.5), restores with
`criu restore -D DIR --shell-job -d`, sends SIGUSR1 to the restored root and waits for it
to exit. Prints one JSON line: {"stage": ..., "ok": bool, "out": ..., "log": ...}.

With CYCLE_PTY=1 the program runs as a shell job would: in a session of its own whose
controlling terminal is a pseudo-terminal, stdio on it; `criu restore --shell-job` is then
run on a second terminal (its own, which the restored task inherits). What either terminal
shows is copied into out.txt.

A program that is no self-checking one (a service) is driven by two shell commands in
the environment instead: CYCLE_READY, run until it succeeds, takes the place of the READY
line (and sets up the state), CYCLE_CHECK, run after the restore instead of SIGUSR1, must
succeed.

Every process it started is killed by pid and reaped before it exits, whatever happens
(the restored ones too: they are its children).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
TIMEOUT = 120.0


def tree_pids(root: int) -> list[int]:
    """root and its descendants, from /proc/PID/task/*/children."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def reap_all(deadline: float) -> None:
    """Wait for every child (ours by birth or by reparenting) until none is left."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def kill_tree(root: int, itself: bool = True) -> None:
    for pid in reversed(tree_pids(root)):
        if pid == root and not itself:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_ready(path: Path, deadline: float) -> bool:
    """The program's READY line, or CYCLE_READY succeeding."""
    cmd = os.environ.get("CYCLE_READY")
    while cmd and time.monotonic() < deadline:
        if subprocess.run(cmd, shell=True, capture_output=True).returncode == 0:
            return True
        time.sleep(0.1)
    return wait_line(path, "READY", deadline)


def signal_and_wait(root: int, deadline: float, result: dict) -> None:
    """SIGUSR1 to the restored root (the programs check themselves on it), then wait for
    it to exit (its status in result)."""
    os.kill(root, signal.SIGUSR1)
    while time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == root:
            result["status"] = status
            break
        if pid == 0:
            time.sleep(0.05)


def collect(out: Path, result: dict) -> None:
    """What the program wrote: PASS and no FAIL is success."""
    text = out.read_text(errors="replace")
    result["out"] = text[-3000:]
    result["ok"] = "PASS" in text and "FAIL" not in text
    result["stage"] = "done" if result["ok"] else "check"


def wait_line(path: Path, word: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if path.exists() and word in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def terminal(out: Path) -> tuple[int, Callable[[], None], threading.Thread]:
    """A pty: its slave fd, a preexec_fn making it the child's controlling terminal, and
    the thread that copies what the master reads into out (it ends when the last slave
    closes: join it before reading out, or the program's last words may be missed)."""
    master, slave = pty.openpty()

    def copy() -> None:
        with open(out, "ab", buffering=0) as f:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the last slave closed
                    return
                if not data:
                    return
                f.write(data.replace(b"\r\n", b"\n"))

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()

    def ctty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return slave, ctty, copier


def main() -> None:
    criu, program, work, how, *args = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    out, images = work_dir / "out.txt", work_dir / "images"
    result: dict = {"stage": "start", "ok": False, "out": "", "log": ""}
    deadline = time.monotonic() + TIMEOUT
    try:
        use_pty = os.environ.get("CYCLE_PTY") == "1"
        if use_pty:
            out.write_bytes(b"")
            slave, ctty, _ = terminal(out)
            p = subprocess.Popen([program, *args], stdin=slave, stdout=slave, stderr=slave,
                                 preexec_fn=ctty, cwd=work_dir)
            os.close(slave)
        else:
            with open(out, "w") as f, open(os.devnull) as null:
                p = subprocess.Popen([program, *args], stdin=null, stdout=f, stderr=f,
                                     start_new_session=True, cwd=work_dir)
        root = p.pid
        if not wait_ready(out, deadline):
            result["stage"] = "ready"
            return
        result["stage"] = "dump"
        if how == "dumper":
            cmd = [sys.executable, "-m", "dumper.cli", "dump", "--pid", str(root), "--tree",
                   "--for-criu", "-o", str(images)]
        else:
            cmd = [criu, "dump", "-t", str(root), "-D", str(images), "--shell-job",
                   "-o", "dump.log", "-v4"]
            images.mkdir()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            result["log"] = (r.stderr + r.stdout)[-3000:]
            if how == "criu":
                result["log"] += _tail(images / "dump.log")
            return
        kill_tree(root)
        reap_all(deadline)
        result["stage"] = "restore"
        restore = [criu, "restore", "-D", str(images), "--shell-job", "-d", "-o",
                   "restore.log", "-v4"]
        copier = None
        if use_pty:
            slave, ctty, copier = terminal(out)
            r = subprocess.run(restore, stdin=slave, stdout=slave, stderr=slave,
                               preexec_fn=ctty, timeout=TIMEOUT)
            os.close(slave)
        else:
            r = subprocess.run(restore, capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            result["log"] = _tail(images / "restore.log")
            return
        result["stage"] = "run"
        check = os.environ.get("CYCLE_CHECK")
        if check:
            r = subprocess.run(check, shell=True, capture_output=True, text=True,
                               timeout=TIMEOUT)
            result["out"] = (r.stdout + r.stderr)[-3000:]
            result["ok"] = r.returncode == 0
            result["stage"] = "done" if result["ok"] else "check"
            return
        signal_and_wait(root, deadline, result)
        if copier is not None:
            copier.join(max(0.0, min(deadline - time.monotonic(), 5.0)))
        collect(out, result)
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails with it
        result["log"] += f"{type(e).__name__}: {e}"
    finally:
        kill_tree(os.getpid(), itself=False)  # the restored tasks are our children too
        reap_all(time.monotonic() + 10)
        if not result["out"] and out.exists():
            result["out"] = out.read_text(errors="replace")[-3000:]
        print(json.dumps(result))


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "Error" in line and "RLIMIT_NOFILE" not in line]
    return "\n".join(errors[-10:] + lines[-5:])


if __name__ == "__main__":
    main()
