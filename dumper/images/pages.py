"""Page stores: pages-N.img, raw (CRIU's format) or zstd frames, streamed both ways.

A raw store is the pages themselves, in pagemap order. A zstd store is a run of independent
zstd frames of `frame_size` raw bytes each (the last may be shorter), every frame carrying
its content size and an xxhash content checksum; dumper.img's PagesImageEntry lists the
frames' stored sizes, which makes random access cost one frame's decompression. Either way
the XXH3-128 of the stored bytes goes to PagesImageEntry and is checked on read.

PagesWriter takes byte chunks of any size; the bytes are checksummed and go to the file in a
thread (a Sink) while the caller reads the next chunk: the caller's pread and the Sink's
write(2) release the GIL, so reading, hashing (xxhash holds the GIL: 0.1-0.2 s/GiB here) and
writing overlap on two cores, and on an O_DIRECT file the chunk goes from the caller's buffer
to the disk without a page-cache copy when it is page aligned (dumper.buffers pools such
buffers). With threads, zstd frames are compressed that many at a time, each by a worker of
its own (python-zstandard releases the GIL while it compresses; one frame's own multi-threaded
compress() gains nothing at 4 MiB, its job size is larger), and stored in order. A chunk
handed to write() is referenced until it is written (or compressed): callers must not change
it meanwhile, which a BufferPool guarantees by reusing only buffers nobody refers to. PagesReader
reads any raw byte range, decompressing at most the frames it spans (keeping the last one),
and refuses a frame whose header disagrees with the index or whose data would decompress
beyond the size it declares.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from dumper.buffers import BufferPool, address, aligned, vmsplice
from dumper.images import safeio
from dumper.images.checksums import STORED_ALGO, STORED_ALGOS, StoredHash, stored_hash
from dumper.images.errors import ImageError
from dumper.images.proto import dumper_images_pb2 as own

NONE = "none"
ZSTD = "zstd"
COMPRESSIONS = {NONE: own.COMPRESSION_NONE, ZSTD: own.COMPRESSION_ZSTD}
DEFAULT_FRAME_SIZE = 4 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_READ_BLOCK = 1 << 20


Chunk = bytes | bytearray | memoryview


class Sink:
    """Writes buffers to a file descriptor, in order, in a thread of its own, hashing each
    into hasher (if any) just before it is written: the checksum is of the file's bytes.

    At most DEPTH buffers wait, so a fast reader is held back by a slow disk rather than
    filling memory. On a buffered descriptor the bytes go through a pipe: vmsplice(2) of
    the buffer (by reference), then splice(2) into the file, which copies them into the page
    cache as write(2) would, but measured 2.5x faster here (one dump of 1 GiB, 6 interleaved
    pairs in one process: private 0.58 / 0.48 s median / best against write(2)'s 1.48 / 0.61,
    MAP_SHARED 0.59 / 0.54 against 1.23 / 1.04; CRIU writes its pages the same way). The
    pipe is drained before the buffer is let go, so nothing refers to it afterwards; where
    splice refuses the file (EINVAL: O_APPEND, a filesystem without splice_write), write(2).
    On an O_DIRECT descriptor, page-aligned buffers are written as they are
    and anything else (a model's bytes, zstd frames, odd pieces) is first gathered into
    aligned staging buffers; a tail that is not a whole number of blocks is written after
    turning O_DIRECT off. The first error is raised by the next put() or by close()."""

    DEPTH = 4
    STAGE = 4 << 20
    BLOCK = 4096  # O_DIRECT alignment that holds for every block device (<= page size)

    def __init__(self, fd: int, hasher: StoredHash | None = None) -> None:
        self.fd = fd
        self.hasher = hasher
        self.direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        self._q: queue.Queue[Chunk | None] = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._stages = BufferPool(keep=self.DEPTH + 2)
        self._stage: memoryview | None = None
        self._fill = 0
        self._pipe: tuple[int, int] | None = None  # (read, write), made by the thread
        self._splice = True  # until the file refuses it
        self._thread = threading.Thread(target=self._run, name=f"sink-fd{fd}", daemon=True)
        self._thread.start()

    def put(self, data: Chunk) -> None:
        if self._error is not None:
            raise self._error
        if not self.direct:
            self._q.put(data)
            return
        if self._fill % self.BLOCK == 0 and aligned(data, self.BLOCK):
            self._flush_stage()
            self._q.put(data)
            return
        mv = memoryview(data).cast("B")
        while len(mv):
            if self._stage is None:
                self._stage, self._fill = memoryview(self._stages.get(self.STAGE)), 0
            n = min(len(mv), self.STAGE - self._fill)
            self._stage[self._fill : self._fill + n] = mv[:n]
            self._fill += n
            mv = mv[n:]
            if self._fill == self.STAGE:
                self._flush_stage()

    def _flush_stage(self) -> None:
        if self._stage is not None and self._fill:
            self._q.put(self._stage[: self._fill])
        self._stage, self._fill = None, 0

    def close(self, discard: bool = False) -> None:
        """Write what is left and wait for the thread; discard: drop it, raise nothing."""
        if discard:
            self._error = self._error or OSError("discarded")
        else:
            self._flush_stage()
        self._stage = None
        self._q.put(None)
        self._thread.join()
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None
        if self._error is not None and not discard:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    self._error = e
            del item  # let the pool reuse the buffer

    def _consume(self, item: Chunk) -> None:
        mv = memoryview(item).cast("B")
        if self.hasher is not None:
            self.hasher.update(mv)  # after the caller let go of the chunk, before the disk
        self._write(mv)

    def _write(self, mv: memoryview) -> None:
        while len(mv):
            if self.direct and not aligned(mv, self.BLOCK):
                self._buffered()  # the tail of an odd-sized image: O_DIRECT refuses it
            if not self.direct and self._splice:
                mv = mv[self._spliced(mv) :]
                continue
            try:
                mv = mv[os.write(self.fd, mv) :]
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                # A device whose logical blocks are larger than BLOCK, or a filesystem that
                # took F_SETFL O_DIRECT but not the write: the same bytes, buffered.
                self._buffered()

    PIPE = 1 << 20  # the pipe's size (fs.pipe-max-size's default); 64 KiB if refused

    def _spliced(self, mv: memoryview) -> int:
        """Bytes of mv put into the file through the pipe (vmsplice, then splice until the
        pipe is empty); 0 after turning splicing off when the file refuses it."""
        if self._pipe is None:
            self._pipe = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._pipe[1], F_SETPIPE_SZ, self.PIPE)
        r, w = self._pipe
        taken = vmsplice(w, address(mv), len(mv))
        left = taken
        while left:
            try:
                n = os.splice(r, self.fd, left)
                if n <= 0:
                    raise OSError(errno.EIO, f"splice into fd {self.fd} wrote nothing")
                left -= n
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._splice = False  # the rest by write(2): first what the pipe holds
                while left:
                    piece = os.read(r, left)
                    done = 0
                    while done < len(piece):
                        done += os.write(self.fd, piece[done:])
                    left -= len(piece)
        return taken

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self.direct = False


class PagesWriter:
    """Writes one pages image to an open file descriptor (O_DIRECT or not);
    close() returns its PagesImageEntry, discard() drops what is pending."""

    def __init__(
        self,
        fd: int,
        pages_id: int,
        page_size: int,
        compress: str = NONE,
        level: int = 3,
        threads: int = 0,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ):
        if compress not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compress!r}: none or zstd")
        if frame_size <= 0 or frame_size % page_size:
            raise ValueError("frame_size must be a positive multiple of the page size")
        self.pages_id = pages_id
        self.page_size = page_size
        self.compress = compress
        self.level = level
        self.frame_size = frame_size
        self.raw_size = 0
        self.stored_size = 0
        self.frames: list[int] = []
        self._hash = stored_hash()
        self._buf = bytearray()  # the start of a frame that the last chunk did not fill
        self._zstd = compress == ZSTD
        self._local = threading.local()  # one compressor per thread: a cctx is not shared
        if self._zstd:
            self._compressor()  # a bad level fails here, before any thread starts
        self._threads = threads if self._zstd else 0
        self._pool = ThreadPoolExecutor(threads, "zstd") if self._threads else None
        self._pending: deque[Future[bytes]] = deque()  # frames being compressed, in order
        self._sink = Sink(fd, self._hash)  # last: it starts a thread

    def _store(self, data: Chunk) -> None:
        self._sink.put(data)
        self.stored_size += len(data)

    def write(self, chunk: Chunk) -> None:
        self.raw_size += len(chunk)
        if not self._zstd:
            self._store(chunk)
            return
        view = memoryview(chunk).cast("B")
        if self._buf:  # complete the frame begun by the last chunk
            n = self.frame_size - len(self._buf)
            self._buf += view[:n]
            view = view[n:]
            if len(self._buf) < self.frame_size:
                return
            self._frame(self._buf)
            self._buf = bytearray()
        whole = len(view) - len(view) % self.frame_size
        for a in range(0, whole, self.frame_size):  # straight from the caller's buffer
            self._frame(view[a : a + self.frame_size])
        self._buf += view[whole:]

    def _compressor(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=self.level, write_checksum=True, write_content_size=True)
        return cctx

    def _compress(self, raw: Chunk) -> bytes:
        return self._compressor().compress(raw)

    def _frame(self, raw: Chunk) -> None:
        if self._pool is None:
            self._stored_frame(self._compress(raw))
            return
        self._pending.append(self._pool.submit(self._compress, raw))
        while len(self._pending) > self._threads:  # keep every worker busy
            self._stored_frame(self._pending.popleft().result())

    def _stored_frame(self, data: bytes) -> None:
        self.frames.append(len(data))
        self._store(data)

    def close(self) -> own.PagesImageEntry:
        if self._buf:
            self._frame(self._buf)
            self._buf = bytearray()
        while self._pending:
            self._stored_frame(self._pending.popleft().result())
        if self._pool is not None:
            self._pool.shutdown()
        self._sink.close()
        if self.raw_size % self.page_size:
            raise ValueError(
                f"pages-{self.pages_id}.img: {self.raw_size} bytes is not a whole number of pages"
            )
        meta = own.PagesImageEntry(
            pages_id=self.pages_id,
            compression=COMPRESSIONS[self.compress],
            nr_pages=self.raw_size // self.page_size,
            raw_size=self.raw_size,
            stored_size=self.stored_size,
            checksum_algo=STORED_ALGO,
            checksum=self._hash.digest(),
        )
        if self._zstd:
            meta.level = self.level
            meta.frame_raw_size = self.frame_size
            meta.frame_sizes.extend(self.frames)
        return meta

    def discard(self) -> None:
        """Stop the writing thread after a failure elsewhere; the file is left as it is."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self._pending.clear()
        self._sink.close(discard=True)


class PagesReader:
    """Random and sequential access to one pages image's raw bytes.

    meta is the image's PagesImageEntry, or None for a CRIU set: raw, no checksum.
    """

    def __init__(self, path: str, meta: own.PagesImageEntry | None):
        self.path = path
        self.meta = meta
        self._fd = safeio.open_regular(path)  # no FIFO, device or link: no hang
        self.file_size = os.fstat(self._fd).st_size
        self.zstd = meta is not None and meta.compression == own.COMPRESSION_ZSTD
        if meta is not None and meta.stored_size != self.file_size:
            raise ImageError(
                path,
                f"holds {self.file_size} bytes, dumper.img records {meta.stored_size}",
                min(self.file_size, meta.stored_size),
            )
        self.raw_size = meta.raw_size if meta is not None else self.file_size
        self._starts: list[int] = []
        self._cache: tuple[int, bytes] | None = None
        self._map: mmap.mmap | None = None  # a raw image mapped for iter_views
        self._ahead: tuple[int, Future[bytes]] | None = None  # the next frame, decompressing
        self._pool: ThreadPoolExecutor | None = None
        if self.zstd:
            self._index()

    def _index(self) -> None:
        meta = self.meta
        assert meta is not None
        fsz = meta.frame_raw_size
        want = -(-meta.raw_size // fsz) if fsz else -1
        if fsz <= 0 or len(meta.frame_sizes) != want:
            raise ImageError(
                self.path,
                f"dumper.img lists {len(meta.frame_sizes)} zstd frames of {fsz} bytes "
                f"for {meta.raw_size} raw bytes",
            )
        pos = 0
        for size in meta.frame_sizes:
            self._starts.append(pos)
            pos += size
        if pos != self.file_size:
            raise ImageError(
                self.path, f"zstd frames add up to {pos} bytes, the file holds {self.file_size}"
            )

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still held: the GC unmaps it
                self._map.close()
            self._map = None
        self._drop_ahead()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def verify(self, advance: Callable[[int], None] | None = None,
               stop: threading.Event | None = None, mapped: bool = False) -> None:
        """Hash the stored bytes and compare with dumper.img (no-op without a checksum);
        advance hears the bytes hashed (a progress bar); stop set: give up, quietly.
        mapped: hash them through mapping() (no copy; the restore's views share its page
        table entries) instead of pread(2) into a buffer."""
        if self.meta is None:
            return
        algo = self.meta.checksum_algo
        if algo not in STORED_ALGOS:
            raise ImageError(self.path, f"unknown checksum algorithm {algo!r}")
        h = stored_hash(algo)
        buf = bytearray(0 if mapped else _READ_BLOCK)  # reused: fresh ones meet
        view = memoryview(self.mapping() if mapped and self.file_size else buf)  # host faults
        off = 0
        while off < self.file_size:
            if stop is not None and stop.is_set():
                return
            if mapped:
                n = min(_READ_BLOCK, self.file_size - off)
                h.update(view[off : off + n])
            else:
                n = os.preadv(self._fd, [buf], off)
                if not n:
                    break
                h.update(view[:n])
            off += n
            if advance is not None:
                advance(n)
        view.release()
        if h.digest() != self.meta.checksum:
            raise ImageError(
                self.path,
                f"checksum mismatch: {algo} {h.hexdigest()}, "
                f"dumper.img records {self.meta.checksum.hex()}",
            )

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise ImageError(
                self.path,
                f"truncated: wanted {length} bytes, file ends at {self.file_size}",
                offset,
            )
        return data

    def _frame(self, i: int) -> bytes:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == i:
            raw = ahead[1].result()  # its ImageError, if any, is raised here
        else:
            if ahead is not None:
                ahead[1].cancel()
                with contextlib.suppress(BaseException):  # a frame nobody asked for
                    ahead[1].result()
            raw = self._decompress(i)
        self._cache = (i, raw)
        return raw

    def _read_ahead(self, i: int) -> None:
        """Start decompressing frame i in a thread (zstd releases the GIL), for a sequential
        reader that will ask for it next: restoring 16 GiB, the decompression (2.7 s) runs
        beside the caller's use of the frame before."""
        if i >= len(self._starts) or (self._ahead is not None and self._ahead[0] == i) or (
                self._cache is not None and self._cache[0] == i):
            return
        self._drop_ahead()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, "zstd-read")
        self._ahead = (i, self._pool.submit(self._decompress, i))

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel()
            with contextlib.suppress(BaseException):
                ahead[1].result()

    def _decompress(self, i: int) -> bytes:
        """Frame i's raw bytes, checked against the index (any thread: preads only)."""
        meta = self.meta
        assert meta is not None
        start = self._starts[i]
        expect = min(meta.frame_raw_size, meta.raw_size - i * meta.frame_raw_size)
        data = self._pread(start, meta.frame_sizes[i])
        try:
            declared = zstandard.get_frame_parameters(data).content_size
        except zstandard.ZstdError as e:
            raise ImageError(self.path, f"zstd frame {i}: bad header: {e}", start) from None
        if declared != expect:
            shown = "no size" if declared == zstandard.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
            raise ImageError(
                self.path, f"zstd frame {i} declares {shown}, the index {expect} bytes", start
            )
        try:  # read one byte more than declared: a frame must not hold more than it says
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            raw = reader.read(expect + 1)
        except zstandard.ZstdError as e:
            raise ImageError(
                self.path,
                f"zstd frame {i} does not decompress to its declared {expect} bytes: {e}",
                start,
            ) from None
        if len(raw) != expect:
            how = "beyond" if len(raw) > expect else "short of"
            raise ImageError(
                self.path, f"zstd frame {i} decompresses {how} its declared {expect} bytes", start
            )
        return raw

    def read(self, offset: int, length: int) -> bytes:
        """Raw bytes [offset, offset + length)."""
        return self._read(offset, length, ahead=False)

    def _read(self, offset: int, length: int, ahead: bool) -> bytes:
        if offset < 0 or offset + length > self.raw_size:
            raise ImageError(
                self.path,
                f"read of {length} bytes at raw offset {offset} is past the end of the "
                f"page data ({self.raw_size} bytes)",
            )
        if not self.zstd:
            return self._pread(offset, length)
        assert self.meta is not None
        fsz = self.meta.frame_raw_size
        parts = []
        pos = offset
        while pos < offset + length:
            i = pos // fsz
            frame = self._frame(i)
            if ahead:
                self._read_ahead(i + 1)
            lo = pos - i * fsz
            hi = min(len(frame), lo + (offset + length - pos))
            if lo == 0 and hi == len(frame) and length == hi:
                return frame  # a whole frame: its own bytes, no copy
            parts.append(memoryview(frame)[lo:hi])
            pos += hi - lo
        return b"".join(parts)  # one copy of each piece

    def mapping(self) -> mmap.mmap:
        """The whole file mapped read-only (shared: its page cache), made once. A file cut
        short under it would fault (SIGBUS) where read(2) reports it; its size was checked
        against dumper.img when opened, and a restore's stubs die with us (EXITKILL)."""
        if self._map is None:
            self._map = mmap.mmap(self._fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
            self._map.madvise(mmap.MADV_SEQUENTIAL)
        return self._map

    def iter_views(self, offset: int, length: int, chunk: int) -> Iterator[memoryview]:
        """As iter_range, without copies: a raw image's pieces are views of the file mapped
        read-only (its page cache), a zstd image's are views of each decompressed frame.
        Each view is valid until the next is asked for; a reader of them must be done by then.
        """
        if self.zstd or not length:
            for data in self.iter_range(offset, length, chunk):
                yield memoryview(data)
            return
        if offset < 0 or offset + length > self.raw_size:
            self.read(offset, length)  # raises the ImageError
        whole = memoryview(self.mapping())
        try:
            end = offset + length
            while offset < end:
                n = min(chunk, end - offset)
                piece = whole[offset : offset + n]
                try:
                    yield piece
                finally:
                    piece.release()
                offset += n
        finally:
            whole.release()

    def iter_range(self, offset: int, length: int, chunk: int) -> Iterator[bytes]:
        """Raw bytes [offset, offset + length) in pieces of at most chunk bytes; in a zstd
        store the next frame is decompressed while the caller uses this one's pieces."""
        end = offset + length
        while offset < end:
            n = min(chunk, end - offset)
            yield self._read(offset, n, ahead=self.zstd)
            offset += n


class PagesChecker:
    """Every pages image's checksum (PagesReader.verify), one image after the other, in a
    thread of its own: while a restore reads the same bytes through the page cache to write
    them. result() waits and raises the first mismatch; stop() gives up (a failed restore).
    Through each reader's mapping(), the one the restore's views come from: no copy (1 GiB:
    0.09 s of CPU against pread's 0.14, measured), and the page table entries are made once
    for both."""

    def __init__(self, readers: list[PagesReader]) -> None:
        self._readers = readers
        for r in readers:  # here, not in the thread: mapping() is not thread-safe
            if r.file_size and r.meta is not None:
                r.mapping()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pages-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for r in self._readers:
                r.verify(stop=self._stop, mapped=True)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by result()
            self._error = e

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
