"""The writer's temporary directories: named for their owner, so the debris of a killed dump
is recognised and removed.

A set is written into `.OUT.dumper-tmp-PID-START-XXXXXXXX` beside OUT (PID and START: the
writing process and its start time in clock ticks since boot, field 22 of /proc/PID/stat, so
a reused pid is not taken for the owner) and renamed into place; a replaced set waits in
`.OUT.dumper-old-PID-START-XXXXXXXX` until it is removed. SIGKILL leaves either behind. The
next writer of OUT removes the ones whose owner is gone (stale()), and `dumper gc DIR` those
of every OUT in DIR. A directory is removed only when its name has this form, it is a real
directory (not a link) owned by the caller's uid, and its owner process is gone or is
another process than the one that made it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from dumper import interrupts

_FORM = re.compile(r"\.(?P<out>.+)\.dumper-(?P<what>tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-\w+\Z")


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (starttime, proc_pid_stat in fs/proc/array.c), None when
    the process is gone. comm may hold spaces and parentheses: split after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[19])


# This process's directories not yet renamed into place or removed: what an interrupt
# (dumper.interrupts) removes on its way out, wherever in the writer the signal landed.
_mine: set[Path] = set()


def make(out: Path, what: str = "tmp") -> Path:
    """A fresh temporary directory (mode 0700) beside out, named for this process and
    registered as ours (signals held meanwhile, so none lands between the two)."""
    pid = os.getpid()
    prefix = f".{out.name}.dumper-{what}-{pid}-{_start_time(pid) or 0}-"
    with interrupts.held():
        p = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
        _mine.add(p)
    return p


def release(p: Path) -> None:
    """p was renamed into place or removed: no longer ours to clean up."""
    _mine.discard(p)


def remove_mine() -> None:
    """Remove every directory make() gave this process that is still there."""
    for p in sorted(_mine):
        shutil.rmtree(p, ignore_errors=True)
    _mine.clear()


def owner_alive(name: str) -> bool:
    """Whether the process that made the temporary directory called name still runs."""
    m = _FORM.match(name)
    if m is None:
        return True  # not ours: never "stale"
    pid, start = int(m["pid"]), int(m["start"])
    return _start_time(pid) == start if start else _start_time(pid) is not None


def stale(directory: Path, out_name: str | None = None) -> list[Path]:
    """Temporary directories in directory (of out_name only, if given) whose owner is gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        m = _FORM.match(name)
        if m is None or (out_name is not None and m["out"] != out_name):
            continue
        try:
            st = os.lstat(directory / name)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not owner_alive(name):
            found.append(directory / name)
    return found


def remove_stale(directory: Path, out_name: str | None = None) -> list[Path]:
    """Remove stale() directories; returns those removed."""
    removed = []
    for p in stale(directory, out_name):
        shutil.rmtree(p, ignore_errors=True)
        if not os.path.lexists(p):
            removed.append(p)
    return removed
