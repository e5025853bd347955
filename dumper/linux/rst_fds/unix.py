"""Unix sockets (CRIU's sk-unix.c), made here and handed over:

- a listening one bound to its name (a stale socket file of the dumped one is unlinked
  first, as CRIU does; a relative name is bound from the directory it was bound in; the
  file gets its mode and owner back; a deleted one is unlinked again) and listen(backlog);
- a connected pair whose ends name each other: both ends made at once, by socketpair(2),
  or, for a stream end named after a listener of the set, accepted from that listener;
  each end's receive queue sent in by its peer, packet by packet (a datagram stays one);
- one connected to a bound socket that is not connected back (a datagram client): that
  socket first, then connect(2) to its name;
- one not connected: bound to its name if it had one; queued datagrams sent to that name.

Options are set after the queues went in (with buffers forced big meanwhile, as CRIU's
restore_prepare_socket), shutdowns once every queue is in (FdSet.close).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.linux.rst_fds.skopts import SHUTDOWN, big_buffers, set_sk_opts
from dumper.state import FdState

TCP_LISTEN = 10


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    ours = sock_of(fs, fd, where)
    return fs.keep(fd, ours.fileno())


def sock_of(fs: FdSet, fd: FdState, where: str) -> socket.socket:
    """Our socket of inode fd.ino, made once (FdSet owns it from the start: a failure
    half-way leaves nothing open once the restore is aborted)."""
    if fd.ino not in fs.socks:
        try:
            _make(fs, fd, where)
        except (OSError, ValueError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise FileError(getattr(e, "errno", None) or errno.EINVAL,
                            f"{where}: unix socket {_label(fd)}: {msg}") from None
    return fs.socks[fd.ino]


def _label(fd: FdState) -> str:
    name = bytes(fd.sock.get("name", b""))  # type: ignore[arg-type]
    return repr(name.rstrip(b"\0").decode(errors="replace")) if name else f"[{fd.ino}]"


def _make(fs: FdSet, fd: FdState, where: str) -> None:
    sk = fd.sock
    stype, peer = int(sk["type"]), int(sk.get("peer", 0))  # type: ignore[arg-type]
    other = fs.sockets.get(peer) if peer else None
    if peer and other is None:
        raise ValueError(f"its peer (socket {peer}) is not in the images")
    if other is not None and int(other.sock.get("peer", 0)) == fd.ino:  # type: ignore[arg-type]
        a, b = _pair(fs, fd, other, stype, where)
        for s in (a, b):
            big_buffers(s)
        for s, mine in ((b, fd), (a, other)):  # each end's queue comes from its peer
            _send(s, mine.sock.get("queue", []), None)
        for s, mine in ((a, fd), (b, other)):
            _finish(fs, s, mine)
        return
    s = fs.socks[fd.ino] = socket.socket(socket.AF_UNIX, stype)
    name = bytes(sk.get("name", b""))  # type: ignore[arg-type]
    if name:
        _bind(s, fd, name)
    if int(sk["state"]) == TCP_LISTEN:  # type: ignore[arg-type]
        s.listen(int(sk.get("backlog", 0)))  # type: ignore[arg-type]
    elif other is not None:
        sock_of(fs, other, where)
        target = bytes(other.sock.get("name", b""))  # type: ignore[arg-type]
        if not target:
            raise ValueError(f"it is connected to socket {peer}, which has no name")
        s.connect(_addr(target, other))
    queue = sk.get("queue", [])
    if queue:
        if not name or stype == socket.SOCK_STREAM:
            raise ValueError(f"{len(queue)} queued packets with no peer to send them")
        with socket.socket(socket.AF_UNIX, stype) as tmp:
            _send(tmp, queue, _addr(name, fd))
    _finish(fs, s, fd)


def _name(fd: FdState) -> bytes:
    return bytes(fd.sock.get("name", b""))  # type: ignore[arg-type]


def _listener(fs: FdSet, fd: FdState) -> FdState | None:
    """The listening socket of the set bound to the name fd shows (an accepted connection
    shows its listener's address: net/unix/af_unix.c unix_stream_connect)."""
    name = _name(fd)
    for other in fs.sockets.values():
        if int(other.sock.get("state", 0)) == TCP_LISTEN and _name(other) == name:  # type: ignore[arg-type]
            return other
    return None


def _pair(fs: FdSet, fd: FdState, other: FdState, stype: int, where: str
          ) -> tuple[socket.socket, socket.socket]:
    """Two connected ends, as the dump saw them: a stream end named after a listener of the
    set is accepted from it (a fresh client, bound to the other end's name if it had one,
    connects); anything else is a socketpair, and a named end is bound after (unix_bind
    takes a connected socket that has no address yet)."""
    for acc, cli in ((fd, other), (other, fd)):
        lst = _listener(fs, acc) if stype == socket.SOCK_STREAM and _name(acc) else None
        if lst is None:
            continue
        server = sock_of(fs, lst, where)
        c = fs.socks[cli.ino] = socket.socket(socket.AF_UNIX, stype)
        if _name(cli):
            _bind(c, cli, _name(cli))
        c.connect(_addr(_name(lst), lst))
        a, _ = server.accept()
        fs.socks[acc.ino] = a
        return (a, c) if acc is fd else (c, a)
    a, b = socket.socketpair(socket.AF_UNIX, stype)
    fs.socks[fd.ino], fs.socks[other.ino] = a, b
    for s, mine in ((a, fd), (b, other)):
        if _name(mine):
            _bind(s, mine, _name(mine))
    return a, b


def _addr(name: bytes, fd: FdState) -> bytes | str:
    """A sockaddr_un path for bind/connect: an abstract name as is, a path without the
    NUL the kernel reports it with (net/unix/af_unix.c unix_mkname_bsd adds it back), a
    relative one from the directory it was bound in."""
    if name.startswith(b"\0"):
        return name
    path = name.rstrip(b"\0")
    d = fd.sock.get("name_dir")
    if d and not path.startswith(b"/"):
        return os.path.join(os.fsencode(str(d)), path)
    return path


def _bind(s: socket.socket, fd: FdState, name: bytes) -> None:
    if name.startswith(b"\0"):
        s.bind(name)
        return
    path = name.rstrip(b"\0")
    full = _addr(name, fd)
    with contextlib.suppress(FileNotFoundError):  # the dumped socket's file, left behind
        if stat.S_ISSOCK(os.lstat(full).st_mode):
            if _listened(full):
                raise OSError(errno.EADDRINUSE, f"{os.fsdecode(full)} is another live "
                              "socket's now")
            os.unlink(full)
    d = fd.sock.get("name_dir")
    if d and not path.startswith(b"/"):  # bound as it was: getsockname shows it relative
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(str(d))
            s.bind(path)
        finally:
            os.fchdir(here)
            os.close(here)
    else:
        s.bind(path)
    perms = fd.sock.get("file_perms")
    if perms:
        mode, uid, gid = perms  # type: ignore[misc]
        os.chown(full, uid, gid)
        os.chmod(full, stat.S_IMODE(mode))
    if fd.sock.get("deleted"):
        os.unlink(full)


def _listened(path) -> bool:
    """Some live socket still owns the socket file at path (a connect of the right type
    gets through; EPROTOTYPE: the other type; a dead one refuses either)."""
    for stype in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_UNIX, stype) as probe:
            probe.setblocking(False)
            try:
                probe.connect(path)
                return True
            except BlockingIOError:  # alive, its backlog full
                return True
            except OSError as e:
                if e.errno != errno.EPROTOTYPE:
                    return False
    return False


def _send(s: socket.socket, packets, to) -> None:
    for data in packets:
        n = s.sendto(bytes(data), socket.MSG_DONTWAIT, to) if to is not None else \
            s.send(bytes(data), socket.MSG_DONTWAIT)
        if n != len(data):
            raise OSError(errno.EAGAIN, f"{len(data)} queued bytes did not fit ({n} went)")


def _finish(fs: FdSet, s: socket.socket, fd: FdState) -> None:
    """Options as dumped; the shutdown for later."""
    opts = dict(fd.sock.get("opts", {}))  # type: ignore[call-overload]
    set_sk_opts(s, opts)
    how = SHUTDOWN.get(int(fd.sock.get("shutdown", 0)))  # type: ignore[arg-type]
    if how is not None:
        fs.shutdowns.append((s, how))
