"""Page contents as 64-bit content ids, so that tens of GiB cost 8 bytes a page.

A content id (cid) stands for the 4096 bytes of a page:
- 0 is a page of zeros;
- 1 .. 2**62-1 is a *seed*: the page is the seed's 8 little-endian bytes repeated 512 times
  (what the model's writes produce, one fresh seed per page written);
- ids with bit 63 set name explicit bytes a scenario wrote, kept in a table and keyed by a
  hash of the bytes, so equal bytes always get the same id.
``canonical_cid`` maps any 4096 bytes back to their id, so cids compare equal exactly when
the bytes do: the model verifies byte identity by comparing integers.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from dumper.kabi import PAGE_SIZE

ZERO = 0
SEED_LIMIT = 1 << 62
EXPLICIT = 1 << 63
# Not a page: the read would fault (SIGSEGV on a guard marker, SIGBUS past EOF or poison).
UNREADABLE = (1 << 64) - 1

_ZERO_PAGE = bytes(PAGE_SIZE)


class ContentStore:
    """Explicit page bytes and the seed counter of one model."""

    def __init__(self) -> None:
        self._explicit: dict[int, bytes] = {}
        self._next_seed = 1

    def fresh_seeds(self, n: int) -> np.ndarray:
        """n new seeds, one per page written."""
        first = self._next_seed
        self._next_seed += n
        if self._next_seed >= SEED_LIMIT:
            raise OverflowError("content seeds exhausted")
        return np.arange(first, first + n, dtype=np.uint64)

    def intern(self, data: bytes) -> int:
        """The content id of one page of bytes (canonical: equal bytes, equal id)."""
        if len(data) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(data)}")
        if data == _ZERO_PAGE:
            return ZERO
        head = data[:8]
        seed = struct.unpack("<Q", head)[0]
        if 0 < seed < SEED_LIMIT and head * (PAGE_SIZE // 8) == data:
            return seed
        key = EXPLICIT | int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")
        self._explicit.setdefault(key, bytes(data))
        return key

    def page_bytes(self, cid: int) -> bytes:
        """The 4096 bytes a content id stands for."""
        cid = int(cid)
        if cid == ZERO:
            return _ZERO_PAGE
        if cid == UNREADABLE:
            raise ValueError("an unreadable page has no bytes")
        if cid & EXPLICIT:
            return self._explicit[cid]
        return struct.pack("<Q", cid) * (PAGE_SIZE // 8)

    def pages_bytes(self, cids: np.ndarray) -> bytes:
        """The bytes of several pages, in order (vectorized for seed pages)."""
        cids = np.asarray(cids, dtype=np.uint64)
        if cids.size and not (cids & np.uint64(EXPLICIT)).any():
            # Seeds and zeros: each page is its 8-byte id repeated; zero stays zero. One pass
            # (a broadcast view), not repeat + astype + tobytes: three at 16 GiB a dump.
            rows = cids.astype("<u8", copy=False)[:, None]
            return np.broadcast_to(rows, (len(cids), PAGE_SIZE // 8)).tobytes()
        return b"".join(self.page_bytes(c) for c in cids)

    def intern_pages(self, data: bytes | memoryview) -> np.ndarray:
        """Content ids of a run of whole pages of bytes."""
        mv = memoryview(data)
        if len(mv) % PAGE_SIZE:
            raise ValueError("data is not a whole number of pages")
        n = len(mv) // PAGE_SIZE
        words = np.frombuffer(mv, dtype="<u8").reshape(n, PAGE_SIZE // 8)
        first = words[:, 0]
        uniform = (words == first[:, None]).all(axis=1)
        seedlike = uniform & (first < SEED_LIMIT)
        out = np.where(seedlike, first, 0).astype(np.uint64)
        for i in np.nonzero(~seedlike)[0]:
            out[i] = self.intern(bytes(mv[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]))
        return out
