"""A task's open files as CRIU's images record them, named the way `crit x DIR fds` names them.

CRIU writes ids-PID.img (TaskKobjIdsEntry: files_id, fs_id), fdinfo-FILES_ID.img (one
fdinfo_entry per descriptor: id 1, flags 2, type 3, fd 4), fs-PID.img (fs_entry: cwd_id 1,
root_id 2) and files.img (file_entry: type, id, and the per-type entry: reg 3, usk 16,
pipe 18 ...); criu/include/magic.h has the magics. fdinfo and fs are read by field number
(protobuf's unknown-field view), so sets from any CRIU version and dumper's own read alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dumper.images import codec
from dumper.images import magic as M
from dumper.images.errors import ImageError

FDINFO_MAGIC = 0x56213732
FS_MAGIC = 0x51403912


def wire_fields(payload: bytes) -> dict[int, list[object]]:
    """Field number -> values of one protobuf message, whatever its type."""
    from google.protobuf import empty_pb2
    from google.protobuf.unknown_fields import UnknownFieldSet

    out: dict[int, list[object]] = {}
    for f in UnknownFieldSet(empty_pb2.Empty.FromString(payload)):
        out.setdefault(f.field_number, []).append(f.data)
    return out


def raw_entries(path: str, magic: int) -> list[bytes]:
    """The entry payloads of a CRIU image with this magic."""
    from dumper.images.criu_magic import read_frames

    m, frames = read_frames(path)
    if m != magic:
        raise ImageError(path, f"magic {m:#010x}, expected {magic:#010x}", 0)
    return frames


@dataclass
class Fd:
    fd: int
    type: str  # FdTypes name: REG, PIPE, UNIXSK, TTY ...
    id: int  # files.img entry
    flags: int


@dataclass
class TaskFiles:
    pid: int
    files_id: int
    fds: list[Fd] = field(default_factory=list)
    cwd_id: int | None = None
    root_id: int | None = None


def type_name(value: int) -> str:
    from dumper.images.proto import criu_images_pb2 as criu

    try:
        return criu.FdTypes.Name(value)
    except ValueError:
        return str(value)


def task_files(d: str, pid: int) -> TaskFiles:
    """ids-PID.img -> fdinfo-FILES_ID.img, and fs-PID.img; ImageError naming what is missing."""
    ids = codec.load(os.path.join(d, f"ids-{pid}.img"), codec.BY_NAME["IDS"]).body
    if not ids:
        raise ImageError(os.path.join(d, f"ids-{pid}.img"), "no entry")
    tf = TaskFiles(pid, ids[0].files_id)
    for payload in raw_entries(os.path.join(d, f"fdinfo-{tf.files_id}.img"), FDINFO_MAGIC):
        w = wire_fields(payload)
        tf.fds.append(Fd(fd=int(w.get(4, [0])[0]), type=type_name(int(w.get(3, [0])[0])),
                         id=int(w.get(1, [0])[0]), flags=int(w.get(2, [0])[0])))
    fs = os.path.join(d, f"fs-{pid}.img")
    if os.path.exists(fs):
        entries = raw_entries(fs, FS_MAGIC)
        if entries:
            w = wire_fields(entries[0])
            tf.cwd_id, tf.root_id = int(w.get(1, [0])[0]), int(w.get(2, [0])[0])
    return tf


def file_names(d: str) -> dict[int, tuple[str, str]]:
    """files.img: id -> (type, what crit calls it: the path, pipe[N], unix[ino (peer) name])."""
    path = os.path.join(d, M.FILES)
    if not os.path.exists(path):
        return {}
    out = {}
    for e in codec.load(path, codec.BY_NAME["FILES"]).body:
        kind = type_name(e.type)
        extra = {f.field_number: f.data for f in _unknown(e)}
        for fd_, value in e.ListFields():  # the kinds our proto knows by now: as their bytes
            if fd_.message_type is not None:
                extra.setdefault(fd_.number, value.SerializeToString())
        if e.HasField("reg"):
            name = e.reg.name or "unknown path"
        elif kind == "PIPE" and 18 in extra:
            name = f"pipe[{int(wire_fields(extra[18]).get(2, [0])[0])}]"
        elif kind == "UNIXSK" and 16 in extra:
            u = wire_fields(extra[16])
            sk = bytes(u.get(11, [b""])[0])  # type: ignore[arg-type]
            sun = f" {sk.decode('utf-8', 'backslashreplace')}" if sk else ""
            name = f"unix[{int(u.get(2, [0])[0])} ({int(u.get(8, [0])[0])}){sun}]"
        else:
            name = f"{kind}.{e.id}"
        out[e.id] = (kind, name)
    return out


def _unknown(msg):
    from google.protobuf.unknown_fields import UnknownFieldSet

    return UnknownFieldSet(msg)


def describe(names: dict[int, tuple[str, str]], kind: str, fid: int) -> str:
    """One descriptor as crit prints it: REG by path, others TYPE.ID when files.img lacks them."""
    got = names.get(fid)
    if got is not None:
        return got[1]
    return {"REG": "unknown path", "PIPE": "pipe[?]", "UNIXSK": "unix[?]"}.get(kind,
                                                                           f"{kind}.{fid}")
