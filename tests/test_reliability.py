"""Issue 15's regressions: golden sets verify; no hang, runaway memory or traceback on any
image; whole-set validation before restore; the manifest; debris, signals and OUT errors
(the live parts: tests/test_reliability_live.py)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from imagesupport import GOLDEN, ROOT, build, resealed, rewrite

from dumper.cli import main
from dumper.images import codec, manifest, safeio, tempdirs
from dumper.images import magic as M
from dumper.images.errors import ImageError
from dumper.images.reader import ImageSet
from dumper.images.validate import MAX_RESTORE_PAGES
from dumper.restore import restore

P = 4096
GOLDEN_SETS = sorted(p for p in GOLDEN.iterdir() if (p / M.INVENTORY).exists())


def cli(*args: str, code: int | None = None):
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    if code is not None:
        assert r.exit_code == code, (args, r.output, r.stderr)
    return r


def one_error(r, *words: str) -> str:
    """The run failed with exit 2 and one `dumper: error:` line holding every word."""
    lines = [x for x in r.stderr.splitlines() if x.startswith("dumper: error")]
    assert r.exit_code == 2 and len(lines) == 1, (r.exit_code, r.stderr)
    assert lines[0].startswith("dumper: error: ") and "Traceback" not in r.output + r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def run_capped(*args: str, timeout: float = 60, cap: int = 1 << 30, stdin=None):
    """python -m dumper.cli under RLIMIT_AS=cap and a timeout (a hang fails the test)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-m", "dumper.cli", *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, cwd=ROOT, stdin=stdin)


# -- 1. the golden sets verify ---------------------------------------------------------------


def test_golden_sets_found():
    assert {p.name for p in GOLDEN_SETS} >= {"basic", "zstd", "lseek"}


@pytest.mark.parametrize("path", GOLDEN_SETS, ids=lambda p: p.name)
def test_golden_set_verifies(path):
    assert "nothing lost" in cli("verify", str(path), code=0).output
    r = cli("restore", str(path), "--verify", code=0)
    assert "restored 2 tasks" in r.output and "nothing lost" in r.output
    cli("inspect", "info", str(path), code=0)


def test_verify_refuses_truth_of_another_digest(tmp_path):
    s = build(tmp_path)
    for pid in (4242, 4243):
        rewrite(s / M.truth(pid), lambda e: setattr(e[0], "algo", "xxh3-64"))
    one_error(cli("verify", str(s)), "truth digests are xxh3-64", "model-cid-64")


# -- 2. no hangs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mm-4242.img", "pstree.img", "dumper.img", "pages-1.img",
                                  "truth-4243.img", "inventory.img"])
def test_fifo_in_place_of_an_image_is_refused(tmp_path, name):
    s = build(tmp_path)
    (s / name).unlink()
    os.mkfifo(s / name)
    for args in (["inspect", "info", str(s)], ["inspect", "show", str(s / name)],
                 ["verify", str(s)]):
        r = run_capped(*args, timeout=30)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"{s / name}: is a FIFO, not a regular file" in r.stderr


@pytest.mark.parametrize("target", ["/dev/urandom", "/dev/zero"])
def test_symlink_to_a_device_is_refused(tmp_path, target):
    s = build(tmp_path)
    (s / "pages-1.img").unlink()
    (s / "pages-1.img").symlink_to(target)
    r = run_capped("inspect", "info", str(s), timeout=30)
    assert r.returncode == 2 and "pages-1.img: is a symbolic link" in r.stderr
    r = run_capped("inspect", "show", target, timeout=30)
    assert r.returncode == 2 and "is a character device, not a regular file" in r.stderr


def test_directory_in_place_of_an_image(tmp_path):
    s = build(tmp_path)
    (s / "core-4243.img").unlink()
    (s / "core-4243.img").mkdir()
    one_error(cli("inspect", "info", str(s)), "core-4243.img: is a directory")


def test_stdin_is_read_with_the_same_bound(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(safeio.MAX_IMAGE + 1)
    with open(big, "rb") as f:
        r = run_capped("inspect", "show", "-", stdin=f, timeout=60)
    assert r.returncode == 2 and "<stdin>: more than" in r.stderr
    r = run_capped("inspect", "show", str(big), timeout=30)  # a file is streamed, not read
    assert r.returncode == 2 and "big: bad magic" in r.stderr
    with open(GOLDEN / "basic" / "mm-4242.img", "rb") as f:
        assert run_capped("inspect", "show", "-", stdin=f).returncode == 0


# -- 3. no runaway memory --------------------------------------------------------------------


def test_show_streams_one_entry_at_a_time(tmp_path):
    """inspect show/decode of a truth image of 20,000 runs: the whole document used to be
    built first (a 20 MB image took 1.9 GB); now one entry is held at a time."""
    import json
    import tracemalloc

    import numpy as np

    from dumper.images.jsonfmt import image_to_json
    from dumper.images.jsonstream import write_json
    from dumper.images.proto import dumper_images_pb2 as own

    f = tmp_path / "truth-1.img"
    head = own.TruthHead(pid=1, algo="xxh3-64", task_digest=bytes(32), nr_pages=20000)
    f.write_bytes(codec.header(codec.BY_NAME["TRUTH"]) + codec.frame(head) + b"".join(
        codec.truth_run(i * P, np.array([i], dtype=np.uint64)) for i in range(20000)))
    n = [0]
    tracemalloc.start()
    try:
        write_json(str(f), lambda text: n.__setitem__(0, n[0] + len(text)), True, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    text = []
    write_json(str(f), text.append, True, 2)
    assert "".join(text) == json.dumps(image_to_json(codec.load(f), True), indent=2)
    assert n[0] == len("".join(text))


def test_sparse_64gib_pages_file(tmp_path):
    s = build(tmp_path)
    with open(s / "pages-1.img", "r+b") as f:
        f.truncate(64 << 30)
    for args in (["inspect", "info", str(s)], ["inspect", "show", str(s / "pages-1.img")],
                 ["restore", str(s), "--verify"], ["inspect", "mems", str(s)]):
        r = run_capped(*args, cap=1 << 30)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)


def _grow_stack(e):
    e[0].vmas[4].end = e[0].vmas[4].start + (1 << 40)


def test_vma_of_a_tebibyte_is_refused_before_allocating(tmp_path):
    s = build(tmp_path)
    rewrite(s / "mm-4242.img", _grow_stack)
    for args in (["inspect", "info", str(s)], ["restore", str(s), "--verify"],
                 ["verify", str(s)]):
        r = run_capped(*args, cap=1 << 30)
        assert r.returncode == 2 and "mm-4242.img: VMAs span" in r.stderr, r.stderr


def test_vma_past_the_address_space(tmp_path):
    s = build(tmp_path)
    rewrite(s / "mm-4243.img", lambda e: setattr(e[0].vmas[4], "end", 1 << 60))
    one_error(cli("inspect", "info", str(s)), "ends past the highest user address")


def test_object_of_512_gib_is_refused_by_restore(tmp_path):
    s = build(tmp_path)
    rewrite(s / M.OBJECTS, lambda e: setattr(e[0], "size", 512 << 30))
    r = run_capped("restore", str(s), "--verify", cap=1 << 30)
    assert r.returncode == 2 and f"more than the {MAX_RESTORE_PAGES}" in r.stderr, r.stderr


def test_zstd_frame_size_bounded(tmp_path):
    s = build(tmp_path, "zstd")

    def blow(e):
        e[0].pages[0].frame_raw_size = 1 << 40

    rewrite(s / M.DUMPER, blow)
    one_error(cli("inspect", "info", str(s)), "dumper.img", "zstd frames of 1099511627776")


# -- 4. no tracebacks: fields checked where decoded ------------------------------------------


def _append_field(path: Path, entry: int, wire: bytes, reseal: bool = True) -> None:
    """Append raw protobuf wire bytes to one entry (the last value of a field wins)."""
    data = bytearray(path.read_bytes())
    pos = 8 if data[:4] == (0x54564319).to_bytes(4, "little") else 4
    for _ in range(entry):
        pos += 4 + int.from_bytes(data[pos : pos + 4], "little")
    n = int.from_bytes(data[pos : pos + 4], "little")
    payload = bytes(data[pos + 4 : pos + 4 + n]) + wire
    data[pos : pos + 4 + n] = len(payload).to_bytes(4, "little") + payload
    path.write_bytes(bytes(data))
    if reseal:
        resealed(path.parent)


def _string(number: int, value: bytes) -> bytes:
    return bytes([number << 3 | 2, len(value)]) + value


def test_comm_not_utf8(tmp_path):
    s = build(tmp_path)
    # CoreEntry.tc (field 3) .comm (field 6)
    _append_field(s / "core-4242.img", 0, _string(3, _string(6, b"\xffsrv")))
    for cmd in ("info", "ps", "mems"):
        one_error(cli("inspect", cmd, str(s)), "core-4242.img", "entry 0", "tc.comm",
                  "not valid UTF-8")
    one_error(cli("inspect", "show", str(s / "core-4242.img")), "tc.comm")
    one_error(cli("verify", str(s)), "tc.comm")


def test_profile_not_utf8(tmp_path):
    s = build(tmp_path)
    _append_field(s / M.DUMPER, 0, _string(4, b"linux-\xc3"), reseal=False)
    one_error(cli("verify", str(s)), "dumper.img", "field profile")


def test_file_path_not_utf8(tmp_path):
    s = build(tmp_path)
    # FileEntry.reg (field 3) .name (field 6), on the exe's entry
    _append_field(s / M.FILES, 1, _string(3, _string(6, b"/usr/\xfe")))
    one_error(cli("inspect", "info", str(s)), "files.img", "entry 1", "reg.name")


def test_unknown_profile_is_one_line(tmp_path):
    s = build(tmp_path)
    rewrite(s / M.DUMPER, lambda e: setattr(e[0], "profile", "no-such-kernel"))
    one_error(cli("verify", str(s)), "no-such-kernel")


def test_a_set_never_makes_dumper_run_code(tmp_path):
    """dumper.img's profile is data: a path there is not load_profile's Python file."""
    evil = tmp_path / "evil.py"
    ran = tmp_path / "ran"
    evil.write_text(f"open({str(ran)!r}, 'w').close()\n")
    s = build(tmp_path)
    rewrite(s / M.DUMPER, lambda e: setattr(e[0], "profile", str(evil)))
    for args in (["verify", str(s)], ["restore", str(s), "--verify"]):
        one_error(cli(*args), "is not a built-in kernel profile")
    assert not ran.exists()


# -- 8. the manifest and whole-set validation ------------------------------------------------


def test_metadata_corruption_is_refused(tmp_path):
    s = build(tmp_path)
    f = s / "mm-4243.img"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x04
    f.write_bytes(bytes(data))
    for args in (["inspect", "info", str(s)], ["inspect", "ps", str(s)], ["verify", str(s)]):
        one_error(cli(*args), "mm-4243.img: checksum mismatch")


def test_manifest_lists_every_file(tmp_path):
    s = build(tmp_path)
    (entry,) = codec.load(s / M.DUMPER).entries
    listed = {e.name for e in entry.images}
    assert listed == {n for n in os.listdir(s) if n != M.DUMPER and not n.startswith("pages-")}
    assert entry.format_version == 2 and entry.self_checksum


def test_unlisted_or_missing_image(tmp_path):
    s = build(tmp_path)
    (s / "cow-4242.img").write_bytes((s / "cow-4243.img").read_bytes())
    one_error(cli("inspect", "info", str(s)), "cow-4242.img: is not in dumper.img's manifest")
    (s / "cow-4242.img").unlink()
    (s / "guards-4243.img").write_bytes(b"")
    one_error(cli("inspect", "info", str(s)), "guards-4243.img: is not in dumper.img's")
    (s / "guards-4243.img").unlink()
    (s / "truth-4243.img").unlink()
    one_error(cli("inspect", "info", str(s)), "truth-4243.img: missing")


def test_dumper_img_sealed(tmp_path):
    s = build(tmp_path)
    rewrite(s / M.DUMPER, lambda e: setattr(e[0], "strategy", "lseek"), reseal=False)
    one_error(cli("inspect", "info", str(s)), "dumper.img is not the entry it was sealed as")
    resealed(s)

    def version_1(e):  # sealed as version 1 (seal() itself writes the current one)
        e[0].format_version = 1
        e[0].self_checksum = manifest._self_digest(e[0], e[0].images_algo)

    rewrite(s / M.DUMPER, version_1, reseal=False)
    one_error(cli("inspect", "info", str(s)), "format_version 1")


class SpyTarget:
    """A restore target that records every call: nothing may be created before validation."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append(name)


def _refused_before_creating(s: Path, *words: str) -> None:
    spy = SpyTarget()
    with ImageSet.open(s) as images, pytest.raises(ImageError) as e:
        restore(images, spy)
    assert spy.calls == [], spy.calls
    for w in words:
        assert w in str(e.value), str(e.value)
    one_error(cli("restore", str(s)), *words)


def test_cow_cycle_refused_before_restore(tmp_path):
    """Heap page 3 of each task "shared" with the other's: each run's source is held (by
    COW), so only following the chain shows it leads nowhere."""
    from dumper.images import golden
    from dumper.images.proto import dumper_images_pb2 as own

    s = build(tmp_path)
    page3 = golden.HEAP + 3 * P
    (s / M.cow(4242)).write_bytes(codec.encode(codec.BY_NAME["COW"], [
        own.CowEntry(pid=4242, vaddr=page3, nr_pages=1, src_pid=4243, src_vaddr=page3)]))
    rewrite(s / M.cow(4243), lambda e: e.append(own.CowEntry(
        pid=4243, vaddr=page3, nr_pages=1, src_pid=4242, src_vaddr=page3)))
    _refused_before_creating(s, "cow-4242.img", "COW chain deeper than")


def test_missing_thread_core_refused_before_restore(tmp_path):
    s = build(tmp_path)
    rewrite(s / M.PSTREE, lambda e: e[0].threads.append(4250))
    _refused_before_creating(s, "core-4250.img: missing")


def test_duplicate_thread_refused(tmp_path):
    s = build(tmp_path)
    rewrite(s / M.PSTREE, lambda e: e[1].threads.append(4242))
    _refused_before_creating(s, "thread id 4242")


def test_referenced_file_refused_before_restore(tmp_path):
    from dumper.images.records import Vma
    from dumper.images.writer import ImageSetWriter
    from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE

    out = tmp_path / "s"
    with ImageSetWriter(out, profile="linux-6.18") as w:
        w.add_task(1, 0, "t", [Vma(0x100000, 0x102000, 3, MAP_PRIVATE | MAP_ANONYMOUS),
                               Vma(0x200000, 0x201000, 1, MAP_PRIVATE, path="/etc/hostname")])
        w.add_private_pages(1, [(0x100000, 1)], [b"x" * P])
    _refused_before_creating(out, "/etc/hostname", "references but does not hold")


def test_a_referenced_fifo_is_never_read(tmp_path):
    """verify reads the pages of files a set references: a FIFO named there is refused."""
    from dumper.images.records import Vma
    from dumper.images.validate import check_set
    from dumper.images.writer import ImageSetWriter
    from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "s"
    with ImageSetWriter(out, profile="linux-6.18", host_kind="linux") as w:
        w.add_task(1, 0, "t", [Vma(0x100000, 0x102000, 3, MAP_PRIVATE | MAP_ANONYMOUS),
                               Vma(0x200000, 0x201000, 1, MAP_PRIVATE, path=str(fifo))])
        w.add_private_pages(1, [(0x100000, 1)], [b"x" * P])
    with ImageSet.open(out) as s, pytest.raises(ImageError, match="which is a FIFO"):
        check_set(s, live=True)


def test_criu_like_set_validates_whole(tmp_path):
    """A set without dumper.img (CRIU's kind): the structural checks alone, and they pass."""
    from dumper.images.validate import check_set

    s = build(tmp_path)
    for name in (M.DUMPER, M.OBJECTS):
        (s / name).unlink()
    for name in os.listdir(s):
        if name.startswith(("truth-", "cow-")):
            (s / name).unlink()
    with ImageSet.open(s) as images:
        check_set(images)
        assert images.meta is None


# -- 5. debris: stale temporary directories --------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporary_directories_removed_by_next_dump(tmp_path):
    dead = tmp_path / f".out.dumper-tmp-{_dead_pid()}-12345-abcd1234"
    old = tmp_path / f".out.dumper-old-{_dead_pid()}-1-x"
    other = tmp_path / f".other.dumper-tmp-{_dead_pid()}-1-y"
    me = tempdirs.make(tmp_path / "out")  # a live owner: kept
    reused = tmp_path / f".out.dumper-tmp-{os.getpid()}-1-z"  # our pid, another start time
    foreign = tmp_path / ".out.XYZ12345"  # not ours by name: never touched
    for d in (dead, old, other, reused, foreign):
        d.mkdir()
        (d / "pages-1.img").write_bytes(b"x" * 100)
    cli("dump", "--scenario", "14-private-cow-baseline", "-o", str(tmp_path / "out"), code=0)
    left = set(os.listdir(tmp_path))
    assert dead.name not in left and old.name not in left and reused.name not in left
    assert {other.name, me.name, foreign.name, "out"} <= left
    r = cli("gc", str(tmp_path), code=0)
    assert f"removed {other}" in r.output and "1 stale temporary directory removed" in r.output
    assert set(os.listdir(tmp_path)) == {me.name, foreign.name, "out"}
    me.rmdir()


def test_gc_refuses_a_non_directory(tmp_path):
    one_error(cli("gc", str(tmp_path / "nope")), "not a directory")


# -- 7. errors name OUT; parents 0700 --------------------------------------------------------


def test_missing_parents_created_0700(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    cli("dump", "--scenario", "14-private-cow-baseline", "-o", str(out), code=0)
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert os.stat(d).st_mode & 0o777 == 0o700


BIG = """task A
mmap A buf 2048 private
write A buf all
dump A
"""


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_names_out(tmp_path, small_tmpfs):
    scn = tmp_path / "big.scn"
    scn.write_text(BIG)
    out = small_tmpfs / "out"
    line = one_error(cli("dump", "--scenario", str(scn), "-o", str(out)),
                     f"{out}: No space left on device")
    assert "dumper-tmp" not in line
    assert os.listdir(small_tmpfs) == []  # nothing half-written left


def test_read_only_directory_names_out(tmp_path, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    out = small_tmpfs / "out"
    line = one_error(cli("dump", "--scenario", "14-private-cow-baseline", "-o", str(out)),
                     f"{out}: Read-only file system")
    assert "dumper-tmp" not in line


def test_a_set_that_lost_dumper_img_is_not_taken_for_a_criu_set(tmp_path):
    """Without dumper.img a set reads as CRIU's, and nothing would notice a missing
    cow-PID.img (a restore came back with the child's pages missing, 'nothing lost'): a set
    holding dumper's own images without dumper.img is one error naming it."""
    d = build(tmp_path)
    own = sorted(n for n in os.listdir(d) if n.startswith(("truth-", "cow-", "objects")))
    assert own, os.listdir(d)
    (d / M.DUMPER).unlink()
    for n in own[1:]:
        (d / n).unlink()
    one_error(cli("inspect", "info", str(d)), "dumper.img", "missing", own[0])
    one_error(cli("restore", str(d), "--verify"), "dumper.img", "missing")
