"""Checksums and digests.

- Stored checksum: XXH3-128 of a pages image's bytes as stored (compressed or not), kept in
  dumper.img and checked on read. It guards against a torn or corrupted file, not against
  tampering, and runs at >10 GB/s here where sha256 runs at ~1.5 GB/s and zlib.crc32 at
  ~2.6 GB/s: in a live dump's reading thread that was 0.7 s and 0.4 s per GiB against
  0.03 s (bench/live.py --profile). Sets written with sha256 (the format's first algorithm)
  still verify.
- Page digest: XXH3-64 of one page, the ground truth's unit (sets before it used a 64-bit
  blake2b, ~10 us a page here against ~0.3 us: 2.5 s a GiB of truth); a loss report names
  pages by their digests differing.
- Task digest: blake2b-256 over (vaddr, page digest) of every page of a task's truth, as
  little-endian u64 pairs: it changes when a page moves as well as when its bytes change, and
  does not depend on how the pages are split into runs.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import xxhash

STORED_ALGO = "xxh3-128"
PAGE_DIGEST_ALGO = "xxh3-64"
TASK_DIGEST_ALGO = "blake2b-256"


class StoredHash(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


STORED_ALGOS: dict[str, Callable[[], StoredHash]] = {
    "xxh3-128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
}


def stored_hash(algo: str = STORED_ALGO) -> StoredHash:
    """A fresh hash of a pages image's stored bytes; KeyError for an unknown algorithm."""
    return STORED_ALGOS[algo]()


def page_digest(page: bytes | memoryview) -> int:
    """The u64 digest of one page's bytes."""
    return xxhash.xxh3_64_intdigest(page)


# What a page reads as when reading it would fault (a guard or poison marker, PROT_NONE):
# the digest of a string no 4 KiB page can equal (as dumper.linux.truth records it).
UNREADABLE_DIGEST = page_digest(b"dumper: unreadable page")


def page_digests(data: bytes | bytearray | memoryview, pages: np.ndarray | None = None,
                 page_size: int = 4096) -> np.ndarray:
    """Digests (u64) of the pages of a page-aligned buffer: every page, or those indices."""
    mv = memoryview(data)
    idx = range(len(mv) // page_size) if pages is None else pages.tolist()
    return np.array([page_digest(mv[i * page_size : (i + 1) * page_size]) for i in idx],
                    dtype=np.uint64)


class TaskDigest:
    """Incremental task digest: update() with each run in VMA order, then digest().

    background=True builds the pairs and hashes them in a thread of its own (blake2b and
    numpy release the GIL: blake2b takes ~1 s a GiB of pairs here, 64 Mi pages) while the
    caller makes the next runs. Runs wait in order, as copies, up to LAG digests (and always
    one), so a hashing thread that a loaded machine runs late holds the caller back only
    when it is that far behind. close() stops the thread (digest() first)."""

    LAG = 1 << 22  # digests waiting at most: 32 MiB of copies

    def __init__(self, page_size: int = 4096, background: bool = False):
        self.page_size = page_size
        self.nr_pages = 0
        self._h = hashlib.blake2b(digest_size=32)
        self._pool = ThreadPoolExecutor(1, "task-digest") if background else None
        self._pending: deque[tuple[int, Future[None]]] = deque()
        self._waiting = 0  # digests in _pending

    def update(self, vaddr: int, digests: Sequence[int] | np.ndarray) -> None:
        self.nr_pages += len(digests)
        if self._pool is None:
            self._hash_run(vaddr, np.asarray(digests, dtype="<u8"))
            return
        d = np.array(digests, dtype="<u8")  # our own copy: the caller may reuse its array
        while self._pending and self._waiting + len(d) > self.LAG:
            self._wait_one()
        self._pending.append((len(d), self._pool.submit(self._hash_run, vaddr, d)))
        self._waiting += len(d)

    def _hash_run(self, vaddr: int, d: np.ndarray) -> None:
        pairs = np.empty((len(d), 2), dtype="<u8")
        pairs[:, 0] = np.arange(len(d), dtype="<u8")
        pairs[:, 0] *= np.uint64(self.page_size)
        pairs[:, 0] += np.uint64(vaddr)
        pairs[:, 1] = d
        self._h.update(pairs)  # the array's own bytes: no tobytes() copy

    def _wait_one(self) -> None:
        n, done = self._pending.popleft()
        self._waiting -= n
        done.result()

    def digest(self) -> bytes:
        while self._pending:
            self._wait_one()
        return self._h.copy().digest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()
            self._waiting = 0


def task_digest(runs: Iterable[tuple[int, Sequence[int]]], page_size: int = 4096) -> bytes:
    """Digest of a task's truth: runs of (vaddr, page digests) in VMA order."""
    h = TaskDigest(page_size)
    for vaddr, digests in runs:
        h.update(vaddr, digests)
    return h.digest()
