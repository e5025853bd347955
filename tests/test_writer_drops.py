"""A pages stream with several Dropped pieces (hugetlb holes, unreadable pages) keeps every
stored page at its own address: the writer counts dropped pages in the positions it hands
to _drop (a second drop was once placed as if the first had not happened, so an object with
holes 0, 2, 3 stored huge page 1 as page 3)."""

from __future__ import annotations

from dumper.images.reader import ImageSet
from dumper.images.records import Dropped, SharedObject, Vma
from dumper.images.writer import ImageSetWriter
from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED

P = 4096


def page(tag: int) -> bytes:
    return bytes([tag]) * P


def test_pages_after_two_drops_stay_at_their_offsets(tmp_path):
    obj = SharedObject(shmid=7, kind="shmem-anon", size=8 * P)
    with ImageSetWriter(tmp_path / "s") as w:
        w.add_task(1, 0, "init", [Vma(0x10000, 0x20000, 3, MAP_PRIVATE | MAP_ANONYMOUS),
                                  Vma(0x40000, 0x48000, 3, MAP_SHARED | MAP_ANONYMOUS,
                                      obj=7)])
        w.add_private_pages(1, [(0x10000, 6)], [page(1), Dropped(1, "EIO"), page(3),
                                                Dropped(2, "EIO"), page(6)])
        w.add_shared_object(obj, [(0, 8)], [Dropped(2), page(12), Dropped(3), page(16),
                                            page(17), Dropped(1)])
    with ImageSet.open(tmp_path / "s") as s:
        got = {a: d[0] for a, d in _pages(s.iter_pages(1))}
        assert got == {0x10000: 1, 0x12000: 3, 0x15000: 6}
        objs = {a: d[0] for a, d in _pages(s.iter_object_pages(7))}
        assert objs == {2 * P: 12, 6 * P: 16, 7 * P: 17}
        bad = sorted((u.vaddr, u.nr_pages) for u in s.unreadable if u.pid == 1)
        assert bad == [(0x11000, 1), (0x13000, 2)]


def _pages(it):
    for a, data in it:
        for i in range(0, len(data), P):
            yield a + i, data[i : i + P]
