"""Terminals (CRIU's tty.c with --shell-job): a shell job's pty slave whose master was
outside the tree is given the restorer's own terminal (its stdin), as criu restore
--shell-job gives it criu's: opened anew at the dumped flags (O_NOCTTY: no controlling
terminal is taken), with the dumped termios, locked termios and window size (CRIU's
restore_tty_params), once per terminal. Without --shell-job it is an error."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.state import FdState

TCSETS, TIOCSWINSZ, TIOCSLCKTRMIOS = 0x5402, 0x5414, 0x5457
_TERMIOS = struct.Struct("=IIIIB19s")  # struct termios (asm-generic/termbits.h), NCCS 19


def termios_bytes(t: dict) -> bytes:
    """struct termios from a TermiosEntry (c_cc memcpy'd into its u32 words: termios_copy)."""
    words = list(t.get("c_cc", []))
    cc = struct.pack(f"<{len(words)}I", *words)[:19].ljust(19, b"\0")
    return _TERMIOS.pack(t["c_iflag"], t["c_oflag"], t["c_cflag"], t["c_lflag"],
                         t.get("c_line", 0), cc)


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    if not fs.shell_job:
        raise FileError(errno.ENOTTY, f"{where}: a tty ({fd.path}) is restored only with "
                        "--shell-job (the task then gets the restorer's terminal)")
    if not os.isatty(0):
        raise FileError(errno.ENOTTY, f"{where}: a tty ({fd.path}): --shell-job hands over "
                        "the restorer's terminal, and its stdin is none")
    ours = os.open("/proc/self/fd/0", (fd.flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL))
                   | os.O_NOCTTY | os.O_CLOEXEC)
    fs.made[fd.desc] = ours
    t: dict = fd.sock
    index = int(t.get("index", 0))
    if index not in fs.terminals:
        fs.terminals.add(index)
        if t.get("termios_locked"):
            fcntl.ioctl(ours, TIOCSLCKTRMIOS, termios_bytes(t["termios_locked"]))
        if t.get("termios"):
            fcntl.ioctl(ours, TCSETS, termios_bytes(t["termios"]))
        w = t.get("winsize") or {}
        if w:
            fcntl.ioctl(ours, TIOCSWINSZ, struct.pack("=HHHH", w["ws_row"], w["ws_col"],
                                                     w["ws_xpixel"], w["ws_ypixel"]))
    return ours
