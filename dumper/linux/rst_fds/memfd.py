"""memfd descriptors (CRIU's memfd.c): the object the memory restore made (by shmid),
reopened through our own fd of it (the same file: its name and seals), at its offset."""

from __future__ import annotations

import errno

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.state import FdState


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    obj = fs.objects.get(fd.ino)
    if obj is None or obj.fd < 0:
        raise FileError(errno.ENOENT, f"{where}: {fd.path}: its object was not re-created")
    return fs.reopen(fd, f"/proc/self/fd/{obj.fd}")
