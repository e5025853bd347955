"""The command line: dump, restore, verify and inspect on model image sets; errors are one
line and exit status 2, losses exit status 1."""

from __future__ import annotations

from click.testing import CliRunner

from dumper.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_dump_restore_verify_roundtrip(tmp_path):
    out = str(tmp_path / "s1")
    r = run("dump", "--scenario", "1", "--kernel", "linux-6.18", "-o", out)
    assert r.exit_code == 0, r.output
    assert "dumped 2 tasks" in r.output and "[auto, linux-6.18]" in r.output
    r = run("restore", out, "--verify")
    assert r.exit_code == 0 and "nothing lost" in r.output
    r = run("verify", out)
    assert r.exit_code == 0 and "verified 8 pages: nothing lost" in r.output


def test_a_lossy_strategy_makes_verify_exit_1_and_name_pages(tmp_path):
    out = str(tmp_path / "s1")
    assert run("dump", "--scenario", "1", "--strategy", "pagemap", "-o", out).exit_code == 0
    r = run("verify", out, "--show", "2")
    assert r.exit_code == 1
    assert r.output.count("lost: pid 2") == 2 and "... and 6 more" in r.output
    assert "LOST 8 pages (0 private, 8 shared-object pages)" in r.output


def test_existing_set_needs_force_and_zstd_works(tmp_path):
    out = str(tmp_path / "s")
    assert run("dump", "--scenario", "14", "-o", out).exit_code == 0
    r = run("dump", "--scenario", "14", "-o", out)
    assert r.exit_code == 2
    assert r.output == f"dumper: error: {out}: exists; pass --force to replace it\n"
    r = run("dump", "--scenario", "14", "-o", out, "--force", "--compress", "zstd")
    assert r.exit_code == 0
    r = run("inspect", "info", out)
    assert r.exit_code == 0 and "zstd" in r.output


def test_user_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.scn"
    bad.write_text("task A\nmmap A r 4\nwrite A r 9\ndump A\n")
    cases = [
        (("dump", "--scenario", str(bad), "-o", str(tmp_path / "x")),
         f"{bad}:3: page 9 is outside region 'r'"),
        (("dump", "--scenario", "nope", "-o", str(tmp_path / "x")), "nope: no such scenario"),
        (("dump", "--scenario", "1", "--kernel", "linux-9", "-o", str(tmp_path / "x")),
         "linux-9: not a kernel profile"),
        (("restore", str(tmp_path / "missing")), "missing"),
        (("dump", "-o", str(tmp_path / "x")), "dump needs one of --scenario"),
    ]
    for args, msg in cases:
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert lines[-1].startswith("dumper: error: ") and msg in lines[-1], (args, r.output)
        assert "Traceback" not in r.output
        assert not (tmp_path / "x").exists()


def test_corrupt_image_is_reported_not_traced(tmp_path):
    out = tmp_path / "s"
    assert run("dump", "--scenario", "14", "-o", str(out)).exit_code == 0
    (out / "mm-1.img").write_bytes((out / "mm-1.img").read_bytes()[:-3])
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 2
    assert r.output.strip().startswith(f"dumper: error: {out}/mm-1.img: ")


def test_no_fsync_writes_the_same_set_without_syncing(tmp_path, monkeypatch):
    import os

    import dumper.images.writer as W

    calls: list[str] = []
    real_fsync, real_direct = os.fsync, W._set_direct
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(W, "_set_direct", lambda fd: (calls.append("direct"), real_direct(fd))[1])
    sets = {}
    for flag in ("--fsync", "--no-fsync"):
        calls.clear()
        out = str(tmp_path / flag)
        r = run("dump", "--scenario", "2", flag, "-o", out)
        assert r.exit_code == 0, r.output
        sets[flag] = dict(calls=list(calls), out=out)
        assert run("verify", out).exit_code == 0
    assert sets["--no-fsync"]["calls"] == []
    # Every file, the set directory and its parent; raw pages images with O_DIRECT.
    synced = sets["--fsync"]["calls"]
    assert synced.count("fsync") == len(os.listdir(sets["--fsync"]["out"])) + 2
    assert synced.count("direct") == sum(
        f.startswith("pages-") for f in os.listdir(sets["--fsync"]["out"]))
