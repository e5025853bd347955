"""files.img entries read back as dumper.state.FdState, one reader per fdinfo type: the
inverse of criustate.file_entry, for dumper's sets and CRIU 4.2's (criu/files.c
collect_one_file dispatches on FileEntry.type the same way).

Each reader gets the fdinfo entry, its files.img entry and the set's shared data (pipe
bytes, unix socket queues, memfd inodes) and returns plain data: a socket's fields as the
dump put them in FdState.sock (CRIU's field names), options as dicts of the fields the
image sets (proto2 presence kept: a missing so_mark stays missing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from dumper.images.errors import ImageError
from dumper.images.proto import criu_images_pb2 as criu
from dumper.state import FdState


@dataclass
class Shared:
    """What fdinfo entries refer to beyond files.img: pipe bytes by pipe id, each unix
    socket's queued packets by its file id (sk-queues.img id_for), memfd inodes."""

    pipes: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    queues: dict[int, list[bytes]] = field(default_factory=dict)
    memfds: dict = field(default_factory=dict)  # inode id -> MemfdInodeEntry
    ttys: dict = field(default_factory=dict)  # tty-info.img id -> TtyInfoEntry
    objects: dict = field(default_factory=dict)  # shmid -> the set's shared objects


def fields(msg) -> dict[str, object]:
    """The fields a message sets, nested messages as dicts, repeated ones as lists."""
    out: dict[str, object] = {}
    for f, v in msg.ListFields():
        if f.type == f.TYPE_MESSAGE:
            v = [fields(x) for x in v] if f.is_repeated else fields(v)
        elif f.is_repeated:
            v = list(v)
        out[f.name] = v
    return out


def _base(e, kind: str, flags: int, **kw) -> FdState:
    return FdState(fd=e.fd, kind=kind, cloexec=bool(e.flags & 1), flags=flags & ~os.O_CLOEXEC,
                   desc=e.id, **kw)


def _reg(e, fe, sh: Shared, where) -> FdState:
    r = fe.reg
    return _base(e, "reg", r.flags, pos=r.pos, path=r.name,
                 size=r.size if r.HasField("size") else None, mode=r.mode,
                 build_id=list(r.build_id) or None)


def _pipe(e, fe, sh: Shared, where) -> FdState:
    p = fe.pipe
    data, size = sh.pipes.get(p.pipe_id, (b"", 0))
    return _base(e, "pipe", p.flags, path=f"pipe:[{p.pipe_id}]", ino=p.pipe_id, data=data,
                 pipe_size=size)


def _memfd(e, fe, sh: Shared, where) -> FdState:
    """The object the memory restore creates: its shmid as the ino."""
    m = fe.memfd
    inode = sh.memfds.get(m.inode_id)
    if inode is None or inode.shmid not in sh.objects:
        raise where(f"memfd inode {m.inode_id} is not one the set holds")
    return _base(e, "memfd", m.flags, pos=m.pos, path=f"/memfd:{inode.name}", ino=inode.shmid)


def _unix(e, fe, sh: Shared, where) -> FdState:
    u = fe.usk
    sock = fields(u)
    for k in ("id", "ino", "flags", "fown"):
        sock.pop(k, None)
    sock.setdefault("name", b"")
    sock.setdefault("peer", 0)
    sock.setdefault("opts", {})
    perms = sock.pop("file_perms", None)
    if perms is not None:
        sock["file_perms"] = (perms["mode"], perms["uid"], perms["gid"])  # type: ignore[index]
    sock["queue"] = sh.queues.get(u.id, [])
    return _base(e, "socket", u.flags, path=f"socket:[{u.ino}]", ino=u.ino, sock=sock)


def _inet(e, fe, sh: Shared, where) -> FdState:
    i = fe.isk
    sock = fields(i)
    for k in ("id", "ino", "flags", "fown"):
        sock.pop(k, None)
    for k in ("opts", "ip_opts", "tcp_opts"):
        sock.setdefault(k, {})
    return _base(e, "socket", i.flags, path=f"socket:[{i.ino}]", ino=i.ino, sock=sock)


def _eventfd(e, fe, sh: Shared, where) -> FdState:
    return _base(e, "eventfd", fe.efd.flags, path="anon_inode:[eventfd]", counter=fe.efd.counter)


def _eventpoll(e, fe, sh: Shared, where) -> FdState:
    ep = fe.epfd
    return _base(e, "eventpoll", ep.flags, path="anon_inode:[eventpoll]",
                 targets=[(t.tfd, t.events, t.data, t.pos, t.inode, t.dev) for t in ep.tfd])


def _signalfd(e, fe, sh: Shared, where) -> FdState:
    return _base(e, "signalfd", fe.sgfd.flags, path="anon_inode:[signalfd]",
                 counter=fe.sgfd.sigmask)


def _timerfd(e, fe, sh: Shared, where) -> FdState:
    t = fe.tfd
    timer = {k: getattr(t, k) for k in ("clockid", "ticks", "settime_flags", "vsec", "vnsec",
                                        "isec", "insec")}
    return _base(e, "timerfd", t.flags, path="anon_inode:[timerfd]", timer=timer)


def _tty(e, fe, sh: Shared, where) -> FdState:
    """A terminal (a shell job's pty slave): its settings from tty-info.img; the path is
    its REG entry's (regf_id)."""
    t = fe.tty
    info = sh.ttys.get(t.tty_info_id)
    if info is None:
        raise where(f"tty-info {t.tty_info_id:#x} is not in tty-info.img")
    sock = fields(info)
    sock["index"] = info.pty.index if info.HasField("pty") else 0
    return _base(e, "tty", t.flags, path=f"/dev/pts/{sock['index']}", sock=sock)


Reader = Callable[..., FdState]
# fdinfo type -> (the FileEntry field it uses, its reader)
READERS: dict[int, tuple[str, Reader]] = {
    criu.REG: ("reg", _reg), criu.PIPE: ("pipe", _pipe), criu.MEMFD: ("memfd", _memfd),
    criu.UNIXSK: ("usk", _unix), criu.INETSK: ("isk", _inet), criu.EVENTFD: ("efd", _eventfd),
    criu.EVENTPOLL: ("epfd", _eventpoll), criu.SIGNALFD: ("sgfd", _signalfd),
    criu.TIMERFD: ("tfd", _timerfd), criu.TTY: ("tty", _tty)}


def type_name(t: int) -> str:
    try:
        return criu.FdTypes.Name(t).lower()
    except ValueError:
        return f"type {t}"


def fd_state(path: str, off: int, pid: int, e, files: dict, sh: Shared) -> FdState:
    """One fdinfo entry of task pid with its files.img description; ImageError for a kind
    no restore knows, naming the task, the fd and the kind."""
    def where(msg: str) -> ImageError:
        return ImageError(path, f"task {pid} fd {e.fd}: {msg}", off)

    fe = files.get(e.id)
    entry = READERS.get(e.type)
    if entry is None:
        name = type_name(e.type)
        raise where(f"{'an' if name[0] in 'aeiou' else 'a'} {name} cannot be restored on "
                    "Linux yet")
    name, reader = entry
    if fe is None or not fe.HasField(name):
        raise where(f"file {e.id} ({type_name(e.type)}) is not in files.img")
    return reader(e, fe, sh, where)
