"""memfd descriptors (CRIU's memfd.c): flags and position; the inode (name, size, seals,
contents) is the shared object the memory dump stores once, found by its inode number."""

from __future__ import annotations

import os

from dumper.linux.files.common import base_state
from dumper.state import FdState


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    del pid
    return base_state(fd, "memfd", link, st, info)
