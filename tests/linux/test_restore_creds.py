"""A restore gives every thread its credentials and security state back: ids, groups, all
five capability sets, securebits, no_new_privs (rst_creds.c checks them itself, both
threads, against what /proc showed before the dump), and seccomp strict mode
(rst_seccomp.c: a child in strict mode still dies of a forbidden call). Capabilities the
restorer lacks are refused in one line before anything is made. Seccomp filters:
test_restore_seccomp.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from dumper.images import codec

from .rst_build import build
from .test_linux_restore import CRIU, ROOT, _passed, _restore, cycle

PROGRAMS = {"rst_creds": ("rst_creds",), "rst_creds_root": ("rst_creds", "-DSTAY_ROOT"),
            "rst_seccomp": ("rst_seccomp",)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cprogs"), PROGRAMS)


def _need_criu() -> None:
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")


@pytest.mark.parametrize("name", ["rst_creds", "rst_creds_root", "rst_seccomp"])
def test_dumper_set_keeps_creds_and_security(name, built, tmp_path):
    _passed(cycle(built / name, tmp_path, "dumper"))


# rst_creds itself (other uids) cannot be dumped by CRIU here: restore.md §8.3.
@pytest.mark.parametrize("name", ["rst_creds_root", "rst_seccomp"])
def test_criu_set_keeps_creds_and_security(name, built, tmp_path):
    _need_criu()
    _passed(cycle(built / name, tmp_path, "criu", "--shell-job"))


def test_creds_in_a_new_pid_namespace(built, tmp_path):
    _passed(cycle(built / "rst_creds", tmp_path, "dumper", "--pidns"))


def test_capabilities_the_restorer_lacks_are_refused(tmp_path):
    """A CRIU set whose task holds a capability root lacks here (one more bit than ours
    in its permitted set): one line naming it, exit 2, nothing made."""
    _need_criu()
    p = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    images = tmp_path / "images"
    images.mkdir()
    try:
        time.sleep(0.1)
        r = subprocess.run([str(CRIU), "dump", "-t", str(p.pid), "-D", str(images),
                            "--shell-job", "-o", "dump.log"], capture_output=True, text=True)
        assert r.returncode == 0, (images / "dump.log").read_text()[-2000:]
    finally:
        p.kill()
        p.wait()
    with open("/proc/self/status") as f:
        ours = int(next(line.split()[1] for line in f if line.startswith("CapPrm:")), 16)
    lacking = next(b for b in range(64) if not ours >> b & 1)
    core = images / f"core-{p.pid}.img"
    img = codec.load(core)
    creds = img.entries[0].thread_core.creds
    creds.cap_prm[lacking // 32] |= 1 << lacking % 32
    core.write_bytes(codec.encode(img.kind, img.entries))
    r = _restore(images, "-d", "--shell-job")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dumper: error: task {p.pid} thread {p.pid}: its permitted capabilities [{lacking}] "
        "are not ours to give (the restorer lacks them); nothing was created"], r.stderr
    assert ROOT.exists()
