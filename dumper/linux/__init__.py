"""The real-kernel side: LinuxHost and the /proc, ptrace and syscall pieces it is built from.

procfs    tree discovery, maps, smaps, stat
pagemap   pagemap words in batches; the PAGEMAP_SCAN ioctl
mapfiles  /proc/PID/map_files: identity, SEEK_DATA/SEEK_HOLE, pread, mincore via own mapping
memread   /proc/PID/mem reads of private memory, only of pages that hold data; pooled buffers
truth     the ground truth: a blake2b-64 digest of every page as the task would read it
digestcache  digests of what a dump read, computed beside it while frozen, for truth()
freeze    PTRACE_SEIZE/INTERRUPT freezing that always thaws
check     what this kernel offers (`dumper check`)
host      LinuxHost
"""

from typing import Any

from dumper.linux.errors import ProcError, UnreadableMemory, Unsupported

__all__ = ["LinuxHost", "ProcError", "UnreadableMemory", "Unsupported"]


def __getattr__(name: str) -> Any:
    """LinuxHost on first use: a restore, which needs only the rst_* modules, does not pay
    for importing the dump side."""
    if name == "LinuxHost":
        from dumper.linux.host import LinuxHost

        return LinuxHost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
