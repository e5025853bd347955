"""Compatibility with Debian's crit (CRIU 3.17.1), run for real on our image sets."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from imagesupport import GOLDEN, build, crit

from dumper.images import codec, golden, jsonfmt
from dumper.images.reader import ImageSet

pytestmark = pytest.mark.crit

CRIU_KINDS = {"INVENTORY", "PSTREE", "CORE", "MM", "PAGEMAP", "FILES", "MEMFD_INODE"}


def criu_images(d):
    for p in sorted(d.glob("*.img")):
        if not p.name.startswith("pages-") and codec.load(p).kind.name in CRIU_KINDS:
            yield p


def as_317(doc: dict) -> dict:
    """Our JSON as crit 3.17 spells it: its pagemap has only field 2, named nr_pages."""
    if doc["magic"] == "PAGEMAP":
        for e in doc["entries"][1:]:
            assert e.pop("compat_nr_pages") == e["nr_pages"]
    return doc


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return build(tmp_path_factory.mktemp("crit"), "basic")


def test_crit_decode_reads_what_we_wrote(fresh):
    for p in criu_images(fresh):
        theirs = json.loads(crit("decode", "-i", str(p)))
        ours = as_317(jsonfmt.image_to_json(codec.load(p)))
        assert theirs == ours, p.name


def test_crit_show_pretty(fresh):
    show = json.loads(crit("show", str(fresh / "pagemap-4242.img")))
    with ImageSet.open(fresh) as s:
        assert show["entries"][0] == {"pages_id": s.tasks[golden.PARENT].pages_id}
    assert show["entries"][1] == {"vaddr": "0x55550000", "nr_pages": 3, "flags": "PE_PRESENT"}
    mm = json.loads(crit("show", str(fresh / "mm-4242.img")))["entries"][0]
    assert mm["vmas"][0]["status"] == "VMA_AREA_REGULAR | VMA_ANON_PRIVATE"
    assert mm["vmas"][2]["status"] == "VMA_AREA_REGULAR | VMA_ANON_SHARED"
    # 3.17 has no name for VMA_AREA_MEMFD (criu.md §4.3.8)
    assert mm["vmas"][1]["status"] == "VMA_AREA_REGULAR | VMA_FILE_SHARED | 0x4000"
    core = json.loads(crit("show", str(fresh / "core-4242.img")))["entries"][0]
    assert core["tc"]["comm"] == "server" and core["mtype"] == "X86_64"


def test_crit_explore_ps(fresh):
    lines = crit("x", str(fresh), "ps").decode().splitlines()
    assert lines[0].split() == ["PID", "PGID", "SID", "COMM"]
    assert lines[1].split() == ["4242", "4242", "4242", "server"]
    assert re.fullmatch(r"\s+4243\s+4242\s+4242\s{5,}worker", lines[2])  # indented child


def test_crit_explore_mems(fresh):
    out = crit("x", str(fresh), "mems").decode()
    with ImageSet.open(fresh) as s:
        for t in s.tasks.values():
            block = out.split(f"{t.pid}\n", 1)[1]
            assert f"exe                                     {t.exe}" in block
            for v in t.vmas:
                assert f"{v.start:08x}-{v.end:08x}" in block
    assert "shmem[1]" in out and "ips[2]" in out and "[vsyscall] *" in out


def test_crit_explore_rss(fresh):
    out = crit("x", str(fresh), "rss").decode()
    got = re.findall(r"^\t([0-9a-f]+) / (\d+)", out, re.M)
    with ImageSet.open(fresh) as s:
        want = [(f"{r.vaddr:x}", str(r.nr_pages)) for t in s.tasks.values() for r in t.pagemap]
    assert got == want


def test_our_images_are_unknown_to_crit(fresh):
    for name in ("dumper.img", "objects.img", "truth-4242.img", "cow-4243.img"):
        with pytest.raises(AssertionError, match="Unknown magic"):
            crit("decode", "-i", str(fresh / name))


def test_we_read_sets_crit_encoded(tmp_path):
    """Encode every CRIU image of a set with crit from JSON; our reader takes the result."""
    src = GOLDEN / "basic"
    dst = tmp_path / "crit-encoded"
    dst.mkdir()
    for p in criu_images(src):
        # Plain JSON: our pretty names include VMA_AREA_MEMFD, which 3.17 cannot parse.
        doc = as_317(jsonfmt.image_to_json(codec.load(p)))
        (tmp_path / "in.json").write_text(json.dumps(doc))
        crit("encode", "-i", str(tmp_path / "in.json"), "-o", str(dst / p.name))
        if p.name.startswith("pagemap"):  # crit 3.17 writes field 2 only
            theirs, ours = codec.load(dst / p.name).entries, codec.load(p).entries
            assert theirs[0] == ours[0] and len(theirs) == len(ours)
            for t, o in zip(theirs[1:], ours[1:], strict=True):
                assert not t.HasField("nr_pages")
                assert (t.vaddr, t.compat_nr_pages, t.flags) == (o.vaddr, o.nr_pages, o.flags)
        else:
            assert (dst / p.name).read_bytes() == p.read_bytes(), p.name
    for p in src.glob("pages-*.img"):
        shutil.copy(p, dst / p.name)
    mem = golden._memory("basic")
    with ImageSet.open(dst) as s:
        assert s.meta is None
        assert {o.kind for o in s.objects.values()} == {"memfd", "shmem-anon", "sysv"}
        for addr in (golden.HEAP, golden.STACK + 4096, golden.ANON_AT, golden.SYSV_AT):
            assert s.read_page(golden.PARENT, addr).data == mem[golden.PARENT][addr]
