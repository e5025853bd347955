"""Ground truth of a live task: for every VMA, an XXH3-64 digest (dumper.images.checksums.
page_digest) of each page as the task would read it now, found without changing the target.

Per page (kernel.md sections 1, 6 and 9):
* private VMA, page pagemap says holds data (present, or a swap entry that is not a PTE
  marker): its bytes through /proc/PID/mem (the zero page is not read: ZERO_DIGEST);
* private VMA of a regular file, page without an anonymous copy: the file's page, read with
  pread on the /proc/PID/map_files fd at vm_pgoff (the page cache, never the target's PTEs);
* private VMA otherwise (anonymous, none pte): zeros;
* shared VMA: the object's page through map_files pread; a hole reads zeros (SEEK_DATA finds
  the data, the holes are not even read);
* a page that cannot be read: a guard or poison marker, a page /proc/PID/mem refuses
  (VM_IO, VM_PFNMAP), a file page past the end of the file, any page of a non-regular
  file's shared mapping: UNREADABLE_DIGEST. The protection does not matter: a PROT_NONE
  page that holds data holds it for the task to read once it mprotects it back, so its
  bytes are the truth (/proc/PID/mem reads through it; an object is read through itself).
"""

from __future__ import annotations

import os
import stat

import numpy as np

from dumper.host import MapEntry, parse_maps
from dumper.images.checksums import (
    PAGE_DIGEST_ALGO,
    UNREADABLE_DIGEST,
    page_digest,
    page_digests,
)
from dumper.kabi import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_GUARD_REGION,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SWAP,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    SWP_PTE_MARKER,
    SWP_TYPE_MASK,
)
from dumper.linux import memread, pagemap, procfs
from dumper.linux.digestcache import DigestCache
from dumper.linux.errors import ProcError
from dumper.linux.mapfiles import MapFile
from dumper.linux.taskstate import vdso_image

TRUTH_ALGO = PAGE_DIGEST_ALGO
ZERO_DIGEST = page_digest(bytes(PAGE_SIZE))
WINDOW_PAGES = 2048  # 8 MiB read and digested at a time, into one reused buffer
U64 = np.uint64

def marker_mask(words: np.ndarray, show_pfn: bool) -> np.ndarray:
    """Guard and poison markers: a read there faults (PM_GUARD_REGION, or with PFNs visible
    swap type 31 with the GUARD or POISONED bit)."""
    frame = words & U64(PM_PFRAME_MASK)
    marker = ((words & U64(PM_SWAP)) != 0) & show_pfn & (
        (frame & U64(SWP_TYPE_MASK)) == U64(SWP_PTE_MARKER))
    bits = frame >> U64(5)
    return ((words & U64(PM_GUARD_REGION)) != 0) | (
        marker & ((bits & U64(PTE_MARKER_GUARD | PTE_MARKER_POISONED)) != 0))


class TruthReader:
    """Digests one task's pages; one instance per truth() call (it owns a reused buffer)."""

    def __init__(self, pid: int, show_pfn: bool, zero_pfn: int | None,
                 cache: DigestCache | None = None, buf: bytearray | None = None) -> None:
        self.pid = pid
        self.show_pfn = show_pfn
        self.zero_pfn = zero_pfn
        self.cache = cache  # digests of pages read earlier in the same freeze
        self.buf = buf if buf is not None else bytearray(WINDOW_PAGES * PAGE_SIZE)
        assert len(self.buf) == WINDOW_PAGES * PAGE_SIZE

    def task(self) -> list[tuple[int, np.ndarray]]:
        entries = parse_maps(procfs.task_maps(self.pid))
        fd = pagemap.open_pagemap(self.pid)
        try:
            return [(e.start, self.vma(fd, e)) for e in entries]
        finally:
            os.close(fd)

    def vma(self, pmfd: int, e: MapEntry) -> np.ndarray:
        n = e.npages
        out = np.full(n, ZERO_DIGEST, dtype=U64)
        if e.path == "[vdso]":  # what any page of it reads, faulted in or not: the image
            vdso = vdso_image(self.pid)
            if vdso is not None and vdso[0] == e.start and len(vdso[1]) == n * PAGE_SIZE:
                return page_digests(vdso[1])
        if e.shared:
            self._object(e, np.ones(n, dtype=bool), out)
            return out
        words = np.frombuffer(pagemap.read_words(pmfd, e.start, e.end), dtype="<u8")
        bad = marker_mask(words, self.show_pfn)
        data = memread.data_page_mask(words.tobytes(), self.show_pfn) & ~bad
        if self.zero_pfn is not None and self.show_pfn:
            zero = ((words & U64(PM_PRESENT)) != 0) & (
                (words & U64(PM_PFRAME_MASK)) == U64(self.zero_pfn))
            data &= ~zero  # the zero page reads zeros: ZERO_DIGEST already
        out[bad] = UNREADABLE_DIGEST
        self._private(e, data, words, out)
        if e.ino:  # a file: its pages where the task has no copy of its own
            wanted = ~data & ~bad  # present page-cache pages (PM_FILE) were read above
            if wanted.any():
                self._object(e, wanted, out)
        return out

    def _private(self, e: MapEntry, data: np.ndarray, words: np.ndarray,
                 out: np.ndarray) -> None:
        """/proc/PID/mem reads of the data pages, window by window (but not those the cache
        digested with the same pagemap word)."""
        for lo in range(0, len(data), WINDOW_PAGES):
            hi = min(len(data), lo + WINDOW_PAGES)
            mask = data[lo:hi]
            if not mask.any():
                continue
            start = e.start + (lo << PAGE_SHIFT)
            if self.cache is not None:
                have, digs = self.cache.lookup_private(self.pid, start, words[lo:hi])
                have &= mask
                out[lo:hi][have] = digs[have]
                mask = mask & ~have
                if not mask.any():
                    continue
            bad = memread.read_runs(self.pid, memread.mask_runs(mask, start), self.buf)
            ok = mask.copy()
            for s, t in bad:
                ok[(s - start) >> PAGE_SHIFT : (t - start) >> PAGE_SHIFT] = False
            idx = np.nonzero(ok)[0]
            out[lo + idx] = page_digests(self.buf, idx)
            out[lo + np.nonzero(mask & ~ok)[0]] = UNREADABLE_DIGEST

    def _object(self, e: MapEntry, wanted: np.ndarray, out: np.ndarray) -> None:
        """The VMA's file pages (where wanted) through map_files: data extents read with
        pread, holes left at ZERO_DIGEST, unreadable where the task's read would fault."""
        try:
            obj = MapFile.open(self.pid, e.start, e.end)
        except ProcError as err:
            if err.reason == "gone" and os.path.exists(f"/proc/{self.pid}"):
                return  # no vm_file after all (a special mapping): anonymous
            raise
        with obj:
            st = os.fstat(obj.fd)
            if not stat.S_ISREG(st.st_mode):
                if e.shared:  # a device's memory: nothing a read of ours can vouch for
                    out[wanted] = UNREADABLE_DIGEST
                return  # MAP_PRIVATE of /dev/zero: anonymous memory
            first = e.pgoff >> PAGE_SHIFT
            n = len(wanted)
            fidx = first + np.arange(n)
            past = (fidx << PAGE_SHIFT) >= st.st_size  # SIGBUS for the task
            out[wanted & past] = UNREADABLE_DIGEST
            wanted = wanted & ~past
            if not wanted.any():
                return
            lo_b = first << PAGE_SHIFT
            hi_b = min(st.st_size, (first + n) << PAGE_SHIFT)
            key = (st.st_dev, st.st_ino)
            for a, b in obj.data_extents(lo_b, hi_b):
                pa, pb = (a - lo_b) >> PAGE_SHIFT, -(-(b - lo_b) // PAGE_SIZE)
                for lo in range(pa, pb, WINDOW_PAGES):
                    hi = min(pb, lo + WINDOW_PAGES)
                    want = wanted[lo:hi]
                    if self.cache is not None:
                        have, digs = self.cache.lookup_object(key, lo_b + (lo << PAGE_SHIFT),
                                                              hi - lo)
                        have &= want
                        out[lo:hi][have] = digs[have]
                        want = want & ~have
                    idx = np.nonzero(want)[0]
                    if not len(idx):
                        continue
                    length = (hi - lo) << PAGE_SHIFT
                    view = memoryview(self.buf)[:length]
                    got = obj.readinto(lo_b + (lo << PAGE_SHIFT), view)
                    view[got:] = bytes(length - got)  # past EOF within the last page
                    out[lo + idx] = page_digests(self.buf, idx)


def task_truth(pid: int, show_pfn: bool, zero_pfn: int | None,
               cache: DigestCache | None = None, buf: bytearray | None = None
               ) -> list[tuple[int, np.ndarray]]:
    """(VMA start, u64 digest per page) for every VMA of pid, in maps order; buf: a reused
    window buffer (WINDOW_PAGES pages)."""
    return TruthReader(pid, show_pfn, zero_pfn, cache, buf).task()
