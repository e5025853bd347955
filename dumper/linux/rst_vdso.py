"""The dumped [vdso] against this kernel's (CRIU: pie/util-vdso.c vdso_fill_symtable, and
the restorer's comparison before it moves the kernel's vdso to the dumped place).

The restore does not write the dumped vdso: it moves this kernel's vdso to where the dump
had it, so the program's calls into it (libc keeps the entry addresses it found at exec)
must land on the same functions. Same bytes: nothing to check. Other bytes but every
exported function at the same offset: the same entry points serve it. Otherwise a proxy
(CRIU redirects the old entries to the new vdso) would be needed; it is not built: an
error names the symbol.
"""

from __future__ import annotations

import errno
import struct

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB = 0, 4, 5, 6
STT_FUNC = 2


class VdsoError(OSError):
    """The dumped vdso cannot be served by this kernel's."""


def vdso_symbols(image: bytes) -> dict[str, int]:
    """name -> offset from the load base of every function the vdso defines (its dynamic
    symbol table, found through PT_DYNAMIC's DT_SYMTAB/DT_STRTAB and DT_HASH's nchain, as
    the dynamic loader finds it: section headers are outside what a dump may hold)."""
    if image[:5] != b"\x7fELF\x02":
        raise ValueError("not an ELF64 image")
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    base, dyn = None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr = struct.unpack_from("<IIQQ", image, phoff + i * phentsize)
        if p_type == PT_LOAD and base is None:
            base = p_vaddr - p_offset
        elif p_type == PT_DYNAMIC:
            dyn = p_offset
    if base is None or dyn is None:
        raise ValueError("no PT_LOAD or PT_DYNAMIC")
    tags = {}
    for off in range(dyn, len(image) - 15, 16):
        tag, val = struct.unpack_from("<qQ", image, off)
        if tag == DT_NULL:
            break
        tags[tag] = val - base
    if not {DT_HASH, DT_STRTAB, DT_SYMTAB} <= tags.keys():
        raise ValueError("no DT_HASH/DT_STRTAB/DT_SYMTAB")
    nchain, = struct.unpack_from("<I", image, tags[DT_HASH] + 4)
    out = {}
    for i in range(1, nchain):
        name, info, _, shndx, value = struct.unpack_from("<IBBHQ", image,
                                                         tags[DT_SYMTAB] + 24 * i)
        if shndx and info & 0xF == STT_FUNC:
            start = tags[DT_STRTAB] + name
            out[image[start : image.index(b"\0", start)].decode()] = value - base
    return out


def check_vdso(dumped: bytes, ours: bytes, where: str) -> None:
    """dumped (the stored pages of the task's [vdso], from its start) must be served by
    ours at the same place: the same bytes, or every dumped function at the same offset in
    ours (a vdso of another build of the kernel with the same entry points)."""
    if ours[: len(dumped)] == dumped:
        return
    if len(dumped) > len(ours):
        raise VdsoError(errno.EINVAL, f"{where}: the dumped [vdso] is {len(dumped)} bytes, "
                        f"this kernel's {len(ours)}: dumped on another kernel")
    try:
        theirs = vdso_symbols(dumped)
    except (ValueError, struct.error, IndexError) as e:
        raise VdsoError(errno.EINVAL, f"{where}: the dumped [vdso] differs from this "
                        f"kernel's and its symbols cannot be read ({e})") from None
    mine = vdso_symbols(ours)
    for name, off in sorted(theirs.items()):
        if mine.get(name) != off:
            now = "missing" if name not in mine else f"at {mine[name]:#x}"
            raise VdsoError(errno.EINVAL, f"{where}: the dumped [vdso] has {name} at "
                            f"{off:#x}, this kernel's {now}: dumped on another kernel "
                            "(a vdso proxy as CRIU makes one is not built)")
