"""Page-by-page comparison of two image sets.

For each task (by pid) the pages each set holds for its private memory (own or COW-shared),
and for each shared object (by shmid) the pages each set holds of it, are walked in address
order together; runs of pages that only one set holds, or that both hold with different bytes,
come back as Ranges. A page only one set holds is flagged `zero` when it is all zeros: a
strategy that stores zero pages and one that skips them differ there without losing data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from dumper.images.reader import ImageSet
from dumper.kabi import PAGE_SIZE

ONLY_A = "only-in-a"
ONLY_B = "only-in-b"
DIFFERS = "differs"
_ZERO = bytes(PAGE_SIZE)


@dataclass
class Range:
    what: str  # ONLY_A, ONLY_B or DIFFERS
    start: int
    pages: int
    zero: bool = False  # only-in ranges: every page is zeros


@dataclass
class Section:
    """One task's or one object's comparison."""

    kind: str  # "task" or "object"
    id: int
    ranges: list[Range] = field(default_factory=list)
    same: int = 0


@dataclass
class Diff:
    tasks_only_a: list[int] = field(default_factory=list)
    tasks_only_b: list[int] = field(default_factory=list)
    objects_only_a: list[int] = field(default_factory=list)
    objects_only_b: list[int] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def count(self, what: str) -> int:
        return sum(r.pages for s in self.sections for r in s.ranges if r.what == what)

    @property
    def same(self) -> int:
        return sum(s.same for s in self.sections)

    @property
    def empty(self) -> bool:
        return not (
            self.tasks_only_a
            or self.tasks_only_b
            or self.objects_only_a
            or self.objects_only_b
            or any(s.ranges for s in self.sections)
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["summary"] = {
            "only_in_a": self.count(ONLY_A),
            "only_in_b": self.count(ONLY_B),
            "differs": self.count(DIFFERS),
            "same": self.same,
        }
        return d


def _pages(chunks: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    for base, data in chunks:
        for i in range(0, len(data), PAGE_SIZE):
            yield base + i, data[i : i + PAGE_SIZE]


def _walk(a: Iterator[tuple[int, bytes]], b: Iterator[tuple[int, bytes]], sec: Section) -> None:
    """Merge two address-ordered page streams into sec's ranges."""
    end = (1 << 64, b"")
    pa, pb = next(a, end), next(b, end)
    while pa is not end or pb is not end:
        if pa[0] == pb[0]:
            what, addr, zero = (None if pa[1] == pb[1] else DIFFERS), pa[0], False
            pa, pb = next(a, end), next(b, end)
        elif pa[0] < pb[0]:
            what, addr, zero = ONLY_A, pa[0], pa[1] == _ZERO
            pa = next(a, end)
        else:
            what, addr, zero = ONLY_B, pb[0], pb[1] == _ZERO
            pb = next(b, end)
        if what is None:
            sec.same += 1
            continue
        last = sec.ranges[-1] if sec.ranges else None
        if (
            last
            and last.what == what
            and last.zero == zero
            and last.start + last.pages * PAGE_SIZE == addr
        ):
            last.pages += 1
        else:
            sec.ranges.append(Range(what, addr, 1, zero))


def diff(a: ImageSet, b: ImageSet) -> Diff:
    d = Diff(
        tasks_only_a=sorted(set(a.tasks) - set(b.tasks)),
        tasks_only_b=sorted(set(b.tasks) - set(a.tasks)),
        objects_only_a=sorted(set(a.objects) - set(b.objects)),
        objects_only_b=sorted(set(b.objects) - set(a.objects)),
    )
    for pid in sorted(set(a.tasks) & set(b.tasks)):
        sec = Section("task", pid)
        _walk(
            ((v, p) for v, p, _ in a.iter_task_pages(pid)),
            ((v, p) for v, p, _ in b.iter_task_pages(pid)),
            sec,
        )
        d.sections.append(sec)
    for shmid in sorted(set(a.objects) & set(b.objects)):
        sec = Section("object", shmid)
        _walk(_pages(a.iter_object_pages(shmid)), _pages(b.iter_object_pages(shmid)), sec)
        d.sections.append(sec)
    return d
