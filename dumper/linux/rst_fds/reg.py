"""Regular files, directories and device nodes (CRIU's files-reg.c open_reg_by_id):
reopened by path at their flags and offset, after checking the file is the one dumped."""

from __future__ import annotations

import errno
import os

from dumper.images.criustate import append_only
from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.linux.rst_mm import check_file
from dumper.state import FdState


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    if fd.path.endswith(" (deleted)"):
        raise FileError(errno.ENOENT, f"{where}: {fd.path}: the file was deleted")
    if os.path.isfile(fd.path) and fd.size is not None and not append_only(fd.flags):
        check_file(fd.path, {fd.path: (fd.size, 0, fd.build_id)}, where, "opens")
    try:
        return fs.reopen(fd, fd.path)
    except OSError as e:
        raise FileError(e.errno, f"{where}: open {fd.path}: {e.strerror}") from None
