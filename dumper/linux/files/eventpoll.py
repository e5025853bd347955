"""epoll sets (CRIU's eventpoll.c): each target's fd number, events and data, and what
identifies the target file, from fdinfo (fs/eventpoll.c ep_show_fdinfo: "tfd: %8d events:
%8x data: %16llx  pos:%lli ino:%lx sdev:%x"). The targets are restored from the owner's
own fds, so each must be a descriptor the dump records."""

from __future__ import annotations

import os
import re

from dumper.linux.files.common import RAW, base_state
from dumper.state import FdState

_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)"
                  r"(?:\s+pos:\s*(-?\d+)\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+))?")


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    del pid
    out = base_state(fd, "eventpoll", link, st, info)
    for m in _TFD.finditer(info.get(RAW, "")):
        tfd, events, data, pos, ino, sdev = m.groups()
        out.targets.append((int(tfd), int(events, 16), int(data, 16), int(pos or 0),
                            int(ino or "0", 16), int(sdev or "0", 16)))
    return out
