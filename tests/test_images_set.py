"""Writing and reading image sets: round trips, atomicity, and every validation error."""

from __future__ import annotations

import hashlib
import os
import stat
import struct

import pytest
import zstandard
from imagesupport import GOLDEN, build, resealed, rewrite

from dumper.images import codec, golden
from dumper.images import flags as F
from dumper.images.checksums import page_digest, task_digest
from dumper.images.errors import ImageError
from dumper.images.pages import PagesReader, PagesWriter
from dumper.images.reader import ImageSet
from dumper.images.records import CowRun, SharedObject, Vma
from dumper.images.writer import ImageSetExists, ImageSetWriter
from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE

P = PAGE_SIZE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def pages(seed: int, n: int) -> bytes:
    return b"".join(bytes([(seed + i) % 251]) * P for i in range(n))


def small_set(path, **kw):
    with ImageSetWriter(path, **kw) as w:
        w.add_task(1, 0, "init", [Vma(0x10000, 0x20000, 3, ANON)])
        w.add_private_pages(1, [(0x10000, 3), (0x18000, 2)], [pages(1, 5)])
    return path


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_golden_memory_reads_back(tmp_path, compress):
    variant = "zstd" if compress else "basic"
    mem = golden._memory(variant)
    with ImageSet.open(build(tmp_path, variant)) as s:
        assert s.meta.compression == (compress or "none")
        assert s.meta.strategy == "pagemap" and s.meta.profile == "linux-6.18"
        for pid, task_mem in mem.items():
            for addr, want in task_mem.items():
                look = s.read_page(pid, addr)
                got = look.data if look.data is not None else bytes(P)
                assert got == want, (pid, hex(addr), look.source)
        assert s.read_page(golden.CHILD, golden.HEAP).source == "cow"
        assert s.read_page(golden.PARENT, golden.HEAP + 3 * P).source == "none"
        assert s.read_page(golden.PARENT, golden.MEMFD_AT + P).source == "hole"
        assert s.read_page(golden.PARENT, 0x1000).source == "unmapped"
        runs = list(s.iter_truth(golden.CHILD))
        assert task_digest(runs) == s.truths[golden.CHILD].task_digest


def test_golden_sets_are_reproducible(tmp_path):
    for variant in golden.VARIANTS:
        out = build(tmp_path, variant)
        for f in sorted(os.listdir(out)):
            assert (out / f).read_bytes() == (GOLDEN / variant / f).read_bytes(), (
                f"images/{variant}/{f} is stale: python -m dumper.images.golden images"
            )
        assert sorted(os.listdir(out)) == sorted(os.listdir(GOLDEN / variant))


@pytest.mark.parametrize("threads", [0, 2])
def test_zstd_streams_in_odd_chunks(tmp_path, threads):
    data = os.urandom(3 * P) + bytes(5 * P) + pages(7, 4)
    n = len(data) // P
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    with ImageSetWriter(tmp_path / "s", compress="zstd", level=5, threads=threads,
                        frame_size=3 * P) as w:
        w.add_task(1, 0, "t", [Vma(0x100000, 0x100000 + n * P, 3, ANON)])
        w.add_private_pages(1, [(0x100000, n)], iter(chunks))
    with ImageSet.open(tmp_path / "s") as s:
        info = s.pages[s.tasks[1].pages_id]
        assert info.compression == "zstd" and info.stored_size < info.raw_size
        assert b"".join(d for _, d in s.iter_pages(1, chunk_pages=2)) == data
        assert s.read_page(1, 0x100000 + 10 * P).data == data[10 * P : 11 * P]
        assert [len(d) for _, d in s.iter_pages(1, chunk_pages=5)] == [5 * P, 5 * P, 2 * P]


def test_writer_rejects_chunks_not_matching_runs(tmp_path):
    w = ImageSetWriter(tmp_path / "s")
    with pytest.raises(ValueError, match="chunks hold 4096 bytes, the present runs 2 pages"):
        w.add_private_pages(1, [(0x10000, 2)], [pages(0, 1)])
    with pytest.raises(ValueError, match="unsorted or overlapping"):
        w.add_private_pages(2, [(0x10000, 2), (0x11000, 1)], [pages(0, 3)])
    w.abort()
    assert os.listdir(tmp_path) == []


def test_writer_refuses_invalid_set(tmp_path):
    w = ImageSetWriter(tmp_path / "s")
    w.add_task(1, 0, "t", [Vma(0x10000, 0x11000, 3, ANON)])
    w.add_private_pages(1, [(0x20000, 1)], [pages(0, 1)])
    with pytest.raises(ValueError, match="outside every private VMA"):
        w.commit()
    assert os.listdir(tmp_path) == []


# -- atomic directories -----------------------------------------------------------------------


def test_modes_and_no_leftovers(tmp_path):
    s = small_set(tmp_path / "set")
    assert stat.S_IMODE(os.stat(s).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(s / f).st_mode) for f in os.listdir(s)} == {0o600}
    assert os.listdir(tmp_path) == ["set"]


def test_existing_set_needs_force(tmp_path):
    s = small_set(tmp_path / "set")
    before = (s / "pages-1.img").read_bytes()
    with pytest.raises(ImageSetExists, match="pass force=True"):
        ImageSetWriter(s)
    assert (s / "pages-1.img").read_bytes() == before
    with ImageSetWriter(s, force=True) as w:
        w.add_task(2, 0, "new", [])
    with ImageSet.open(s) as r:
        assert list(r.tasks) == [2]
    assert os.listdir(tmp_path) == ["set"]


def test_force_never_replaces_other_directories(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(ImageSetExists, match="not an image set"):
        ImageSetWriter(tmp_path / "home", force=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


def test_exception_aborts(tmp_path):
    with pytest.raises(RuntimeError), ImageSetWriter(tmp_path / "set") as w:
        w.add_task(1, 0, "t", [])
        raise RuntimeError("dump failed")
    assert os.listdir(tmp_path) == []


def test_manifest_written_last(tmp_path, monkeypatch):
    order = []
    real = ImageSetWriter._open

    def spy(self, name):
        order.append(name)
        return real(self, name)

    monkeypatch.setattr(ImageSetWriter, "_open", spy)
    small_set(tmp_path / "set")
    assert order[-2:] == ["inventory.img", "dumper.img"]  # dumper.img lists all before it


# -- validation -------------------------------------------------------------------------------


def _err(path) -> ImageError:
    with pytest.raises(ImageError) as ei:
        ImageSet.open(path)
    return ei.value


def test_truncated_image(tmp_path):
    s = build(tmp_path)
    f = s / "mm-4242.img"
    f.write_bytes(f.read_bytes()[:-5])
    e = _err(resealed(s))  # past the manifest: the codec's own check
    assert e.path == str(f) and "runs past the end of the file" in e.message


def test_bad_magic_in_set(tmp_path):
    s = build(tmp_path)
    (s / "pstree.img").write_bytes(b"\x00" * 12)
    assert "bad magic" in _err(resealed(s)).message


def test_unsorted_vmas(tmp_path):
    s = build(tmp_path)
    rewrite(s / "mm-4242.img", lambda e: e[0].vmas[0].CopyFrom(e[0].vmas[2]))
    e = _err(s)
    assert e.path.endswith("mm-4242.img") and "VMAs unsorted or overlapping" in e.message


def test_overlapping_vmas(tmp_path):
    s = build(tmp_path)
    rewrite(s / "mm-4242.img", lambda e: setattr(e[0].vmas[0], "end", golden.MEMFD_AT + P))
    assert "VMAs unsorted or overlapping" in _err(s).message


def test_pagemap_entry_outside_vma(tmp_path):
    s = build(tmp_path)
    rewrite(s / "pagemap-4242.img", lambda e: setattr(e[1], "vaddr", golden.HEAP + 2 * P))
    e = _err(s)
    assert e.path.endswith("pagemap-4242.img")
    assert "0x55552000+3 pages is outside every private VMA" in e.message and e.offset == 14


def test_pagemap_entry_in_shared_vma(tmp_path):
    s = build(tmp_path)
    rewrite(s / "pagemap-4242.img", lambda e: setattr(e[1], "vaddr", golden.ANON_AT))
    assert "outside every private VMA" in _err(s).message


def test_pagemap_entry_past_pages_data(tmp_path):
    s = build(tmp_path)

    def grow(e):
        e[2].nr_pages = e[2].compat_nr_pages = 2
        e[2].vaddr = golden.STACK

    rewrite(s / "pagemap-4242.img", grow)
    e = _err(s)
    assert "runs past the end of its page data" in e.message and e.path.endswith("4242.img")


def test_unused_pages_data(tmp_path):
    s = build(tmp_path)
    rewrite(s / "pagemap-4242.img", lambda e: e[:-1])
    assert "bytes of pages no pagemap entry uses" in _err(s).message


def test_checksum_mismatch(tmp_path):
    s = build(tmp_path)
    with ImageSet.open(s) as r:
        f = s / f"pages-{r.tasks[golden.PARENT].pages_id}.img"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    e = _err(s)
    assert e.path == str(f) and "checksum mismatch: xxh3-128" in e.message
    ImageSet.open(s, verify=False).close()  # structure is fine; only the hash catches it


def _set_checksums(s, algo: str, digest) -> None:
    def change(entries):
        for p in entries[0].pages:
            p.checksum_algo = algo
            p.checksum = digest((s / f"pages-{p.pages_id}.img").read_bytes())

    rewrite(s / "dumper.img", change)


def test_sha256_sets_still_verify(tmp_path):
    # The format's first checksum: sets written before crc32 open and verify as they did.
    s = build(tmp_path)
    _set_checksums(s, "sha256", lambda b: hashlib.sha256(b).digest())
    ImageSet.open(s).close()
    _set_checksums(s, "sha256", lambda b: hashlib.sha256(b + b"x").digest())
    assert "checksum mismatch: sha256" in _err(s).message


def test_unknown_checksum_algorithm(tmp_path):
    s = build(tmp_path)
    _set_checksums(s, "md5", lambda b: b"")
    e = _err(s)
    assert "unknown checksum algorithm 'md5'" in e.message and e.path.endswith(".img")


def test_pages_file_size_mismatch(tmp_path):
    s = build(tmp_path)
    f = s / "pages-1.img"
    f.write_bytes(f.read_bytes()[:-1])
    assert "dumper.img records 4096" in _err(s).message


def _zstd_store(path, raw: bytes, frame: bytes | None = None):
    with open(path, "wb") as f:
        pw = PagesWriter(f.fileno(), 1, P, "zstd", frame_size=len(raw))
        pw.write(raw)
        meta = pw.close()
    if frame is not None:
        path.write_bytes(frame)
        meta.frame_sizes[:] = [len(frame)]
        meta.stored_size = len(frame)
    return meta


def test_zstd_frame_beyond_declared_size(tmp_path):
    # A frame whose header declares one page but whose data holds two.
    two = zstandard.ZstdCompressor(write_content_size=True).compress(pages(3, 2))
    params = zstandard.get_frame_parameters(two)
    assert params.content_size == 2 * P
    hdr = zstandard.frame_header_size(two)
    # Frame_Content_Size here is 2 bytes (value - 256): patch 8192 -> 4096.
    assert struct.unpack_from("<H", two, hdr - 2)[0] == 2 * P - 256
    lying = two[: hdr - 2] + struct.pack("<H", P - 256) + two[hdr:]
    meta = _zstd_store(tmp_path / "pages-1.img", pages(3, 1), lying)
    r = PagesReader(str(tmp_path / "pages-1.img"), meta)
    with pytest.raises(ImageError) as ei:
        r.read(0, P)
    assert "zstd frame 0" in ei.value.message and "declared 4096 bytes" in ei.value.message
    assert ei.value.offset == 0
    r.close()


def test_zstd_frame_header_disagrees_with_index(tmp_path):
    two = zstandard.ZstdCompressor(write_content_size=True).compress(pages(3, 2))
    meta = _zstd_store(tmp_path / "pages-1.img", pages(3, 1), two)
    r = PagesReader(str(tmp_path / "pages-1.img"), meta)
    with pytest.raises(ImageError, match="zstd frame 0 declares 8192 bytes, the index 4096"):
        r.read(0, P)
    r.close()


def test_zstd_index_disagrees_with_file(tmp_path):
    s = build(tmp_path, "zstd")
    rewrite(s / "dumper.img", lambda e: e[0].pages[0].frame_sizes.append(1))
    assert "zstd frames" in _err(s).message


def test_cow_outside_vma_and_missing_source(tmp_path):
    s = build(tmp_path)
    rewrite(s / "cow-4243.img", lambda e: setattr(e[0], "vaddr", golden.ANON_AT))
    assert "COW run 0x7f0000100000+1 pages is outside every private VMA" in _err(s).message
    s = build(tmp_path / "b")
    rewrite(s / "cow-4243.img", lambda e: setattr(e[0], "src_vaddr", golden.HEAP + 3 * P))
    assert "does not hold all of 0x55553000+1 pages" in _err(s).message
    s = build(tmp_path / "c")
    rewrite(s / "cow-4243.img", lambda e: setattr(e[0], "vaddr", golden.HEAP + P))
    assert "overlaps the task's own pagemap" in _err(s).message


def test_truth_digest_mismatch(tmp_path):
    s = build(tmp_path)
    rewrite(s / "truth-4242.img", lambda e: e[1].digests.__setitem__(0, 1))
    assert "task digest or page count" in _err(s).message


def test_pstree_problems(tmp_path):
    s = build(tmp_path)
    rewrite(s / "pstree.img", lambda e: setattr(e[1], "ppid", 0))
    assert "2 root tasks" in _err(s).message
    s = build(tmp_path / "b")
    rewrite(s / "pstree.img", lambda e: setattr(e[1], "ppid", 999))
    assert "parent 999 of task 4243 is unknown" in _err(s).message


def test_not_a_set(tmp_path):
    assert "No such file" in _err(tmp_path).message
    assert "no such directory" in _err(tmp_path / "nope").message


def test_memfd_and_tmpfs_objects(tmp_path):
    with ImageSetWriter(tmp_path / "s") as w:
        w.add_shared_object(SharedObject(5, "tmpfs", 2 * P, name="/dev/shm/x"), [(P, 1)],
                            [pages(9, 1)])
        w.add_shared_object(SharedObject(6, "memfd", P, name="m", seals=8))
        w.add_task(1, 0, "t", [Vma(0x10000, 0x12000, 3, MAP_SHARED, obj=5),
                               Vma(0x20000, 0x21000, 1, MAP_SHARED, obj=6),
                               Vma(0x30000, 0x32000, 3, MAP_PRIVATE, obj=5)])
        w.add_private_pages(1, [(0x31000, 1)], [pages(4, 1)])
    with ImageSet.open(tmp_path / "s") as s:
        vmas = s.tasks[1].vmas
        assert [v.obj for v in vmas] == [5, 6, 5]
        assert vmas[0].status == F.VMA_AREA_REGULAR | F.VMA_FILE_SHARED
        assert vmas[2].status == F.VMA_AREA_REGULAR | F.VMA_FILE_PRIVATE
        assert s.read_page(1, 0x11000).data == pages(9, 1)
        assert s.read_page(1, 0x31000).data == pages(4, 1)
        assert s.objects[6].kind == "memfd" and s.objects[6].pagemap == ()


def test_cow_chain_resolves(tmp_path):
    vmas = [Vma(0x10000, 0x12000, 3, ANON)]
    with ImageSetWriter(tmp_path / "s") as w:
        for pid, ppid in ((1, 0), (2, 1), (3, 2)):
            w.add_task(pid, ppid, f"t{pid}", vmas)
        w.add_private_pages(1, [(0x10000, 2)], [pages(1, 2)])
        w.add_cow(2, [CowRun(2, 0x10000, 2, 1, 0x10000)])
        w.add_cow(3, [CowRun(3, 0x11000, 1, 2, 0x11000)])
    with ImageSet.open(tmp_path / "s") as s:
        look = s.read_page(3, 0x11000)
        assert (look.source, look.pid, look.data) == ("cow", 1, pages(2, 1))
        assert [(hex(a), o) for a, _, o in s.iter_task_pages(3)] == [("0x11000", "cow")]


def test_truth_runs_split_and_digest(tmp_path):
    import dumper.images.writer as wmod

    n = 5
    data = pages(1, n)
    digests = [page_digest(data[i * P : (i + 1) * P]) for i in range(n)]
    old = wmod.TRUTH_RUN_MAX
    wmod.TRUTH_RUN_MAX = 2
    try:
        with ImageSetWriter(tmp_path / "s") as w:
            w.add_task(1, 0, "t", [Vma(0x10000, 0x10000 + n * P, 3, ANON)])
            td = w.add_truth(1, [(0x10000, digests)])
    finally:
        wmod.TRUTH_RUN_MAX = old
    with ImageSet.open(tmp_path / "s") as s:
        runs = list(s.iter_truth(1))
        assert [len(d) for _, d in runs] == [2, 2, 1]
        assert s.truths[1].task_digest == td == task_digest([(0x10000, digests)])
    img = codec.load(tmp_path / "s" / "truth-1.img")
    assert img.head.nr_pages == n


def _three_frames(tmp_path, bad: int | None = None):
    """A zstd store of 3 frames of 2 pages; frame `bad` replaced by one without a declared
    size."""
    raw = pages(1, 6)
    with open(tmp_path / "pages-1.img", "wb") as f:
        pw = PagesWriter(f.fileno(), 1, P, "zstd", frame_size=2 * P)
        pw.write(raw)
        meta = pw.close()
    if bad is not None:
        frames, pos = [], 0
        data = (tmp_path / "pages-1.img").read_bytes()
        for size in meta.frame_sizes:
            frames.append(data[pos : pos + size])
            pos += size
        frames[bad] = zstandard.ZstdCompressor(write_content_size=False).compress(pages(9, 3))
        (tmp_path / "pages-1.img").write_bytes(b"".join(frames))
        meta.frame_sizes[:] = [len(x) for x in frames]
        meta.stored_size = sum(meta.frame_sizes)
    return raw, PagesReader(str(tmp_path / "pages-1.img"), meta)


def test_zstd_sequential_reads_decompress_ahead(tmp_path):
    raw, r = _three_frames(tmp_path)
    got = list(r.iter_range(P, 5 * P, 2 * P))  # pieces straddle every frame boundary
    assert b"".join(got) == raw[P:] and [len(x) for x in got] == [2 * P, 2 * P, P]
    whole = list(r.iter_range(2 * P, 2 * P, 4 * P))
    assert whole == [raw[2 * P : 4 * P]] and whole[0] is r._frame(1)  # a whole frame: no copy
    assert r.read(3 * P, 2 * P) == raw[3 * P : 5 * P]
    r.close()
    assert r._ahead is None and r._pool is None


def test_zstd_bad_frame_read_ahead_is_reported_when_read(tmp_path):
    raw, r = _three_frames(tmp_path, bad=1)
    assert list(r.iter_range(0, 2 * P, 2 * P)) == [raw[: 2 * P]]  # frame 1 read ahead: bad
    assert r._ahead is not None and r._ahead[0] == 1
    with pytest.raises(ImageError, match="zstd frame 1 declares no size"):
        list(r.iter_range(2 * P, 2 * P, P))
    assert r.read(4 * P, P) == raw[4 * P : 5 * P]  # the frames after it still read
    r.close()
    (tmp_path / "b").mkdir()
    raw, r = _three_frames(tmp_path / "b", bad=2)
    assert list(r.iter_range(0, 4 * P, 4 * P)) == [raw[: 4 * P]]  # reads ahead into frame 2
    assert r._ahead is not None and r._ahead[0] == 2
    r.close()  # a bad frame nobody asked for is no error


def test_truth_checked_two_tasks_at_a_time_reports_the_first_bad_task(tmp_path):
    with ImageSetWriter(tmp_path / "s") as w:
        for pid in (1, 2, 3):
            w.add_task(pid, 0 if pid == 1 else 1, "t", [Vma(0x10000, 0x10000 + 4 * P, 3, ANON)])
            w.add_truth(pid, [(0x10000, [pid, 2, 3, 4])])
    with ImageSet.open(tmp_path / "s") as s:
        assert sorted(s.truths) == [1, 2, 3]
    for pid in (3, 2):
        rewrite(tmp_path / "s" / f"truth-{pid}.img", lambda e: e[1].digests.__setitem__(0, 7))
    with pytest.raises(ImageError) as ei:
        ImageSet.open(tmp_path / "s")
    assert "truth-2.img" in str(ei.value.path) and "task digest" in ei.value.message


@pytest.mark.parametrize("lag", [1, 300, 1 << 22])
def test_task_digest_in_its_thread_is_the_same_digest(lag, monkeypatch):
    import numpy as np

    from dumper.images.checksums import TaskDigest

    digests = np.arange(10_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    runs = [(0x400000 + a * P, digests[a : a + 97]) for a in range(0, len(digests), 97)]
    monkeypatch.setattr(TaskDigest, "LAG", lag)
    td = TaskDigest(P, background=True)
    buf = np.zeros(97, dtype=np.uint64)
    for vaddr, d in runs:  # one array reused by the caller: the digest copies each run
        buf[: len(d)] = d
        td.update(vaddr, buf[: len(d)])
    got = td.digest()
    td.close()
    assert got == task_digest(runs, P) and td.nr_pages == len(digests)


def test_truth_finished_in_the_writers_thread(tmp_path):
    digests = list(range(1, 9))
    for name, wait in (("a", True), ("b", False)):
        with ImageSetWriter(tmp_path / name) as w:
            w.add_task(1, 0, "t", [Vma(0x10000, 0x10000 + 8 * P, 3, ANON)])
            got = w.add_truth(1, [(0x10000, digests[:3]), (0x13000, digests[3:])], wait=wait)
            assert (got is None) is not wait
    assert (tmp_path / "a" / "truth-1.img").read_bytes() == (
        tmp_path / "b" / "truth-1.img").read_bytes()
    with ImageSet.open(tmp_path / "b") as s:
        assert s.truths[1].task_digest == task_digest([(0x10000, digests)])
    # Its error is commit's: nothing installed, the temporary directory gone.
    w = ImageSetWriter(tmp_path / "c")
    w.add_task(1, 0, "t", [Vma(0x10000, 0x10000 + 8 * P, 3, ANON)])
    (w.tmp / "truth-1.img").write_bytes(b"")  # O_EXCL: the truth's own open fails
    assert w.add_truth(1, [(0x10000, digests)], wait=False) is None
    with pytest.raises(OSError, match="writing truth-1.img"):
        w.commit()
    assert not (tmp_path / "c").exists() and not w.tmp.exists()
