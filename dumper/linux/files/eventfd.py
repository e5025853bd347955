"""eventfd (CRIU's eventfd.c): its flags and count, from fdinfo (fs/eventfd.c
eventfd_show_fdinfo: "eventfd-count: %16llx", "eventfd-semaphore: %d"). EFD_SEMAPHORE is in
no f_flags bit and CRIU's EventfdFileEntry has no field for it: such an eventfd is refused
(CRIU dumps it and restores a plain counter)."""

from __future__ import annotations

import os

from dumper.linux.errors import Unsupported
from dumper.linux.files.common import base_state
from dumper.state import FdState


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    if info.get("eventfd-semaphore", "0") != "0":
        raise Unsupported(f"pid {pid}: fd {fd}: an eventfd in semaphore mode (EFD_SEMAPHORE): "
                          "CRIU's images have no field for it (leave it out with --leave-out "
                          "eventfd)")
    out = base_state(fd, "eventfd", link, st, info)
    out.counter = int(info.get("eventfd-count", "0"), 16)
    return out
