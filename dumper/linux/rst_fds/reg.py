"""Regular files, directories and device nodes (CRIU's files-reg.c open_reg_by_id): the
task reopens the path at its flags, after checking the file is the one dumped; then the
offset."""

from __future__ import annotations

import errno
import os

from dumper.linux.rst_fds.common import FdSet, FileError, Opened
from dumper.linux.rst_inject import RestoreInjector
from dumper.linux.rst_mm import check_file
from dumper.state import FdState


def open_fd(fs: FdSet, fd: FdState, where: str) -> Opened:
    if fd.path.endswith(" (deleted)"):
        raise FileError(errno.ENOENT, f"{where}: {fd.path}: the file was deleted")
    if os.path.isfile(fd.path) and fd.size is not None:
        check_file(fd.path, {fd.path: (fd.size, 0)}, where)
    return Opened(path=fd.path)


def settle(inj: RestoreInjector, fs: FdSet, fd: FdState, where: str,
           placed: dict[int, FdState]) -> None:
    """The offset (lseek), once the descriptor is at its number."""
    if fd.pos:
        inj.check("lseek", fd.fd, fd.pos, os.SEEK_SET)
