"""The open files of a task, one module per kind, one table keyed by what fd links name.

As CRIU's files.c dispatches on the file's type to files-reg.c, pipes.c, ...: each kind's
module has `collect(pid, fd, link, st, fdinfo) -> FdState`. A descriptor of a kind with no
module is an error naming pid, fd and kind, unless the caller lets that kind be left out
(the restore then lacks that descriptor).
"""

from __future__ import annotations

import os
import stat as st_mod
from collections.abc import Callable, Collection

from dumper.linux.errors import ProcError, Unsupported
from dumper.linux.files import (
    eventfd,
    eventpoll,
    memfd,
    pipe,
    reg,
    signalfd,
    socket,
    timerfd,
    tty,
)
from dumper.linux.files.common import RAW, parse_fdinfo
from dumper.state import FdState

Collector = Callable[[int, int, str, os.stat_result, dict[str, str]], FdState]

ANY = "any"  # leave out every kind no module knows
# kind -> collector; the kind is also the CRIU fd type's name in lower case.
KINDS: dict[str, Collector] = {"reg": reg.collect, "pipe": pipe.collect,
                               "eventfd": eventfd.collect, "eventpoll": eventpoll.collect,
                               "memfd": memfd.collect, "socket": socket.collect,
                               "signalfd": signalfd.collect, "timerfd": timerfd.collect,
                               "tty": tty.collect}


def fd_kind(link: str, st: os.stat_result) -> str:
    """What an fd is, from its /proc/PID/fd link and fstat (fs/proc/fd.c, fs/d_path.c:
    pipes print "pipe:[ino]", sockets "socket:[ino]", anon inodes "anon_inode:NAME")."""
    if link.startswith("pipe:["):
        return "pipe"
    if st_mod.S_ISFIFO(st.st_mode):
        return "fifo"
    if link.startswith("socket:["):
        return "socket"
    if link.startswith("anon_inode:"):
        return link.removeprefix("anon_inode:").strip("[]") or "anon_inode"
    if link.startswith("/memfd:"):
        return "memfd"
    if link.startswith("/dev/pts/") or link in ("/dev/tty", "/dev/ptmx", "/dev/console"):
        return "tty"
    if link.endswith(" (deleted)"):
        return "deleted"
    if link.startswith("/"):
        return "reg"
    return link.split(":", 1)[0] or "unknown"


def collect_fds(pid: int, leave_out: Collection[str] = ()) -> list[FdState]:
    """Every descriptor of pid, in fd order; Unsupported for a kind no module knows."""
    base = f"/proc/{pid}/fd"
    try:
        fds = sorted(int(n) for n in os.listdir(base))
    except OSError as e:
        raise ProcError.from_os(pid, base, e) from None
    out = []
    for fd in fds:
        try:
            link = os.readlink(f"{base}/{fd}")
            st = os.stat(f"{base}/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
            info = parse_fdinfo(text)
            info[RAW] = text
        except FileNotFoundError:
            continue  # closed meanwhile (a thread of a frozen task cannot; a race is harmless)
        except OSError as e:
            raise ProcError.from_os(pid, f"{base}/{fd}", e) from None
        kind = fd_kind(link, st)
        collector = KINDS.get(kind)
        if kind in leave_out or (collector is None and ANY in leave_out):
            continue
        if collector is None:
            raise Unsupported(f"pid {pid}: fd {fd} is {_article(kind)} {kind} ({link}): dumper "
                              "cannot dump that kind of file yet (leave it out with "
                              f"--leave-out {kind})")
        try:
            out.append(collector(pid, fd, link, st, info))
        except Unsupported:  # a kind with a module, but not this variant (a connected socket)
            if ANY not in leave_out:
                raise
    return out


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
