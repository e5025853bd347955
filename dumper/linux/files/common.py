"""What every kind of descriptor shares: fdinfo parsing, the common FdState fields."""

from __future__ import annotations

import os

from dumper.state import FdState

RAW = "_text"  # the whole fdinfo text, for kinds with repeated lines (epoll's tfd:)


def parse_fdinfo(text: str) -> dict[str, str]:
    """/proc/PID/fdinfo/N: "key:\tvalue" lines (fs/proc/fd.c seq_show)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def base_state(fd: int, kind: str, link: str, st: os.stat_result, info: dict[str, str]
               ) -> FdState:
    """The fields every kind shares: fdinfo flags (octal, with O_CLOEXEC standing for the
    fd's FD_CLOEXEC: fs/proc/fd.c seq_show) and pos."""
    flags = int(info.get("flags", "0"), 8)
    return FdState(fd=fd, kind=kind, cloexec=bool(flags & os.O_CLOEXEC),
                   flags=flags & ~os.O_CLOEXEC, pos=int(info.get("pos", "0")), path=link,
                   ino=st.st_ino, dev=st.st_dev, mode=st.st_mode)
