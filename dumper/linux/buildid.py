"""The GNU build-id of an ELF file: what CRIU 4.2 records to check, at restore, that a
mapped or open file is the one dumped (criu/files-reg.c get_build_id: the first
NT_GNU_BUILD_ID note of a PT_NOTE segment within the file's first MiB)."""

from __future__ import annotations

import struct

MAP_SIZE = 1 << 20  # CRIU's BUILD_ID_MAP_SIZE
PT_NOTE, NT_GNU_BUILD_ID = 4, 3


def _align4(n: int) -> int:
    return (n + 3) & ~3


def build_id(path: str | bytes) -> list[int] | None:
    """The build-id as CRIU stores it (u32 words, zero-padded), or None (not ELF, none)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAP_SIZE)
    except OSError:
        return None
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2):
        return None
    wide = data[4] == 2
    if wide:
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
    else:
        phoff, = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + (56 if wide else 32) > len(data):
            break
        if wide:
            ptype, _, off, _, _, filesz = struct.unpack_from("<IIQQQQ", data, at)
        else:
            ptype, off, _, _, filesz = struct.unpack_from("<IIIII", data, at)
        if ptype != PT_NOTE:
            continue
        pos, end = off, min(off + filesz, len(data))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            desc = pos + 12 + _align4(namesz)
            if ntype == NT_GNU_BUILD_ID:
                if not 0 < descsz <= 512 or desc + descsz > len(data):
                    return None
                raw = data[desc : desc + descsz]
                raw += bytes(-len(raw) % 4)
                return list(struct.unpack(f"<{len(raw) // 4}I", raw))
            pos = desc + _align4(descsz)
    return None
