"""Images as JSON, crit's way: `{"magic": NAME, "entries": [...]}`.

Only set fields appear; enums as names, bytes as base64. `pretty=True` is crit show's style:
addresses and other hex-marked fields as "0x...", flag fields as "A | B", codes as names.
from_json() accepts both styles, so `encode(decode(x))` and `encode(show(x))` give x back.

Fields this project's .proto does not declare (a real CRIU core image carries registers, for
instance) survive the trip as `"_unknown": base64` of their raw encoding, appended after the
known fields on the way back: the JSON round trip is exact, and so are the bytes of every image
whose unknown fields were last in field order (all of dumper's).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import EncodeError, Message

from dumper.images import codec
from dumper.images import flags as F

UNKNOWN_KEY = "_unknown"

_HEX = {
    "VmaEntry": {"start", "end", "pgoff"},
    "PagemapEntry": {"vaddr"},
    "MmEntry": {
        "mm_start_code",
        "mm_end_code",
        "mm_start_data",
        "mm_end_data",
        "mm_start_stack",
        "mm_start_brk",
        "mm_brk",
        "mm_arg_start",
        "mm_arg_end",
        "mm_env_start",
        "mm_env_end",
    },
    "TaskCoreEntry": {"blk_sigset", "blk_sigset_extended", "membarrier_registration_mask"},
    # crit prints these hex too ((criu).hex in CRIU's core-x86/sa/pipe protos)
    "ThreadInfoX86": {"clear_tid_addr"},
    "UserX86RegsEntry": {
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
        "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds",
        "es", "fs", "gs",
    },
    "UserX86CetEntry": {"cet", "ssp"},
    "SaEntry": {"sigaction", "flags", "restorer", "mask", "mask_extended"},
    "PipeEntry": {"flags"},
    "ThreadCoreEntry": {"futex_rla", "blk_sigset"},
    "AioRingEntry": {"id"},
    "TruthRun": {"vaddr", "digests"},
    "CowEntry": {"vaddr", "src_vaddr"},
    "SharedObjectEntry": {"dev"},
}
_FLAGS = {
    ("VmaEntry", "prot"): F.PROT,
    ("VmaEntry", "flags"): F.MMAP_FLAGS,
    ("VmaEntry", "status"): F.VMA_STATUS,
    ("PagemapEntry", "flags"): F.PAGEMAP_FLAGS,
    ("MemfdInodeEntry", "seals"): F.SEALS,
}
_CODES = {("TaskCoreEntry", "task_state"): F.TASK_STATES}


def unknown_bytes(msg: Message) -> bytes:
    """The raw encoding of msg's own unknown fields (its submessages keep theirs)."""
    full = msg.SerializePartialToString()
    known = type(msg)()
    for fd, value in msg.ListFields():  # copies known fields only; submessages whole
        if _is_repeated(fd):
            getattr(known, fd.name).extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(known, fd.name).CopyFrom(value)
        else:
            setattr(known, fd.name, value)
    known_bytes = known.SerializePartialToString()
    if len(full) == len(known_bytes):
        return b""
    if not full.startswith(known_bytes):  # runtimes write unknown fields last
        raise ValueError(f"cannot separate unknown fields of {type(msg).__name__}")
    return full[len(known_bytes) :]


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf 7 dropped `label`; `is_repeated` is newer than the oldest runtime we accept.
    rep = getattr(fd, "is_repeated", None)
    return rep if rep is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _scalar_to_json(msg_name: str, fd: FieldDescriptor, v: Any, pretty: bool) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else v
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(v).decode()
    if pretty:
        key = (msg_name, fd.name)
        if fd.name in _HEX.get(msg_name, ()):
            return f"{v:#x}"
        if key in _FLAGS:
            return F.names(v, _FLAGS[key])
        if key in _CODES:
            return F.code_name(v, _CODES[key])
    return v


def to_json(msg: Message, pretty: bool = False) -> dict[str, Any]:
    """One message as a dict of its set fields."""
    name = msg.DESCRIPTOR.name
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            conv: Callable[[Any], Any] = lambda m: to_json(m, pretty)  # noqa: E731
        else:
            conv = lambda v, fd=fd: _scalar_to_json(name, fd, v, pretty)  # noqa: E731
        out[fd.name] = [conv(v) for v in value] if _is_repeated(fd) else conv(value)
    extra = unknown_bytes(msg)
    if extra:
        out[UNKNOWN_KEY] = base64.b64encode(extra).decode()
    return out


def _scalar_from_json(msg_name: str, fd: FieldDescriptor, v: Any) -> Any:
    key = (msg_name, fd.name)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        if isinstance(v, str):
            ev = fd.enum_type.values_by_name.get(v)
            if ev is None:
                raise ValueError(f"unknown {fd.enum_type.name} value {v!r}")
            return ev.number
        return int(v)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64decode(v, validate=True)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return str(v)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(v, bool):
            raise ValueError(f"expected true/false, got {v!r}")
        return v
    if key in _FLAGS:
        return F.parse(v, _FLAGS[key])
    if key in _CODES:
        return F.parse_code(v, _CODES[key])
    if isinstance(v, str):
        return int(v, 0)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def from_json(d: dict[str, Any], msg: Message, where: str = "") -> Message:
    """Fill msg from a dict as to_json() makes it (plain or pretty); ValueError names the key."""
    name = msg.DESCRIPTOR.name
    if not isinstance(d, dict):
        raise ValueError(f"{where or name}: expected an object")
    for key, value in d.items():
        path = f"{where}.{key}" if where else key
        if key == UNKNOWN_KEY:
            continue
        fd = msg.DESCRIPTOR.fields_by_name.get(key)
        if fd is None:
            raise ValueError(f"{path}: {name} has no field {key!r}")
        try:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                if _is_repeated(fd):
                    for i, item in enumerate(_as_list(value)):
                        from_json(item, getattr(msg, key).add(), f"{path}[{i}]")
                else:
                    from_json(value, getattr(msg, key), path)
            elif _is_repeated(fd):
                getattr(msg, key).extend(_scalar_from_json(name, fd, v) for v in _as_list(value))
            else:
                setattr(msg, key, _scalar_from_json(name, fd, value))
        except (ValueError, TypeError) as e:
            if str(e).startswith(path):
                raise
            raise ValueError(f"{path}: {e}") from None
    if UNKNOWN_KEY in d:
        msg.MergeFromString(base64.b64decode(d[UNKNOWN_KEY], validate=True))
    return msg


def _as_list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError("expected a list")
    return v


EXTRA_KEY = "extra"  # an entry's raw payload (pipes-data), base64, as crit shows it


def image_to_json(img: codec.Image, pretty: bool = False) -> dict[str, Any]:
    entries = [to_json(m, pretty) for m in img.entries]
    for e, extra in zip(entries, img.extras, strict=False):
        e[EXTRA_KEY] = base64.b64encode(extra).decode()
    return {"magic": img.kind.name, "entries": entries}


def image_from_json(doc: Any) -> bytes:
    """The binary image a JSON document describes; ValueError says what is wrong."""
    if not isinstance(doc, dict) or "magic" not in doc or "entries" not in doc:
        raise ValueError('expected {"magic": NAME, "entries": [...]}')
    kind = codec.BY_NAME.get(doc["magic"])
    if kind is None:
        raise ValueError(f"unknown magic {doc['magic']!r}")
    msgs, extras = [], []
    for i, entry in enumerate(_as_list(doc["entries"])):
        if kind.extra is not None and isinstance(entry, dict) and EXTRA_KEY in entry:
            entry = dict(entry)
            extras.append(base64.b64decode(entry.pop(EXTRA_KEY), validate=True))
        msg = from_json(entry, codec.message_type(kind, i)(), f"entries[{i}]")
        if not msg.IsInitialized():
            missing = ", ".join(msg.FindInitializationErrors())
            raise ValueError(f"entries[{i}]: missing required fields: {missing}")
        msgs.append(msg)
    try:
        return codec.encode(kind, msgs, extras)
    except EncodeError as e:  # pragma: no cover - IsInitialized caught it above
        raise ValueError(str(e)) from None
