"""timerfd (CRIU's timerfd.c): clock, expirations not yet read, time left and interval,
from fdinfo (fs/timerfd.c timerfd_show: "clockid: %d", "ticks: %llu", "settime flags: 0%o",
"it_value: (%llu, %llu)", "it_interval: (%llu, %llu)")."""

from __future__ import annotations

import os
import re

from dumper.linux.files.common import base_state
from dumper.state import FdState

_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    del pid
    out = base_state(fd, "timerfd", link, st, info)
    value = _PAIR.match(info["it_value"])
    interval = _PAIR.match(info["it_interval"])
    assert value is not None and interval is not None, info
    out.timer = dict(clockid=int(info["clockid"]), ticks=int(info["ticks"]),
                     settime_flags=int(info["settime flags"], 8),
                     vsec=int(value[1]), vnsec=int(value[2]),
                     isec=int(interval[1]), insec=int(interval[2]))
    return out
