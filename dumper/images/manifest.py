"""dumper.img's manifest: every file of a set, its size and checksum, so metadata is data.

Pages images have carried a checksum since format 1 (PagesImageEntry); format 2 lists every
other file too (core, mm, pagemap, pstree, files, objects, truth, cow, guards, inventory and
any image type added later, since the writer lists whatever it wrote) and seals dumper.img
itself with a checksum of its own entry. A set that has a dumper.img is refused when a listed
file is missing, differs in size or bytes, or an .img file is there that the manifest does
not list: a corrupted register set or fd table is refused, not restored. CRIU's sets have no
dumper.img and no checksums; they get the structural validation alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dumper.images import magic as M
from dumper.images import safeio
from dumper.images.checksums import STORED_ALGO, STORED_ALGOS, stored_hash
from dumper.images.errors import ImageError
from dumper.images.proto import dumper_images_pb2 as own

FORMAT_VERSION = 2  # 2: the manifest; 1 had checksums of pages images only
_PAGES = re.compile(r"pages-\d+\.img\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_BLOCK = 1 << 20


def listed(name: str) -> bool:
    """Whether a file of a set belongs in the manifest (pages images have their own record)."""
    return name != M.DUMPER and not _PAGES.match(name)


def file_checksum(path: str | os.PathLike[str], algo: str = STORED_ALGO) -> tuple[int, bytes]:
    """(size, checksum) of a regular file's bytes, read in blocks."""
    fd = safeio.open_regular(path)
    try:
        h, size = stored_hash(algo), 0
        while block := os.read(fd, _BLOCK):
            h.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return size, h.digest()


def entries(directory: Path) -> list[own.ImageFileEntry]:
    """Manifest entries of every listed file in directory, by name."""
    out = []
    for name in sorted(os.listdir(directory)):
        if listed(name):
            size, digest = file_checksum(directory / name)
            out.append(own.ImageFileEntry(name=name, size=size, checksum=digest))
    return out


def _self_digest(d: own.DumpEntry, algo: str) -> bytes:
    body = own.DumpEntry()
    body.CopyFrom(d)
    body.ClearField("self_checksum")
    h = stored_hash(algo)
    h.update(body.SerializeToString(deterministic=True))
    return h.digest()


def seal(d: own.DumpEntry, directory: Path) -> own.DumpEntry:
    """Fill d's manifest from the files in directory, then its own checksum."""
    d.format_version = FORMAT_VERSION
    del d.images[:]
    d.images.extend(entries(directory))
    d.images_algo = STORED_ALGO
    d.self_checksum = _self_digest(d, STORED_ALGO)
    return d


def check(d: own.DumpEntry, directory: Path) -> None:
    """Refuse a set whose files do not match dumper.img's manifest (see the module doc)."""
    path = str(directory / M.DUMPER)
    if d.format_version != FORMAT_VERSION:
        raise ImageError(path, f"format_version {d.format_version}: this dumper reads "
                         f"{FORMAT_VERSION} (sets with a manifest)")
    algo = d.images_algo
    if algo not in STORED_ALGOS:
        raise ImageError(path, f"unknown manifest checksum algorithm {algo!r}")
    if _self_digest(d, algo) != d.self_checksum:
        raise ImageError(path, "checksum mismatch: dumper.img is not the entry it was sealed as")
    names = set()
    for i, e in enumerate(d.images):
        if not _NAME.match(e.name) or not listed(e.name) or e.name in names:
            raise ImageError(path, f"manifest entry {i}: bad or repeated file name {e.name!r}")
        names.add(e.name)
        f = directory / e.name
        size = safeio.regular_size(f)
        if size is None:
            raise ImageError(f, "missing: dumper.img's manifest lists it")
        if size != e.size:
            raise ImageError(f, f"holds {size} bytes, dumper.img records {e.size}")
        _, digest = file_checksum(f, algo)
        if digest != e.checksum:
            raise ImageError(f, f"checksum mismatch: {algo} {digest.hex()}, dumper.img "
                             f"records {e.checksum.hex()}")
    for name in sorted(os.listdir(directory)):
        if name.endswith(".img") and listed(name) and name not in names:
            raise ImageError(directory / name, "is not in dumper.img's manifest")
