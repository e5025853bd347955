"""CRIU's image framing, table-driven as crit's is: magic -> kind -> message types.

An image is `<u32 IMG_COMMON_MAGIC><u32 MAGIC>` (inventory.img: `<u32 MAGIC>` alone), then
entries, each `<u32 length><protobuf message>`; all u32s little-endian, as CRIU writes them on
x86-64 and aarch64. "Head" kinds (pagemaps, truth images) have a different message type for
their first entry. pages-N.img is raw (no header) and handled by dumper.images.pages.

Every read is validated: a truncated header or entry, an unknown magic, an entry length past
the end of the file or beyond MAX_ENTRY, an undecodable message or one lacking a required
field all raise ImageError naming the file and the offset.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from google.protobuf.message import DecodeError, Message

from dumper.images import magic as M
from dumper.images import safeio
from dumper.images.errors import ImageError
from dumper.images.fieldcheck import bad_field
from dumper.images.proto import criu_images_pb2 as criu
from dumper.images.proto import dumper_images_pb2 as own

# One entry larger than this is taken as corruption, not data: the largest legitimate one is
# an mm entry with vm.max_map_count (65530) VMAs, a few MiB.
MAX_ENTRY = 64 << 20

_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Kind:
    """One image type: crit's name for it, its magic, and its message types."""

    name: str
    magic: int
    entry: type[Message]
    head: type[Message] | None = None  # type of the first entry, when it differs
    common: bool = True  # False: no IMG_COMMON_MAGIC before the magic (inventory)
    extra: str | None = None  # field giving the raw bytes that follow each entry (pipes-data)


KINDS = (
    Kind("INVENTORY", M.INVENTORY_MAGIC, criu.InventoryEntry, common=False),
    Kind("PSTREE", M.PSTREE_MAGIC, criu.PstreeEntry),
    Kind("CORE", M.CORE_MAGIC, criu.CoreEntry),
    Kind("IDS", M.IDS_MAGIC, criu.TaskKobjIdsEntry),
    Kind("MM", M.MM_MAGIC, criu.MmEntry),
    Kind("PAGEMAP", M.PAGEMAP_MAGIC, criu.PagemapEntry, head=criu.PagemapHead),
    Kind("FILES", M.FILES_MAGIC, criu.FileEntry),
    Kind("MEMFD_INODE", M.MEMFD_INODE_MAGIC, criu.MemfdInodeEntry),
    Kind("FS", M.FS_MAGIC, criu.FsEntry),
    Kind("FDINFO", M.FDINFO_MAGIC, criu.FdinfoEntry),
    Kind("PIPES_DATA", M.PIPES_DATA_MAGIC, criu.PipeDataEntry, extra="bytes"),
    Kind("TTY_INFO", M.TTY_INFO_MAGIC, criu.TtyInfoEntry),
    Kind("SK_QUEUES", M.SK_QUEUES_MAGIC, criu.SkPacketEntry, extra="length"),
    Kind("IPC_VAR", M.IPC_VAR_MAGIC, criu.IpcVarEntry),
    Kind("IPCNS_SHM", M.IPCNS_SHM_MAGIC, criu.IpcShmEntry),
    Kind("SECCOMP", M.SECCOMP_MAGIC, criu.SeccompEntry),
    Kind("DUMPER", M.DUMPER_MAGIC, own.DumpEntry),
    Kind("OBJECTS", M.OBJECTS_MAGIC, own.SharedObjectEntry),
    Kind("TRUTH", M.TRUTH_MAGIC, own.TruthRun, head=own.TruthHead),
    Kind("COW", M.COW_MAGIC, own.CowEntry),
    Kind("GUARDS", M.GUARDS_MAGIC, own.GuardEntry),
    Kind("UNREADABLE", M.UNREADABLE_MAGIC, own.UnreadableEntry),
)
BY_MAGIC = {k.magic: k for k in KINDS}
BY_NAME = {k.name: k for k in KINDS}


def message_type(kind: Kind, index: int) -> type[Message]:
    """The message type of the index-th entry of an image of this kind."""
    return kind.head if kind.head is not None and index == 0 else kind.entry


# -- writing ----------------------------------------------------------------------------------


def header(kind: Kind) -> bytes:
    if kind.common:
        return _U32.pack(M.IMG_COMMON_MAGIC) + _U32.pack(kind.magic)
    return _U32.pack(kind.magic)


def frame(msg: Message) -> bytes:
    """One entry: length then payload (required fields are checked by SerializeToString)."""
    payload = msg.SerializeToString()
    return _U32.pack(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def truth_run(vaddr: int, digests) -> bytes:
    """One framed TruthRun, encoded by hand: field 1 vaddr (varint), field 2 the packed
    fixed64 digests as one little-endian block — the wire form SerializeToString gives, at
    memcpy speed for millions of pages (a test checks the two agree)."""
    return b"".join(truth_run_parts(vaddr, digests))


def truth_run_parts(vaddr: int, digests) -> tuple[bytes, memoryview]:
    """truth_run as (frame head, the digests' own bytes): written one after the other, the
    block is not copied into a payload first."""
    block = memoryview(digests.astype("<u8", copy=False)).cast("B")
    head = b"\x08" + _varint(vaddr)
    if len(block):
        head += b"\x12" + _varint(len(block))
    return _U32.pack(len(head) + len(block)) + head, block


def encode(kind: Kind, messages: Iterable[Message], extras: Iterable[bytes] = ()) -> bytes:
    """A whole image; extras: each entry's raw payload, for a kind that has them."""
    extras = list(extras)
    return header(kind) + b"".join(
        frame(m) + (extras[i] if i < len(extras) else b"") for i, m in enumerate(messages))


# -- reading ----------------------------------------------------------------------------------


@dataclass
class Image:
    """A whole image in memory: its kind, entries, and each entry's file offset."""

    path: str
    kind: Kind
    entries: list[Message] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    extras: list[bytes] = field(default_factory=list)  # raw payloads (Kind.extra)

    @property
    def head(self) -> Message | None:
        return self.entries[0] if self.kind.head is not None and self.entries else None

    @property
    def body(self) -> list[Message]:
        return self.entries[1:] if self.kind.head is not None else self.entries

    @property
    def body_offsets(self) -> list[int]:
        return self.offsets[1:] if self.kind.head is not None else self.offsets


def _read_exact(f: BinaryIO, n: int, path: str, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ImageError(path, f"truncated {what}: {len(data)} of {n} bytes", offset)
    return data


def read_header(f: BinaryIO, path: str) -> Kind:
    """Read and check the magic(s) at the start of f; returns the image's kind."""
    first = f.read(4)
    if len(first) == 0:
        raise ImageError(path, "empty file, no magic", 0)
    if len(first) < 4:
        raise ImageError(path, f"truncated magic: {len(first)} of 4 bytes", 0)
    (m,) = _U32.unpack(first)
    if m == M.IMG_COMMON_MAGIC:
        (m,) = _U32.unpack(_read_exact(f, 4, path, 4, "magic"))
        kind = BY_MAGIC.get(m)
        if kind is None or not kind.common:
            raise ImageError(path, f"unknown magic {m:#010x}", 4)
        return kind
    kind = BY_MAGIC.get(m)
    if kind is not None and not kind.common:
        return kind
    if m == M.IMG_SERVICE_MAGIC:
        raise ImageError(path, "a CRIU service file (stats, irmap-cache), not an image", 0)
    if m == M.RAW_IMAGE_MAGIC or kind is None:
        raise ImageError(path, f"bad magic {m:#010x} (raw page data? pages-N.img has none)", 0)
    raise ImageError(path, f"{kind.name} image without the common magic", 0)


def _size(f: BinaryIO) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pos = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
        return end


def parse(msg_type: type[Message], payload: bytes, path: str, offset: int,
          index: int | None = None) -> Message:
    """Decode one payload; an entry that does not parse, lacks a required field or has a
    field of the wrong form (fieldcheck: a string that is not UTF-8) is an error."""
    name = msg_type.DESCRIPTOR.name
    try:
        msg = msg_type.FromString(payload)
    except DecodeError as e:
        raise ImageError(path, f"undecodable {name}: {e}", offset) from None
    if not msg.IsInitialized():
        missing = ", ".join(msg.FindInitializationErrors())
        raise ImageError(path, f"{name} lacks required fields: {missing}", offset)
    bad = bad_field(msg)
    if bad:
        entry = f"entry {index} " if index is not None else ""
        raise ImageError(path, f"{entry}({name}): field {bad} is not valid UTF-8", offset)
    return msg


def iter_entries(
    f: BinaryIO, path: str, kind: Kind, max_entry: int = MAX_ENTRY,
    extras: list[bytes] | None = None,
) -> Iterator[tuple[int, Message]]:
    """(offset, message) for each entry after the header; streams, one entry in memory.
    A kind with raw payloads after its entries has them appended to extras (or skipped)."""
    size = _size(f)
    offset = f.tell()
    index = 0
    while True:
        raw = f.read(4)
        if not raw:
            return
        if len(raw) < 4:
            raise ImageError(path, f"truncated entry length: {len(raw)} of 4 bytes", offset)
        (n,) = _U32.unpack(raw)
        if n > max_entry:
            raise ImageError(path, f"entry length {n} exceeds the limit of {max_entry}", offset)
        if offset + 4 + n > size:
            raise ImageError(
                path, f"entry length {n} runs past the end of the file ({size} bytes)", offset
            )
        payload = _read_exact(f, n, path, offset + 4, "entry")
        msg = parse(message_type(kind, index), payload, path, offset, index)
        entry_offset, offset = offset, offset + 4 + n
        if kind.extra is not None:
            extra = getattr(msg, kind.extra)  # not `size`: that is the file's, for the next entry
            if offset + extra > size:
                raise ImageError(path, f"{extra} bytes of payload run past the end", offset)
            data = _read_exact(f, extra, path, offset, "payload")
            if extras is not None:
                extras.append(data)
            offset += extra
        yield entry_offset, msg
        index += 1


def read(f: BinaryIO, path: str, expect: Kind | None = None) -> Image:
    """A whole image from an open binary file."""
    kind = read_header(f, path)
    if expect is not None and kind is not expect:
        raise ImageError(path, f"is a {kind.name} image, expected {expect.name}", 0)
    img = Image(path, kind)
    for off, msg in iter_entries(f, path, kind, extras=img.extras):
        img.offsets.append(off)
        img.entries.append(msg)
    if kind.head is not None and not img.entries:
        raise ImageError(path, f"no {kind.head.DESCRIPTOR.name} entry", _size(f))
    return img


def load(path: str | os.PathLike[str], expect: Kind | None = None) -> Image:
    """Read the image at path; a missing or unreadable file, or anything but a regular file
    (safeio), is an ImageError too."""
    p = os.fspath(path)
    try:
        with safeio.open_image(p) as f:
            return read(f, p, expect)
    except OSError as e:
        raise ImageError(p, e.strerror or str(e)) from None


def loads(data: bytes, path: str = "<bytes>", expect: Kind | None = None) -> Image:
    return read(io.BytesIO(data), path, expect)
