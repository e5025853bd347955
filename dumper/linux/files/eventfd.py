"""eventfd (CRIU's eventfd.c): its flags and count, from fdinfo (fs/eventfd.c
eventfd_show_fdinfo: "eventfd-count: %16llx")."""

from __future__ import annotations

import os

from dumper.linux.files.common import base_state
from dumper.state import FdState


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    del pid
    out = base_state(fd, "eventfd", link, st, info)
    out.counter = int(info.get("eventfd-count", "0"), 16)
    return out
