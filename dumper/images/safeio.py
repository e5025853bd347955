"""Opening image files so that no file in a set can hang or flood a reader.

A set is input we did not write: a FIFO in place of mm-1.img blocks open(2) and read(2)
forever, a symlink to /dev/urandom never ends, a device node may act on open. So image files
are lstat()ed first (nothing but a regular file is opened), opened O_NONBLOCK|O_NOFOLLOW (a
FIFO or a link swapped in meanwhile neither blocks nor is followed) and fstat()ed again;
every read is then bounded by the file's real size, which the codec checks each entry
against. `-` (stdin) is read with the same bound as a file.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import BinaryIO

from dumper.images.errors import ImageError

# The most bytes of one image read whole (inspect show/decode, stdin): metadata images are
# KiB to a few MiB (an mm entry of 65530 VMAs); truth images, the largest, are streamed.
MAX_IMAGE = 256 << 20

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def file_kind(mode: int) -> str:
    """What a non-regular file is, for the error message."""
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"


def _not_regular(path: str, mode: int) -> ImageError:
    return ImageError(path, f"is a {file_kind(mode)}, not a regular file")


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at path; ImageError for anything else
    (missing, a link, a FIFO, a device, a directory)."""
    p = os.fspath(path)
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(p, st.st_mode)
        fd = os.open(p, _FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(p, "is a symbolic link, not a regular file") from None
        raise ImageError(p, e.strerror or str(e)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between lstat and open
        os.close(fd)
        raise _not_regular(p, st.st_mode)
    return fd


def open_image(path: str | os.PathLike[str]) -> BinaryIO:
    """open_regular as a buffered binary file."""
    return os.fdopen(open_regular(path), "rb")


def read_bounded(f: BinaryIO, name: str, limit: int = MAX_IMAGE) -> bytes:
    """All of f, refusing more than limit bytes (read in pieces: a pipe has no size)."""
    parts, total = [], 0
    while True:
        chunk = f.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ImageError(name, f"more than {limit} bytes: too large for an image")


def read_input(path: str, limit: int = MAX_IMAGE) -> bytes:
    """A whole input file, `-` for stdin, with the same bound either way."""
    if path == "-":
        return read_bounded(sys.stdin.buffer, "<stdin>", limit)
    with open_image(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ImageError(path, f"holds {size} bytes, more than the {limit} an image may")
        return read_bounded(f, path, limit)


def regular_size(path: str | os.PathLike[str]) -> int | None:
    """The size of the regular file at path, None when nothing is there; ImageError for a
    link, FIFO, device or directory."""
    p = os.fspath(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ImageError(p, e.strerror or str(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, st.st_mode)
    return st.st_size
