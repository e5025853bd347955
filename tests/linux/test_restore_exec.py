"""A tree whose tasks exec'd other programs restores: each task's address space is rebuilt
as its own images have it, not as the parent it is cloned from had it (its [vdso]/[vvar]
where its exec put them, its exe link, auxv and mm fields).

The programs (tests/linux/cprogs/rst_exec_*.c, rst_progs/py_exec.py) check themselves
after the restore (rst_exec.h: the vdso where maps, the kernel's auxv and libc say, and
clock_gettime through it; /proc/self/exe; pid and parent) and each parent checks its
child's exit status. rst_cycle.py dumps (dumper's or CRIU 4.2's), kills, restores with
dumper -d and signals; criu_cycle.py is the control: CRIU 4.2 restores its own dump (and
dumper's) of the same tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CPROGS = HERE / "cprogs"
CRIU = Path(os.environ.get("DUMPER_CRIU", "/var/cache/dumper/criu-4.2/criu"))
ROOT = HERE.parents[1]

# name -> what the tree is
TREES = {
    "exec_parent": "C parent -> child that exec'd rst_exec_child",
    "exec_tree3": "C root -> exec'd middle -> grandchild forked by the middle (its layout)",
    "shell_job": "a shell job: sh script -> `rst_exec_child - &`, wait (a trap passes "
                 "SIGUSR1 on)",
    "py_exec": "Python parent -> child that exec'd rst_exec_child",
    "exec_norand": "exec_tree3 under setarch -R (no ASLR): parent and exec'd child map "
                   "different files at the same addresses, the vdso at the same place",
}
JOB = """#!/bin/sh
exec >>out.txt 2>/dev/null
{child} - &
c=$!
trap 'got=1; kill -USR1 $c' USR1
wait $c
wait $c
s=$?
[ -n "$got" ] || exit 3  # killed after the dump: out.txt stays as dumped (and stderr
# is not there: dash would say "Killed" of its job)
if [ $s -eq 0 ]; then echo "PASS sh: job exited 0"; else echo "FAIL sh: job exited $s"; fi
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("gcc") is None or shutil.which("setarch") is None:
        pytest.skip("needs gcc to build the test programs, and setarch")
    out = tmp_path_factory.mktemp("execprogs")

    def gcc(name: str, src: str, *flags: str) -> Path:
        subprocess.run(["gcc", "-O1", "-Wall", "-Werror", *flags, "-o", str(out / name),
                        str(CPROGS / src)], check=True, capture_output=True)
        return out / name

    child = gcc("rst_exec_child", "rst_exec_child.c")
    job = out / "shell_job.sh"
    job.write_text(JOB.format(child=child))
    job.chmod(0o755)
    tree3 = gcc("exec_tree3", "rst_exec_parent.c", "-DMIDDLE")
    norand = out / "exec_norand.sh"
    norand.write_text(f"#!/bin/sh\nexec setarch -R {tree3}\n")
    norand.chmod(0o755)
    return {"exec_parent": gcc("exec_parent", "rst_exec_parent.c"),
            "exec_tree3": tree3, "exec_norand": norand,
            "shell_job": job, "py_exec": HERE / "rst_progs" / "py_exec.py", "child": child}


def cycle(harness: str, program: Path, work: Path, how: str, child: Path, *args: str
          ) -> dict:
    """One dump/kill/restore/signal cycle by HARNESS (rst_cycle.py: dumper restores,
    criu_cycle.py: CRIU 4.2 does); its JSON report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RST_EXEC_CHILD=str(child))
    r = subprocess.run([sys.executable, str(HERE / harness), str(CRIU), str(program),
                        str(work), how, *args], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _passed(res: dict, tasks_passing: int) -> None:
    assert res["ok"], f"{res['stage']}: {res['out']}\n{res['log']}"
    # every program that prints a verdict printed PASS (a parent also checked its child)
    assert res["out"].count("PASS") == tasks_passing, res["out"]


def _criu() -> None:
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU} (.ci/run builds it with "
                    "../shared/vendor/build-criu.sh)")


@pytest.mark.parametrize("name", sorted(TREES))
def test_dumper_restores_an_exec_tree(name, built, tmp_path):
    _passed(cycle("rst_cycle.py", built[name], tmp_path, "dumper", built["child"]), 2)


@pytest.mark.parametrize("name", sorted(TREES))
def test_dumper_restores_criu_dump_of_an_exec_tree(name, built, tmp_path):
    """CRIU 4.2's dump of the same tree, restored by dumper; and restored by CRIU itself
    (the control: the tree is one CRIU can bring back)."""
    _criu()
    _passed(cycle("rst_cycle.py", built[name], tmp_path / "d", "criu", built["child"],
                  "--shell-job"), 2)
    prog = built[name]
    argv = (Path(sys.executable), str(prog)) if prog.suffix == ".py" else (prog,)
    _passed(cycle("criu_cycle.py", argv[0], tmp_path / "c", "criu", built["child"],
                  *argv[1:]), 2)


def test_criu_restores_dumper_dump_of_an_exec_tree(built, tmp_path):
    _criu()
    _passed(cycle("criu_cycle.py", built["exec_tree3"], tmp_path, "dumper",
                  built["child"]), 2)


# -- the dumped vdso against this kernel's (rst_vdso) -------------------------------------
def _our_vdso() -> bytes:
    import ctypes

    from dumper.linux.inject import vdso_range

    a, b = vdso_range(os.getpid())
    return ctypes.string_at(a, b - a)


def _sym_value_offset(image: bytes, name: str) -> int:
    """Where name's st_value is in image (its .dynsym, from the section headers)."""
    import struct

    shoff, = struct.unpack_from("<Q", image, 0x28)
    shnum, = struct.unpack_from("<H", image, 0x3C)
    sects = [struct.unpack_from("<IIQQQQII", image, shoff + 64 * i) for i in range(shnum)]
    dynsym = next(s for s in sects if s[1] == 11)  # SHT_DYNSYM
    strtab = sects[dynsym[6]][4]
    for at in range(dynsym[4], dynsym[4] + dynsym[5], 24):
        st_name, = struct.unpack_from("<I", image, at)
        if image[strtab + st_name:].split(b"\0", 1)[0] == name.encode():
            return at + 8
    raise KeyError(name)


def test_vdso_of_this_kernel_passes_and_another_build_with_the_same_entries_too():
    from dumper.linux.rst_vdso import check_vdso, vdso_symbols

    ours = _our_vdso()
    syms = vdso_symbols(ours)
    assert "__vdso_clock_gettime" in syms and "__vdso_gettimeofday" in syms, syms
    check_vdso(ours, ours, "task 1")
    check_vdso(ours[:4096], ours, "task 1")  # a dump holds the pages the task touched
    other = bytearray(ours)
    text = syms["__vdso_time"] + 1  # code changed, no entry moved
    other[text] ^= 0xFF
    check_vdso(bytes(other), ours, "task 1")


def test_vdso_with_a_moved_entry_or_other_size_is_a_clear_error():
    import struct

    from dumper.linux.rst_vdso import VdsoError, check_vdso

    ours = _our_vdso()
    moved = bytearray(ours)
    at = _sym_value_offset(ours, "__vdso_clock_gettime")
    struct.pack_into("<Q", moved, at, struct.unpack_from("<Q", ours, at)[0] + 16)
    with pytest.raises(VdsoError, match=r"task 7: the dumped \[vdso\] has "
                       r"__vdso_clock_gettime at 0x[0-9a-f]+, this kernel's at 0x[0-9a-f]+: "
                       "dumped on another kernel"):
        check_vdso(bytes(moved), ours, "task 7")
    with pytest.raises(VdsoError, match=rf"is {len(ours) + 4096} bytes, this kernel's "
                       rf"{len(ours)}:"):
        check_vdso(ours + bytes(4096), ours, "task 7")
    with pytest.raises(VdsoError, match="its symbols cannot be read"):
        check_vdso(b"\0" * 4096, ours, "task 7")
