"""The command line a CRIU user expects, run as the installed `dumper` program: one-line
usage errors, a quiet broken pipe, --json documents, progress only on a terminal, criu's
option spellings, help for every option, replay --list, lazy start-up."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dumper.cli import main

BIN = Path(sys.executable).with_name("dumper")
CMD = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "dumper.cli"]


def run(*args: object, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=300,
                          **kw)


def on_tty(*args: object) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal: (exit status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([*CMD, *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                         text=True)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out = p.stdout.read() if p.stdout else ""
        return p.wait(60), out, seen.decode(errors="replace")
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_usage_errors_are_one_line_exit_2():
    for args, want in [
        (("dump", "--foo"), "No such option '--foo'"),
        (("inspect", "info"), "Missing argument 'DIR|FILE'"),
        (("dump", "--scenario", "1", "--level", "99", "-o", "x"), "'--level': 99 is not"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ]:
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dumper: error: ") and want in lines[0], \
            (args, r.stderr)
    assert "'--force'" in run("dump", "--forcee").stderr


def test_a_closed_stdout_is_silent():
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # nobody will ever read: the first write fails with EPIPE
    try:
        p = subprocess.run([*CMD, "replay", "--list"], stdout=w_fd, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(w_fd)
    assert p.stderr == "" and p.returncode == 141


def test_incompatible_options_are_errors(tmp_path):
    out = tmp_path / "s"
    for args, want in [
        (("--scenario", "1", "--tree"), "--tree: only for a live dump"),
        (("--scenario", "1", "--leave-stopped"), "--leave-stopped: only for a live dump"),
        (("--pid", "1", "--kernel", "linux-6.18"), "--kernel is the model's kernel profile"),
        (("--pid", "1", "--leave-stopped", "--leave-running"), "contradict"),
        (("--scenario", "1"), "needs -o/--output DIR (or criu's -D/--images-dir DIR)"),
        (("--scenario", "1", "-o", out, "-D", tmp_path / "t"), "name different directories"),
    ]:
        r = run("dump", *args)
        assert r.returncode == 2 and r.stderr.startswith("dumper: error: ") and want in r.stderr, \
            (args, r.stderr)
    assert not out.exists()


def test_json_documents(tmp_path):
    out = tmp_path / "s"
    r = run("dump", "--scenario", "1", "-o", out, "--strategy", "pagemap", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tasks"] == 2 and d["shared_pages"] == 0 and d["summary"].startswith("dumped 2 tasks")
    assert "frozen_seconds" in d and d["warnings"] == []
    r = run("restore", out, "--verify", "--json")
    assert r.returncode == 1  # pagemap lost the swapped-out shared pages
    d = json.loads(r.stdout)
    assert d["restore"]["tasks"] == 2 and not d["verify"]["ok"]
    lost = d["verify"]["lost"]
    assert len(lost) == d["verify"]["shared_lost"] == 8
    assert set(lost[0]) == {"pid", "addr", "object", "offset", "expected", "found"}
    assert all(p["object"] is not None and len(p["expected"]) == 16 for p in lost)
    r = run("verify", out, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["verify"]["lost"] == lost
    r = run("restore", out, "--json")
    assert r.returncode == 0 and set(json.loads(r.stdout)) == {"restore"}
    r = run("explore", "--count", "2", "--depth", "4", "--kernel", "linux-6.18", "--strategy",
            "auto", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["programs"] == 2 and d["runs"] == 2 and d["violations"] == []


def test_progress_only_on_a_terminal_and_not_when_quiet(tmp_path):
    rc, out, tty = on_tty("dump", "--scenario", "14", "-o", tmp_path / "a")
    assert rc == 0 and out.startswith("dumped ")
    assert "freezing and collecting" in tty and "writing pages" in tty and "100%" in tty, tty
    assert "MiB/s" in tty
    rc, out, tty = on_tty("verify", tmp_path / "a")
    assert rc == 0 and "restoring" in tty and "verifying" in tty and "100%" in tty
    rc, out, tty = on_tty("inspect", "info", tmp_path / "a")
    assert rc == 0 and "checking pages" in tty and "100%" in tty, tty
    rc, out, tty = on_tty("inspect", "info", tmp_path / "a", "-q")
    assert rc == 0 and tty == ""
    rc, out, tty = on_tty("dump", "--scenario", "14", "-o", tmp_path / "b", "--quiet")
    assert rc == 0 and tty == ""
    r = run("dump", "--scenario", "14", "-o", tmp_path / "c")  # stderr is a pipe
    assert r.returncode == 0 and "writing pages" not in r.stderr and "%" not in r.stderr
    assert r.stderr == "building private-cow-baseline on the linux-6.18 model\n"


def test_criu_spellings_for_the_output(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("dump", "--scenario", "14", "-D", empty, "-q")
    assert r.returncode == 0, r.stderr
    assert (empty / "pstree.img").exists()
    r = run("dump", "--scenario", "14", "--images-dir", empty)  # no longer empty
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    log = tmp_path / "dump.log"
    r = run("dump", "--scenario", "14", "-o", tmp_path / "v", "-v", "--log-file", log)
    assert r.returncode == 0
    assert log.read_text().splitlines()[-1] == r.stdout.strip()


def test_check_gives_a_verdict(monkeypatch):
    from dumper.linux import check as C

    if os.geteuid() == 0:  # the real CLI, on this kernel
        r = run("check")
        assert r.stdout.splitlines()[-1] == "Looks good." and r.returncode == 0
        d = json.loads(run("check", "--json").stdout)
        assert d["ok"] and d["verdict"] == "Looks good." and d["missing"] == []
    monkeypatch.setattr(C, "check", lambda: [C.Check("map_files", False, "no map_files"),
                                             C.Check("swap", False, "no swap")])
    r = CliRunner().invoke(main, ["check"])
    assert r.exit_code == 3
    assert r.output.splitlines()[-1] == "A dump cannot work here: map_files missing."


def test_every_option_has_help_and_the_command_list_is_whole():
    def walk(cmd: click.Command, path: str):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    for path, cmd in walk(main, "dumper"):
        for p in cmd.params:
            if isinstance(p, click.Option) and "--help" not in p.opts:
                assert p.help, f"{path} {p.opts[0]} has no help"
    top = run("--help").stdout.split("Commands:", 1)[1]
    assert "..." not in top  # click's mark of a cut short help
    for name in main.commands:
        assert f"  {name} " in top
    assert "0 compresses in the calling thread" in " ".join(run("dump", "--help").stdout.split())


def test_replay_list_and_closest_names():
    from dumper.scenarios.check import library

    r = run("replay", "--list")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(library())
    assert lines[0].split()[:2] == ["01", "fork-unmap-after-swapout"]
    assert all(len(x.split()) > 3 for x in lines)  # each with a description
    r = run("replay", "fork-unmap-swapout")
    assert r.returncode == 2
    assert "did you mean fork-unmap-after-swapout" in r.stderr
    r = run("dump", "--scenario", "lseek-does-not-swapin", "-o", "x")
    assert r.returncode == 2 and "did you mean lseek-does-not-swap-in" in r.stderr


def test_grammar_of_counts(tmp_path):
    r = run("dump", "--scenario", "1", "-o", tmp_path / "s", "-q")
    assert "dumped 2 tasks, 1 VMA:" in r.stdout and "of 1 shared object;" in r.stdout
    r = run("restore", tmp_path / "s")
    assert r.stdout.startswith("restored 2 tasks and 1 shared object:")


def test_version_and_help_do_not_load_the_heavy_modules():
    for args in (["--version"], ["--help"], ["dump", "--help"], ["inspect", "--help"]):
        code = ("import sys; from dumper.cli import main\n"
                f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
                "heavy = [m for m in ('numpy', 'google.protobuf', 'zstandard', 'xxhash', "
                "'dumper.model', 'dumper.scenarios.replay') if m in sys.modules]\n"
                "print(heavy, file=sys.stderr)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.stderr.strip() == "[]", (args, r.stderr)


def test_inspect_pages_on_an_unmapped_address_fails(tmp_path):
    out = tmp_path / "s"
    assert run("dump", "--scenario", "14", "-o", out, "-q").returncode == 0
    r = run("inspect", "pages", out, "--pid", "1", "--addr", "0x1000")
    assert r.returncode == 2
    assert r.stderr == f"dumper: error: {out}: task 1 has no VMA at 0x1000; " \
        f"`dumper inspect mems {out}` lists them\n"


@pytest.mark.parametrize("flag", ["--tree", "--leave-running", "--shell-job"])
def test_live_only_flags_name_themselves(flag, tmp_path):
    r = run("dump", "--scenario", "1", flag, "-o", tmp_path / "s")
    assert r.returncode == 2 and f"{flag}: only for a live dump" in r.stderr


def test_criu_numeric_verbosity(tmp_path):
    """criu's -v4 is dumper's -vvvv: accepted, the phases printed."""
    r = run("dump", "--scenario", "14", "-o", tmp_path / "a", "-v4")
    assert r.returncode == 0, r.stderr
    assert "dumper: dumped 2 tasks" in r.stderr, r.stderr  # what -v logs
    from dumper.cli import criu_verbosity

    assert criu_verbosity(["dump", "-v4", "-o", "x", "--", "-v2"]) == [
        "dump", "-vvvv", "-o", "x", "--", "-v2"]


def test_restore_takes_criu_spellings_and_refuses_live_options_on_a_model_set(tmp_path):
    """`restore -D DIR`, --restore-detached, -v4 and --log-file as criu has them; the
    Linux-only options are one error for a model set, a negative --show a usage error."""
    from click.testing import CliRunner

    from dumper.cli import main

    out = tmp_path / "set"
    r = CliRunner().invoke(main, ["dump", "--scenario", "1", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["restore", "-D", str(out), "--verify", "-v4",
                                  "--log-file", str(tmp_path / "log")])
    assert r.exit_code == 0 and "nothing lost" in r.output, r.output
    for opt in (["-d"], ["--restore-detached"], ["--pidfile", str(tmp_path / "p")],
                ["--leave-stopped"], ["--shell-job"], ["--pidns"]):
        r = CliRunner().invoke(main, ["restore", str(out), *opt])
        assert r.exit_code == 2 and "only for a live set" in r.output, (opt, r.output)
    assert not (tmp_path / "p").exists()
    r = CliRunner().invoke(main, ["restore", str(out), "--show", "-1"])
    assert r.exit_code == 2, r.output
    r = CliRunner().invoke(main, ["restore"])
    assert r.exit_code == 2 and "-D/--images-dir" in r.output, r.output
    r = CliRunner().invoke(main, ["restore", str(out), "-D", str(tmp_path)])
    assert r.exit_code == 2 and "different directories" in r.output, r.output
