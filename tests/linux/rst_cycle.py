"""One dump/kill/restore cycle of a self-checking program with dumper's restore, run as a
process of its own (a child subreaper, so the restored tree becomes its children):

    python rst_cycle.py CRIU PROGRAM WORKDIR {dumper|criu} [RESTORE-ARGS...]

Like criu_cycle.py (whose helpers it uses), but the tree comes back by `dumper restore DIR
-d` (plus RESTORE-ARGS); the dump is dumper's `dump --pid ROOT --tree` or CRIU 4.2's own.
A PROGRAM ending in .py runs under this Python. Harness flags among RESTORE-ARGS:
--no-detach restores without -d (the command waits for the root: its exit status is
reported), CYCLE_PTY=1 in the environment runs the program as a shell job on a terminal
and the restore on a second one (as criu_cycle.py does), --check-cow (with
--leave-stopped) compares the PFNs of every page the images say a child shares with its
parent. With --leave-stopped, `dumper verify DIR --pid ROOT` runs on the stopped tree
before it is continued. --pidns: the root's host pid comes from --pidfile, its NSpid lines
are reported ("nspid": host pid -> [host, inside]), and the init the root is the child of
is what exits; --hold-pids first takes the tree's pids on the host (sleepers made by clone3
set_tid, killed at the end). --signal-init sends the SIGUSR1 to that init (it forwards
it). Prints one JSON line; kills and reaps everything it started or restored.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from criu_cycle import (  # noqa: E402
    TIMEOUT,
    _tail,
    collect,
    kill_tree,
    reap_all,
    signal_and_wait,
    terminal,
    wait_line,
)

PR_SET_CHILD_SUBREAPER = 36


def dump_cmd(how: str, criu: str, root: int, images: Path) -> list[str]:
    if how == "dumper":
        return [sys.executable, "-m", "dumper.cli", "dump", "--pid", str(root), "--tree",
                "--leave-out", "any", "-o", str(images)]
    images.mkdir()
    return [criu, "dump", "-t", str(root), "-D", str(images), "--shell-job", "-o",
            "dump.log", "-v4"]


def main() -> None:
    criu, program, work, how, *restore_args = sys.argv[1:]
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    out, images = work_dir / "out.txt", work_dir / "images"
    result: dict = {"stage": "start", "ok": False, "out": "", "log": ""}
    deadline = time.monotonic() + TIMEOUT
    try:
        argv = [sys.executable, program] if program.endswith(".py") else [program]
        use_pty = os.environ.get("CYCLE_PTY") == "1"  # a shell job, as criu_cycle's
        if use_pty:
            out.write_bytes(b"")
            slave, ctty, _ = terminal(out)
            p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                 preexec_fn=ctty, cwd=work_dir)
            os.close(slave)
        else:
            with open(out, "w") as f, open(os.devnull) as null:
                p = subprocess.Popen(argv, stdin=null, stdout=f, stderr=f,
                                     start_new_session=True, cwd=work_dir)
        root = result["root"] = p.pid
        if not wait_line(out, "READY", deadline):
            result["stage"] = "ready"
            return
        cmdline = Path(f"/proc/{root}/cmdline").read_bytes()
        result["stage"] = "dump"
        r = subprocess.run(dump_cmd(how, criu, root, images), capture_output=True, text=True,
                           timeout=TIMEOUT)
        if r.returncode != 0:
            result["log"] = (r.stderr + r.stdout)[-3000:] + _tail(images / "dump.log")
            return
        kill_tree(root)
        reap_all(deadline)
        result["stage"] = "restore"
        detach = "--no-detach" not in restore_args
        check_cow = "--check-cow" in restore_args
        pidns = "--pidns" in restore_args
        if "--hold-pids" in restore_args:
            result["held"] = hold_pids(images)
        args = [a for a in restore_args if a not in ("--no-detach", "--check-cow",
                                                     "--hold-pids", "--signal-init")]
        pidfile = work_dir / "pidfile"
        if pidns:
            args += ["--pidfile", str(pidfile)]
        cmd = [sys.executable, "-m", "dumper.cli", "restore", str(images), *args]
        if not detach:
            waiter = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            if pidns and wait_line(pidfile, "\n", deadline):
                root = int(pidfile.read_text())
            if not _wait_running(root, deadline, cmdline):
                result["log"] = "the restored root never ran"
                return
            os.kill(root, signal.SIGUSR1)
            _, err = waiter.communicate(timeout=TIMEOUT)
            result["rc"], result["log"] = waiter.returncode, err[-3000:]
            collect(out, result)
            return
        t0 = time.monotonic()
        copier = None
        if use_pty:  # run on a terminal of its own, which --shell-job hands the tree
            slave, ctty, copier = terminal(out)
            r = subprocess.run([*cmd, "-d"], stdin=slave, stdout=slave, stderr=slave,
                               preexec_fn=ctty, timeout=TIMEOUT)
            os.close(slave)
        else:
            r = subprocess.run([*cmd, "-d"], capture_output=True, text=True, timeout=TIMEOUT)
        result["restore_s"] = time.monotonic() - t0
        result["log"] = (r.stderr or "")[-3000:] + (r.stdout or "")[-2000:]
        if r.returncode != 0:
            result["rc"] = r.returncode
            return
        result["stage"] = "run"
        if pidns:
            host_root = int(pidfile.read_text())
            result["nspid"] = {tid: nspid(pid, tid) for pid in _tree(host_root)
                               for tid in map(int, os.listdir(f"/proc/{pid}/task"))}
            init = nspid_parent(host_root)  # the namespace's pid 1: dumper's init
            # the /proc the tree sees (its mount namespace's, through its root)
            result["proc_inside"] = sorted(int(d) for d in os.listdir(
                f"/proc/{host_root}/root/proc") if d.isdigit())
            result["init_comm"] = Path(f"/proc/{init}/comm").read_text().strip()
            if "--leave-stopped" in restore_args:
                result["stopped"] = {pid: _state(pid) for pid in _tree(host_root)}
                v = subprocess.run([sys.executable, "-m", "dumper.cli", "verify", str(images),
                                    "--pid", str(host_root)], capture_output=True, text=True,
                                   timeout=TIMEOUT)  # the root's host pid: mapped by NSpid
                result["verify"] = (v.returncode, v.stdout[-2000:] + v.stderr[-1000:])
                for pid in _tree(host_root):
                    os.kill(pid, signal.SIGCONT)
            os.kill(init if "--signal-init" in restore_args else host_root, signal.SIGUSR1)
            _wait_exit(init, deadline, result)
            collect(out, result)
            return
        if check_cow:
            result["cow"] = cow_pfns(images)
        if "--leave-stopped" in restore_args:
            v = subprocess.run([sys.executable, "-m", "dumper.cli", "verify", str(images),
                                "--pid", str(root)], capture_output=True, text=True,
                               timeout=TIMEOUT)
            result["verify"] = (v.returncode, v.stdout[-2000:] + v.stderr[-1000:])
            os.kill(root, signal.SIGCONT)
            for pid in _tree(root):
                os.kill(pid, signal.SIGCONT)
        signal_and_wait(root, deadline, result)
        if copier is not None:  # the terminal's last bytes may still be on their way
            copier.join(max(0.0, min(deadline - time.monotonic(), 5.0)))
        collect(out, result)
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails with it
        result["log"] += f"{type(e).__name__}: {e}"
    finally:
        kill_tree(os.getpid(), itself=False)
        reap_all(time.monotonic() + 10)
        if not result["out"] and out.exists():
            result["out"] = out.read_text(errors="replace")[-3000:]
        print(json.dumps(result))


def hold_pids(images: Path) -> list[int]:
    """Take every pid of the dumped tree on the host: a sleeper each, by clone3 set_tid."""
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from dumper.images import flags as F
    from dumper.images.reader import ImageSet
    from dumper.linux.rst_tree import spawn_root

    held = []
    with ImageSet.open(images) as s:
        for t in s.tasks.values():
            # a zombie is its pid alone (CRIU's pstree lists garbage threads for one)
            for tid in t.threads if t.state not in (F.TASK_DEAD, F.TASK_ZOMBIE) else [t.pid]:
                pid = spawn_root(tid, then=["/bin/sleep", "600"])
                os.kill(pid, signal.SIGCONT)
                ctypes.CDLL(None).ptrace(17, pid, 0, 0)  # PTRACE_DETACH: it execs sleep
                held.append(pid)
    return held


def nspid(pid: int, tid: int) -> list[int]:
    """NSpid of a thread's status: its id in each pid namespace, outermost first."""
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return next([int(x) for x in line.split()[1:]] for line in f
                    if line.startswith("NSpid:"))


def nspid_parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_exit(pid: int, deadline: float, result: dict) -> None:
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            result["status"] = status
            return
        time.sleep(0.05)


def _wait_running(root: int, deadline: float, cmdline: bytes) -> bool:
    """Until root exists and is no stub of ours any more (not traced: TracerPid 0, and
    its arguments are the dumped program's: the stub is untraced for a moment after its
    clone too, a copy of the restorer, and a signal then would kill it)."""
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{root}/status") as f:
                untraced = "TracerPid:\t0\n" in f.read()
            if untraced and Path(f"/proc/{root}/cmdline").read_bytes() == cmdline:
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def cow_pfns(images: Path) -> list[int]:
    """[pages the images say a child shares with its parent, of those sharing the same PFN
    in /proc/PID/pagemap now] (we are root: PFNs are shown)."""
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from dumper.images.reader import ImageSet

    total = same = 0
    with ImageSet.open(images) as s:
        for t in s.tasks.values():
            for c in t.cow:
                for i in range(c.nr_pages):
                    total += 1
                    a = _pfn(c.pid, c.vaddr + i * 4096)
                    same += a != 0 and a == _pfn(c.src_pid, c.src_vaddr + i * 4096)
    return [total, same]


def _pfn(pid: int, addr: int) -> int:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        word = int.from_bytes(f.read(8), "little")
    return word & ((1 << 55) - 1) if word >> 63 else 0


def _tree(root: int) -> list[int]:
    from criu_cycle import tree_pids

    return tree_pids(root)


if __name__ == "__main__":
    main()
