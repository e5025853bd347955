"""signalfd (CRIU's signalfd.c): its flags and signal mask, from fdinfo (fs/signalfd.c
signalfd_show_fdinfo: "sigmask: %016llx"; the mask of signals it takes)."""

from __future__ import annotations

import os

from dumper.linux.files.common import base_state
from dumper.state import FdState


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    del pid
    out = base_state(fd, "signalfd", link, st, info)
    out.counter = int(info["sigmask"], 16)
    return out
