"""Regular files, directories and device nodes opened by path (CRIU's files-reg.c)."""

from __future__ import annotations

import os
import stat

from dumper.linux import buildid
from dumper.linux.files.common import base_state
from dumper.state import FdState


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    """The path and what identifies the file: its size for a regular file (CRIU checks it
    at restore), its mode always."""
    out = base_state(fd, "reg", link, st, info)
    if stat.S_ISREG(st.st_mode):
        out.size = st.st_size
        out.build_id = buildid.build_id(f"/proc/{pid}/fd/{fd}")
    return out
