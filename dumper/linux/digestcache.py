"""Page digests of what a dump has already read, computed beside it while the tree is frozen.

The pipeline reads every stored page once (read_memory, the objects' pread), then asks for
the truth of each task, which would read them all again (digesting is cheap since the
page digest is XXH3; reading 1 GiB again is not). So while frozen, LinuxHost hands each
chunk it reads to one background thread, which digests its pages while the writer works,
and truth() takes those digests instead of reading again:

* a private page only when its pagemap word now is the word it had when read: the same
  present anonymous page (PFN and flags; needs PFNs visible), which nothing can write while
  the tree is frozen (an anonymous page is written only through a writable PTE, and a
  writable PTE means the only mapper, which is frozen);
* an object page by (st_dev, st_ino, offset), read through map_files in the same freeze.

LinuxHost.freeze() creates the cache and drops it on the way out: nothing outlives a freeze.
"""

from __future__ import annotations

import bisect
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dumper.images.checksums import page_digests
from dumper.kabi import PAGE_SHIFT, PAGE_SIZE, PM_FILE, PM_PFRAME_MASK, PM_PRESENT

U64 = np.uint64
MAX_PENDING = 16  # chunks (8 MiB each from dump.read_runs) waiting to be digested
MAX_CHUNK = 64 << 20  # larger reads are not kept (a dump reads 4 MiB at a time)


def _digest(buf: bytes | bytearray | memoryview, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(len(mask), dtype=U64)
    idx = np.nonzero(mask)[0]
    out[idx] = page_digests(buf, idx)
    return out


@dataclass
class _Chunk:
    start: int  # address, or object byte offset
    words: np.ndarray | None  # pagemap words at read time (private chunks)
    mask: np.ndarray  # pages digested
    digests: Future[np.ndarray]

    @property
    def end(self) -> int:
        return self.start + (len(self.mask) << PAGE_SHIFT)


class DigestCache:
    """Digests of pages read during one freeze; see the module docstring."""

    def __init__(self, zero_pfn: int | None) -> None:
        self.zero_pfn = zero_pfn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dumper-digest-cache")
        self._pending: deque[Future[np.ndarray]] = deque()
        # pid or (dev, ino) -> chunks sorted by start, and their starts (for bisect)
        self._chunks: dict[object, tuple[list[int], list[_Chunk]]] = {}

    def close(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)
        self._chunks.clear()

    def _submit(self, key: object, chunk_start: int, words: np.ndarray | None,
                buf: bytes | bytearray | memoryview, mask: np.ndarray) -> None:
        if len(mask) << PAGE_SHIFT > MAX_CHUNK:
            return
        while len(self._pending) >= MAX_PENDING:  # backpressure: bounded buffers held
            self._pending.popleft().result()
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        fut = self._pool.submit(_digest, buf, mask)
        self._pending.append(fut)
        starts, chunks = self._chunks.setdefault(key, ([], []))
        i = bisect.bisect(starts, chunk_start)  # a dump reads in address order: at the end
        starts.insert(i, chunk_start)
        chunks.insert(i, _Chunk(chunk_start, words, mask, fut))

    def add_private(self, pid: int, start: int, words: bytes, buf: bytes | bytearray,
                    bad: list[tuple[int, int]]) -> None:
        """A chunk read_memory read: its present anonymous pages (not the zero page, not
        the ones that could not be read) get digested."""
        w = np.frombuffer(words, dtype="<u8").copy()
        frame = w & U64(PM_PFRAME_MASK)
        mask = ((w & U64(PM_PRESENT)) != 0) & ((w & U64(PM_FILE)) == 0) & (frame != 0)
        if self.zero_pfn is not None:
            mask &= frame != U64(self.zero_pfn)
        for s, e in bad:
            mask[(s - start) >> PAGE_SHIFT : (e - start) >> PAGE_SHIFT] = False
        if mask.any():
            self._submit(pid, start, w, buf, mask)

    def add_object(self, key: tuple[int, int], offset: int, data: bytes | bytearray) -> None:
        """Whole pages read from an object at offset (a short read: only those pages)."""
        n = len(data) >> PAGE_SHIFT
        if n and offset % PAGE_SIZE == 0:
            self._submit(key, offset, None, data, np.ones(n, dtype=bool))

    def _lookup(self, key: object, start: int, n: int, words: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
        have = np.zeros(n, dtype=bool)
        out = np.zeros(n, dtype=U64)
        end = start + (n << PAGE_SHIFT)
        starts, chunks = self._chunks.get(key, ([], []))
        # Chunks never exceed MAX_CHUNK: only those starting after start - MAX_CHUNK overlap.
        for c in chunks[bisect.bisect(starts, start - MAX_CHUNK) :]:
            if c.start >= end:
                break
            if c.end <= start:
                continue
            a, b = max(start, c.start), min(end, c.end)
            i, j = (a - start) >> PAGE_SHIFT, (b - start) >> PAGE_SHIFT
            k, m = (a - c.start) >> PAGE_SHIFT, (b - c.start) >> PAGE_SHIFT
            ok = c.mask[k:m].copy()
            if words is not None and c.words is not None:
                ok &= c.words[k:m] == words[i:j]
            if ok.any():
                d = c.digests.result()[k:m]
                out[i:j][ok] = d[ok]
                have[i:j] |= ok
        return have, out

    def lookup_private(self, pid: int, start: int, words: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(which pages, their digests) of [start, +len(words)) whose word is unchanged."""
        return self._lookup(pid, start, len(words), words)

    def lookup_object(self, key: tuple[int, int], offset: int, n: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        return self._lookup(key, offset, n, None)
