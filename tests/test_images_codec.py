"""Framing, magics, validation of single images, and the JSON round trip."""

from __future__ import annotations

import json
import struct

import pytest
from imagesupport import GOLDEN

from dumper.images import codec, jsonfmt
from dumper.images import magic as M
from dumper.images.errors import ImageError
from dumper.images.proto import criu_images_pb2 as criu

PSTREE = codec.BY_NAME["PSTREE"]


def _pstree_bytes() -> bytes:
    return codec.encode(
        PSTREE,
        [
            criu.PstreeEntry(pid=100, ppid=0, pgid=100, sid=100, threads=[100]),
            criu.PstreeEntry(pid=101, ppid=100, pgid=100, sid=100, threads=[101]),
        ],
    )


def test_framing_matches_criu_bytes():
    # criu.md §4.2: common magic, PSTREE magic, u32 length, payload.
    data = _pstree_bytes()
    assert data[:8].hex() == "1943565430302750"
    assert data[8:22].hex() == "0a000000" + "08641000186420642864"


def test_inventory_has_single_magic():
    data = codec.encode(codec.BY_NAME["INVENTORY"], [criu.InventoryEntry(img_version=2)])
    assert data[:4].hex() == "16313158" and data[4:8] == struct.pack("<I", 2)
    assert codec.loads(data).entries[0].img_version == 2


def test_pagemap_writes_both_counts():
    e = criu.PagemapEntry(vaddr=0x400000, compat_nr_pages=3, nr_pages=3, flags=4)
    # field 2 (varint 0x10) and field 5 (varint 0x28) both carry 3
    assert bytes.fromhex("1003") in e.SerializeToString()
    assert bytes.fromhex("2803") in e.SerializeToString()


def test_head_kind_reads_head_then_entries():
    img = codec.load(GOLDEN / "basic" / "pagemap-4242.img")
    assert img.kind.name == "PAGEMAP"
    assert img.head.DESCRIPTOR.name == "PagemapHead"
    assert all(e.DESCRIPTOR.name == "PagemapEntry" for e in img.body)


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"", "empty file, no magic", 0),
        (b"\x19\x43", "truncated magic: 2 of 4 bytes", 0),
        (struct.pack("<I", M.IMG_COMMON_MAGIC), "truncated magic: 0 of 4 bytes", 4),
        (struct.pack("<II", M.IMG_COMMON_MAGIC, 0x12345678), "unknown magic 0x12345678", 4),
        (b"\x00" * 4096, "bad magic 0x00000000 (raw page data?", 0),
        (struct.pack("<I", M.PSTREE_MAGIC), "PSTREE image without the common magic", 0),
        (_pstree_bytes()[:-3], "entry length 10 runs past the end of the file", 22),
        (_pstree_bytes() + b"\x01\x00", "truncated entry length: 2 of 4 bytes", 36),
        (_pstree_bytes()[:8] + struct.pack("<I", 1 << 30), "exceeds the limit", 8),
        (_pstree_bytes()[:8] + b"\x02\x00\x00\x00\x08\x80", "undecodable PstreeEntry", 8),
        (_pstree_bytes()[:8] + b"\x02\x00\x00\x00\x08\x01", "lacks required fields: ppid", 8),
    ],
)
def test_malformed_images(data, message, offset):
    with pytest.raises(ImageError) as ei:
        codec.loads(data, "x.img")
    assert message in ei.value.message
    assert ei.value.offset == offset
    assert str(ei.value) == f"x.img: {ei.value.message} (at offset {offset})"


def test_missing_file_is_image_error(tmp_path):
    with pytest.raises(ImageError, match="No such file"):
        codec.load(tmp_path / "nope.img")


def test_pagemap_without_head(tmp_path):
    data = struct.pack("<II", M.IMG_COMMON_MAGIC, M.PAGEMAP_MAGIC)
    with pytest.raises(ImageError, match="no PagemapHead entry"):
        codec.loads(data, "pagemap-1.img")


GOLDEN_FILES = sorted(
    p for p in GOLDEN.glob("*/*.img") if not p.name.startswith("pages-")
)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("pretty", [False, True])
def test_json_round_trip_is_exact(path, pretty):
    data = path.read_bytes()
    doc = jsonfmt.image_to_json(codec.loads(data), pretty)
    doc = json.loads(json.dumps(doc))  # through text, as the CLI does
    assert jsonfmt.image_from_json(doc) == data


def test_pretty_names_flags_and_hex():
    doc = jsonfmt.image_to_json(codec.load(GOLDEN / "basic" / "mm-4242.img"), pretty=True)
    vmas = doc["entries"][0]["vmas"]
    assert vmas[0]["start"] == "0x55550000"
    assert vmas[0]["prot"] == "PROT_READ | PROT_WRITE"
    assert vmas[0]["flags"] == "MAP_PRIVATE | MAP_ANON"
    assert vmas[0]["status"] == "VMA_AREA_REGULAR | VMA_ANON_PRIVATE"
    assert vmas[1]["status"] == "VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD"
    pm = jsonfmt.image_to_json(codec.load(GOLDEN / "basic" / "pagemap-4242.img"), pretty=True)
    assert pm["entries"][1] == {
        "vaddr": "0x55550000", "compat_nr_pages": 3, "flags": "PE_PRESENT", "nr_pages": 3
    }


def test_unknown_fields_survive_json():
    # A CRIU core of another architecture carries its registers (field 6, ti_arm) in a
    # field our proto does not declare.
    core = criu.CoreEntry(mtype=criu.X86_64)
    raw = core.SerializeToString() + bytes.fromhex("3203616263")
    data = codec.header(codec.BY_NAME["CORE"]) + struct.pack("<I", len(raw)) + raw
    doc = jsonfmt.image_to_json(codec.loads(data))
    assert doc["entries"][0]["_unknown"] == "MgNhYmM="
    assert jsonfmt.image_from_json(doc) == data


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"magic": "NOPE", "entries": []}, "unknown magic 'NOPE'"),
        ({"magic": "PSTREE", "entries": [{"pid": 1}]}, "missing required fields"),
        ({"magic": "PSTREE", "entries": [{"pid": 1, "bogus": 2}]}, "has no field 'bogus'"),
        ({"magic": "PSTREE", "entries": [{"pid": "x"}]}, "entries[0].pid"),
        ({"entries": []}, "expected {"),
    ],
)
def test_bad_json(doc, message):
    with pytest.raises(ValueError) as ei:
        jsonfmt.image_from_json(doc)
    assert message in str(ei.value)
