"""The memory side of a restore on Linux (issue 12): hugetlb objects and memory in huge
pages with their data and holes, a corrupt pages image failing before the tree runs though
its checksum is checked while the pages go in, and poison markers.

The cycles go through tests/linux/rst_cycle.py as in test_linux_restore.py: dumper dumps
the self-checking program, the tree is killed, `dumper restore -d` brings it back and the
program checks itself after SIGUSR1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_linux_restore import CPROGS, ROOT, cycle

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
COMPACT = "/proc/sys/vm/compact_memory"
FREE_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
HUGE_NEEDED = 12  # rst_hugetlb.c: 4 + 2 + 4 + 2 huge pages reserved by its mappings


def _build(name: str, out: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the test programs")
    exe = out / name
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), str(CPROGS / f"{name}.c")],
                   check=True, capture_output=True)
    return exe


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


@pytest.fixture
def huge_pool() -> Iterator[int]:
    """HUGE_NEEDED more free 2 MiB huge pages (vm.nr_hugepages raised), the old value put
    back whatever happens; a skip when the kernel cannot give them."""
    if not os.path.exists(NR_HUGEPAGES) or not os.path.exists(FREE_2M):
        pytest.skip("no hugetlb 2 MiB pages on this kernel")
    old = _read(NR_HUGEPAGES)
    try:
        for _ in range(3):  # memory too fragmented for 2 MiB pages: compact it
            try:
                _write(NR_HUGEPAGES, old + HUGE_NEEDED + 4)
            except OSError as e:
                pytest.skip(f"cannot raise vm.nr_hugepages: {e.strerror}")
            if _read(FREE_2M) >= HUGE_NEEDED:
                break
            _write(COMPACT, 1)
            time.sleep(0.2)
        if _read(FREE_2M) < HUGE_NEEDED:
            pytest.skip(f"the kernel gave {_read(FREE_2M)} free huge pages, {HUGE_NEEDED} needed")
        yield old
    finally:
        _write(NR_HUGEPAGES, old)


def _passed(res: dict) -> None:
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"


def test_hugetlb_objects_come_back_in_huge_pages_with_data_and_holes(huge_pool, tmp_path):
    """MAP_SHARED|MAP_HUGETLB (shared with a child), a MFD_HUGETLB memfd, SysV SHM_HUGETLB
    and private MAP_HUGETLB: data, the allocated huge pages (holes) and 2 MiB
    KernelPageSize, checked by the program itself before the dump and after the restore."""
    exe = _build("rst_hugetlb", tmp_path)
    _passed(cycle(exe, tmp_path / "run", "dumper"))


def _dump_and_kill(exe: Path, work: Path, *dump_args: str) -> tuple[int, Path]:
    """Start exe (its own session), dump its tree, kill it (group) and wait until every pid
    of it is free; (root pid, images)."""
    out = work / "out.txt"
    with open(out, "w") as f:
        p = subprocess.Popen([str(exe)], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             start_new_session=True, cwd=work)
    images = work / "images"
    try:
        deadline = time.monotonic() + 30
        while "READY" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "READY" in out.read_text(), out.read_text()
        r = subprocess.run([sys.executable, "-m", "dumper.cli", "dump", "--pid", str(p.pid),
                            "--tree", "--leave-out", "any", "-o", str(images), *dump_args],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for pid in kids:  # reparented to init, which reaps them (or to us, when we are init:
        deadline = time.monotonic() + 10  # a run under unshare -pf, as CI's)
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
    return p.pid, images


def _restore(images: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper.cli", "restore", str(images), "-d",
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_no_huge_pages_left_is_one_line_naming_the_object(huge_pool, tmp_path):
    """The pool shrunk before the restore: the first hugetlb object cannot be made;
    one line naming it and the huge pages, exit 2, nothing left running."""
    exe = _build("rst_hugetlb", tmp_path)
    root, images = _dump_and_kill(exe, tmp_path)
    # 2 free pages left (others' in use are kept); the fixture puts the old value back
    _write(NR_HUGEPAGES, _read(NR_HUGEPAGES) - _read(FREE_2M) + 2)
    if _read(FREE_2M) >= HUGE_NEEDED:
        pytest.skip("the huge page pool could not be shrunk for this test")
    r = _restore(images)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("dumper: error: ") and "huge pages" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{root}"), "a failed restore left a task behind"


def test_a_corrupt_pages_image_fails_before_the_tree_runs(tmp_path):
    """The checksums are checked while the pages are written (one read of the page cache):
    a flipped byte in the middle of a pages image still stops the restore, in one line
    naming the image, exit 2, and the tree that was being made is killed."""
    exe = _build("mem_fp", tmp_path)
    root, images = _dump_and_kill(exe, tmp_path)
    pages = max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as f:
        f.seek(pages.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    r = _restore(images)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert pages.name in r.stderr and "checksum mismatch" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{root}"), "a failed restore left its tree behind"


def test_poison_markers_come_back(tmp_path):
    """UFFDIO_POISON markers in private anonymous memory (the child's inherited by fork)
    and in a MAP_SHARED anonymous mapping of the parent only: SIGBUS there after the
    restore, the pagemap word a poison marker again, the neighbours' data and holes kept."""
    exe = _build("rst_poison", tmp_path)
    _passed(cycle(exe, tmp_path / "run", "dumper"))


def test_a_zstd_set_restores_and_verifies(tmp_path):
    """A compressed set goes in through the same views (each decompressed frame's) and
    its checksums are checked the same way: restore --verify finds nothing lost."""
    exe = _build("mem_fp", tmp_path)
    root, images = _dump_and_kill(exe, tmp_path, "--compress", "zstd")
    r = _restore(images, "--verify")
    try:
        assert r.returncode == 0, r.stderr
        assert "nothing lost" in r.stderr + r.stdout, r.stderr
    finally:
        if os.path.exists(f"/proc/{root}"):
            os.kill(root, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{root}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(root, os.WNOHANG)
            time.sleep(0.02)
