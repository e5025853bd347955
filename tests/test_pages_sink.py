"""The pages writer's I/O: pooled aligned buffers, the writing thread (Sink), O_DIRECT."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from dumper.buffers import BufferPool, aligned
from dumper.images.pages import PagesWriter, Sink

P = 4096


def test_buffer_pool_reuses_only_released_buffers():
    pool = BufferPool()
    size = BufferPool.MIN_POOLED
    a = pool.get(size)
    b = pool.get(size)
    assert a is not b and aligned(a) and aligned(b)
    kept = memoryview(a)
    del a
    assert pool.get(size) is not kept.obj  # a view still refers to it
    del kept
    c = pool.get(size)
    assert c is not b and len(pool._bufs[size]) == 3
    assert type(pool.get(4096)) is bytearray and 4096 not in pool._bufs
    assert type(pool.get(size + 1)) is bytearray  # not whole pages: never pooled


def _direct_fd(path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError:
        os.close(fd)
        pytest.skip(f"{path}: no O_DIRECT on this filesystem")
    return fd


def test_direct_sink_writes_every_kind_of_chunk_in_order(tmp_path):
    # tmp_path is on the root ext4 here: O_DIRECT holds.
    pool = BufferPool()
    big = pool.get(1 << 20)
    big[:] = bytes(range(256)) * 4096
    pieces = [
        memoryview(big),                 # aligned: goes to the disk as it is
        b"a" * 100, b"b" * (P - 100),    # odd pieces: gathered into a staging buffer
        memoryview(big)[P : 3 * P],      # aligned, after a staged whole page
        os.urandom(Sink.STAGE + 3 * P),  # more than one staging buffer
        b"tail",                         # an odd tail: written after O_DIRECT is turned off
    ]
    fd = _direct_fd(tmp_path / "f")
    try:
        sink = Sink(fd)
        assert sink.direct
        for p in pieces:
            sink.put(p)
        sink.close()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(p) for p in pieces)


def test_sink_error_reaches_the_caller(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)  # write(2) fails with EBADF
    try:
        sink = Sink(fd)
        sink.put(b"x" * P)
        with pytest.raises(OSError) as e:
            for _ in range(2 * Sink.DEPTH):  # a later put or close raises the thread's error
                sink.put(b"x" * P)
            sink.close()
        assert e.value.errno == errno.EBADF
        sink.close(discard=True)  # if a put raised, the thread was still waiting
        assert not sink._thread.is_alive()
    finally:
        os.close(fd)


def test_discard_stops_the_thread_quietly(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pw = PagesWriter(fd, 1, P)
        pw.write(bytes(P))
        pw.discard()
        assert not pw._sink._thread.is_alive()
    finally:
        os.close(fd)


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_pages_writer_on_a_direct_fd(tmp_path, compress):
    data = os.urandom(5 * P) + bytes(3 * P)
    fd = _direct_fd(tmp_path / "f")
    try:
        pw = PagesWriter(fd, 1, P, compress, frame_size=2 * P)
        for i in range(0, len(data), 1000):
            pw.write(data[i : i + 1000])
        meta = pw.close()
    finally:
        os.close(fd)
    assert meta.raw_size == len(data) and meta.stored_size == os.path.getsize(tmp_path / "f")
    _assert_reads_back(tmp_path / "f", meta, data)


def _assert_reads_back(path, meta, data: bytes) -> None:
    """The file's checksum holds and its raw bytes are data."""
    from dumper.images.pages import PagesReader

    r = PagesReader(str(path), meta)
    try:
        r.verify()
        assert r.read(0, len(data)) == data
    finally:
        r.close()


def test_a_writer_that_cannot_start_leaves_no_thread(tmp_path):
    import threading

    before = {t.name for t in threading.enumerate()}
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ValueError, match="level"):
            PagesWriter(fd, 1, P, "zstd", level=99)
    finally:
        os.close(fd)
    assert {t.name for t in threading.enumerate()} == before


def test_direct_write_refused_falls_back_to_buffered(tmp_path, monkeypatch):
    # A device with logical blocks larger than the sink's alignment, or a filesystem that
    # took F_SETFL O_DIRECT but refuses the write itself: EINVAL, then the same bytes again.
    import dumper.images.pages as pages

    real_write = os.write
    refused: list[int] = []

    def write(fd, data):
        if not refused:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(pages.os, "write", write)
    data = os.urandom(3 * P)
    fd = _direct_fd(tmp_path / "f")
    try:
        sink = Sink(fd)
        sink.put(data)
        sink.close()
        assert not sink.direct and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    assert refused and (tmp_path / "f").read_bytes() == data


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_zstd_frames_compressed_in_parallel_are_stored_in_order(tmp_path, threads):
    # Chunks that end inside a frame, span several and fill exactly one; frames from the
    # caller's buffers and from the writer's own: every frame in order, checksum of the file.
    frame = 4 * P
    sizes = [P, 3 * P, 9 * P, frame, 2 * P, 13 * P, P]
    data = b"".join(os.urandom(n // 2) + bytes(n // 2) for n in sizes)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pw = PagesWriter(fd, 1, P, "zstd", threads=threads, frame_size=frame)
        pos = 0
        for n in sizes:
            pw.write(memoryview(data)[pos : pos + n])
            pos += n
        meta = pw.close()
    finally:
        os.close(fd)
    assert len(meta.frame_sizes) == -(-len(data) // frame)
    _assert_reads_back(tmp_path / "f", meta, data)


@pytest.mark.parametrize("append", [False, True])
def test_buffered_sink_splices_every_kind_of_chunk_in_order(tmp_path, append):
    # Through the pipe (vmsplice + splice), pieces larger than the pipe and odd ones, bytes
    # and views; O_APPEND makes splice refuse the file (EINVAL): the same bytes by write(2).
    pool = BufferPool()
    big = pool.get(4 << 20)
    big[:] = os.urandom(4 << 20)
    pieces = [memoryview(big), b"odd" * 1001, os.urandom(Sink.PIPE + 17),
              memoryview(big)[5 : 3 * P], b"t"]
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
    fd = os.open(tmp_path / "f", flags, 0o600)
    try:
        sink = Sink(fd)
        assert not sink.direct
        for p in pieces:
            sink.put(p)
        sink.close()
        assert sink._splice is not append and sink._pipe is None
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(p) for p in pieces)
