"""Pseudo-terminal slaves (CRIU's tty.c, for --shell-job): the terminal's settings
(TCGETS, TIOCGLCKTRMIOS, TIOCGWINSZ), its session and foreground group (TIOCGSID,
TIOCGPGRP), exclusive mode (TIOCGEXCL) and pty index, asked through a descriptor of our own
on it (pidfd_getfd). Its master is outside the tree: CRIU's restore with --shell-job hands
the task its own terminal. Other ttys (/dev/tty, consoles, masters) are refused."""

from __future__ import annotations

import fcntl
import os
import struct

from dumper.linux.errors import Unsupported
from dumper.linux.files.common import base_state
from dumper.linux.files.socket import pidfd_getfd
from dumper.state import FdState

TCGETS, TIOCGWINSZ = 0x5401, 0x5413
TIOCGLCKTRMIOS, TIOCGEXCL = 0x5456, 0x80045440
UNIX98_PTY_SLAVE_MAJOR = 136  # include/linux/major.h
_TERMIOS = struct.Struct("=IIIIB19s")  # struct termios (asm-generic/termbits.h), NCCS 19


def _ioctl(fd: int, req: int, size: int) -> bytes:
    return fcntl.ioctl(fd, req, bytes(size))


def termios(fd: int, req: int) -> dict[str, object]:
    iflag, oflag, cflag, lflag, line, cc = _TERMIOS.unpack(_ioctl(fd, req, _TERMIOS.size))
    return dict(c_iflag=iflag, c_oflag=oflag, c_cflag=cflag, c_lflag=lflag, c_line=line,
                c_cc=cc)


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    out = base_state(fd, "tty", link, st, info)
    if os.major(st.st_rdev) != UNIX98_PTY_SLAVE_MAJOR:
        raise Unsupported(f"pid {pid}: fd {fd} is a tty ({link}) that is no pty slave: only "
                          "pty slaves (a shell job's terminal) are dumped yet")
    own = pidfd_getfd(pid, fd)
    try:
        sid, pgrp = ctty_of(pid, st.st_rdev)
        rows, cols, xpix, ypix = struct.unpack("=HHHH", _ioctl(own, TIOCGWINSZ, 8))
        out.sock = dict(index=os.minor(st.st_rdev), rdev=st.st_rdev, dev=st.st_dev,
                        uid=st.st_uid, gid=st.st_gid, sid=sid, pgrp=pgrp,
                        exclusive=bool(struct.unpack("=i", _ioctl(own, TIOCGEXCL, 4))[0]),
                        termios=termios(own, TCGETS),
                        termios_locked=termios(own, TIOCGLCKTRMIOS),
                        winsize=(rows, cols, xpix, ypix))
    finally:
        os.close(own)
    return out


def ctty_of(pid: int, rdev: int) -> tuple[int, int]:
    """(session, foreground group) of the terminal when it is pid's controlling terminal,
    from /proc/PID/stat fields 6-8 (session, tty_nr as new_encode_dev, tpgid); else (0, 0).
    TIOCGSID/TIOCGPGRP answer only a caller whose own terminal it is (tty_jobctrl.c)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    session, tty_nr, tpgid = int(fields[3]), int(fields[4]), int(fields[5])
    major, minor = os.major(rdev), os.minor(rdev)
    if tty_nr != ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)):
        return 0, 0
    return session, max(tpgid, 0)
