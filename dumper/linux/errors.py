"""Errors of the real-Linux host: each carries a one-line message naming the pid and the file."""

from __future__ import annotations

import errno
import os

GONE = "gone"
PERMISSION = "permission"


class ProcError(Exception):
    """A question about a task failed: the task is gone, we lack permission, or the kernel
    refused. ``reason`` is GONE, PERMISSION or the errno name; ``errno`` the raw errno."""

    def __init__(self, pid: int, path: str, err: int, detail: str = "") -> None:
        self.pid = pid
        self.path = path
        self.errno = err
        if err in (errno.ENOENT, errno.ESRCH):
            self.reason = GONE
            what = "no such process (gone)"
        elif err in (errno.EACCES, errno.EPERM):
            self.reason = PERMISSION
            what = "permission denied (run as root, or with CAP_SYS_PTRACE and "
            what += "CAP_CHECKPOINT_RESTORE)"
        elif err:
            self.reason = errno.errorcode.get(err, str(err))
            what = f"{self.reason} ({os.strerror(err)})"
        else:
            self.reason = "missing"
            what = "not found"
        msg = f"pid {pid}: {path}: {what}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)

    @classmethod
    def from_os(cls, pid: int, path: str, exc: OSError, detail: str = "") -> ProcError:
        return cls(pid, path, exc.errno or 0, detail)


class Unsupported(Exception):
    """A question this kernel, or this way of asking, cannot answer (one line, says why)."""


class UnreadableMemory(OSError):
    """Pages /proc/PID/mem could not read (guard pages, VM_IO/VM_PFNMAP, ...): an OSError
    with errno EFAULT, so a caller that reads in chunks (dump.read_runs) falls back page by
    page."""

    def __init__(self, pid: int, ranges: list[tuple[int, int]]) -> None:
        self.pid = pid
        self.ranges = ranges
        shown = ", ".join(f"{s:#x}-{e:#x}" for s, e in ranges[:4])
        more = f" and {len(ranges) - 4} more" if len(ranges) > 4 else ""
        super().__init__(errno.EFAULT, f"pid {pid}: /proc/{pid}/mem cannot read {shown}{more}")

    def __str__(self) -> str:
        return str(self.strerror)
