"""Field checks every decoded entry passes, generic over the message types of the codec table.

protobuf decodes a proto2 `string` that is not UTF-8 into bytes instead of str (upb), so a
comm, a path or a profile name from a corrupted image would reach the code as the wrong type
(the campaign of issue 15 saw UnicodeDecodeError and TypeError). check() walks a message's
string fields, nested and repeated ones included, and names the first bad one; message types
with no string anywhere below them are skipped at no cost (pagemap entries, truth runs).
"""

from __future__ import annotations

from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def _repeated(f: FieldDescriptor) -> bool:
    rep = getattr(f, "is_repeated", None)  # protobuf 7 dropped `label`; older lack this
    return rep if rep is not None else f.label == FieldDescriptor.LABEL_REPEATED


@cache
def _string_fields(d: Descriptor) -> tuple[tuple[FieldDescriptor, bool], ...]:
    """The fields of d that are strings or messages holding strings: (field, is_message)."""
    out = []
    for f in d.fields:
        if f.type == _STRING:
            out.append((f, False))
        elif f.type == _MESSAGE and _has_strings(f.message_type, frozenset([d.full_name])):
            out.append((f, True))
    return tuple(out)


def _has_strings(d: Descriptor, seen: frozenset[str]) -> bool:
    if d.full_name in seen:
        return False
    seen = seen | {d.full_name}
    return any(f.type == _STRING or f.type == _MESSAGE and _has_strings(f.message_type, seen)
               for f in d.fields)


def bad_field(msg: Message, prefix: str = "") -> str | None:
    """The dotted name of the first string field of msg that is not valid UTF-8, or None."""
    for f, nested in _string_fields(msg.DESCRIPTOR):
        if _repeated(f):
            values = list(getattr(msg, f.name))
        elif msg.HasField(f.name):
            values = [getattr(msg, f.name)]
        else:
            continue
        for i, v in enumerate(values):
            name = f"{prefix}{f.name}" + (f"[{i}]" if _repeated(f) else "")
            if nested:
                bad = bad_field(v, name + ".")
                if bad:
                    return bad
            elif not isinstance(v, str):
                return name
    return None
