"""find_cow streams VMA by VMA: it must find exactly what a sort of every key finds (the
first holder in fork order, then address order, stores the page; every later page with the
same key is a COW copy of it), and marker_runs / cow_keys read only the words that matter."""

from __future__ import annotations

import numpy as np
import pytest

from dumper.dump import PrivateVma, TaskDump, cow_keys, find_cow, marker_runs
from dumper.host import MapEntry, TaskInfo
from dumper.kabi import (
    PAGE_SIZE,
    PM_GUARD_REGION,
    PM_PRESENT,
    PM_SWAP,
    PTE_MARKER_POISONED,
    SWP_PTE_MARKER,
)

U64 = np.uint64


def _vma(start: int, npages: int) -> MapEntry:
    return MapEntry(start, start + npages * PAGE_SIZE, 3, False, 0, 0, 0, 0, "")


def _reference(tasks: list[TaskDump]) -> tuple[dict[int, int], dict[tuple[int, int], tuple]]:
    """Brute force: the first (task order, address) holder of each key."""
    holder: dict[int, tuple[int, int]] = {}
    stored: dict[int, int] = {}
    copies: dict[tuple[int, int], tuple] = {}
    for t in tasks:
        for pv in t.private:
            idx, keys = pv.keys
            for i, k in zip(idx.tolist(), keys.tolist(), strict=True):
                if not pv.selected[i]:
                    continue
                addr = pv.vma.start + i * PAGE_SIZE
                if k in holder:
                    copies[(t.info.pid, addr)] = holder[k]
                else:
                    holder[k] = (t.info.pid, addr)
        stored[t.info.pid] = sum(int(pv.selected.sum()) for pv in t.private)
    return stored, copies


@pytest.mark.parametrize("batch", [1, 25, 1 << 20])
@pytest.mark.parametrize("seed", range(20))
def test_find_cow_matches_a_sort_of_every_key(seed, batch):
    """Whatever the batch (one VMA at a time, a few, all): VMAs apart or touching."""
    rng = np.random.default_rng(seed)
    tasks = []
    for ti in range(rng.integers(1, 5)):
        t = TaskDump(TaskInfo(100 + ti, 0 if ti == 0 else 100, "t", 100, 100), [])
        base = 0x10000000
        for _ in range(rng.integers(1, 4)):
            n = int(rng.integers(1, 40))
            words = np.zeros(n, dtype=U64)
            kind = rng.integers(0, 4, n)
            # few distinct frames and slots: repeats within a VMA, across VMAs and tasks
            words[kind == 1] = U64(PM_PRESENT) | rng.integers(1, 12, (kind == 1).sum()).astype(U64)
            words[kind == 2] = U64(PM_SWAP) | (rng.integers(1, 6, (kind == 2).sum()).astype(U64)
                                               << U64(5))
            words[kind == 3] = U64(PM_PRESENT) | U64(7)  # the zero page: never shared
            vma = _vma(base, n)
            base += (n + int(rng.integers(0, 2)) * 3) * PAGE_SIZE  # touching or not
            sel = rng.random(n) < 0.8
            t.private.append(PrivateVma(vma, cow_keys(words, True, 7), sel))
        tasks.append(t)
    stored, copies = _reference(tasks)
    assert find_cow(tasks, True, 7, batch) == len(copies)
    for t in tasks:
        got = {}
        for r in t.cow:
            for j in range(r.nr_pages):
                got[(t.info.pid, r.vaddr + j * PAGE_SIZE)] = (r.src_pid,
                                                              r.src_vaddr + j * PAGE_SIZE)
        assert got == {a: s for a, s in copies.items() if a[0] == t.info.pid}
        for r in t.cow:  # a record stays inside one VMA
            assert any(pv.vma.start <= r.vaddr and r.vaddr + r.nr_pages * PAGE_SIZE
                       <= pv.vma.end for pv in t.private)
        mine = sum(1 for a in copies if a[0] == t.info.pid)
        assert sum(int(pv.stored.sum()) for pv in t.private) == stored[t.info.pid] - mine


def test_cow_keys_leave_out_hidden_zero_and_marker_pages():
    words = np.array([0, PM_PRESENT | 9, PM_PRESENT | 7, PM_SWAP | (3 << 5),
                      PM_SWAP | (PTE_MARKER_POISONED << 5) | SWP_PTE_MARKER],
                     dtype=U64)
    idx, keys = cow_keys(words, True, 7)
    assert idx.tolist() == [1, 3] and keys.tolist() == [9, (3 << 5) | (1 << 63)]
    assert cow_keys(words, False, None).shape == (2, 0)


def test_marker_runs_finds_guard_and_poison_runs():
    words = np.zeros(10, dtype=U64)
    words[2:4] = U64(PM_SWAP | PM_GUARD_REGION)
    words[6] = U64(PM_SWAP) | U64((PTE_MARKER_POISONED << 5) | SWP_PTE_MARKER)
    words[7] = U64(PM_PRESENT | 5)
    runs = marker_runs(1, _vma(0x1000000, 10), words, True)
    assert [(r.vaddr, r.nr_pages, r.kind) for r in runs] == [
        (0x1000000 + 2 * PAGE_SIZE, 2, "guard"), (0x1000000 + 6 * PAGE_SIZE, 1, "poison")]


@pytest.mark.parametrize("batch", [1, 1 << 20])
def test_cow_records_stay_inside_their_vma(batch):
    """A child forked with two touching VMAs (mprotect split one): its copies of the
    parent's pages are one record per VMA, though their addresses and sources run on."""
    words = U64(PM_PRESENT) | np.arange(1, 9, dtype=U64)
    tasks = []
    for pid in (100, 101):
        t = TaskDump(TaskInfo(pid, 0 if pid == 100 else 100, "t", 100, 100), [])
        for half in (0, 1):
            w = words[half * 4:(half + 1) * 4]
            t.private.append(PrivateVma(_vma(0x10000000 + half * 4 * PAGE_SIZE, 4),
                                        cow_keys(w, True, None), np.ones(4, dtype=bool)))
        tasks.append(t)
    assert find_cow(tasks, True, None, batch) == 8
    assert [(r.vaddr, r.nr_pages, r.src_vaddr) for r in tasks[1].cow] == [
        (0x10000000, 4, 0x10000000), (0x10000000 + 4 * PAGE_SIZE, 4, 0x10000000 + 4 * PAGE_SIZE)]


class _WordsHost:
    """A host whose pagemap is a fixed array of words (one VMA), counting the reads."""

    def __init__(self, start: int, words: np.ndarray) -> None:
        self.start, self.words, self.reads = start, words, []

    def pagemap(self, pid: int, a: int, b: int) -> bytes:
        self.reads.append((a, b))
        lo, hi = (a - self.start) // PAGE_SIZE, (b - self.start) // PAGE_SIZE
        return self.words[lo:hi].tobytes()


@pytest.mark.parametrize("strategy", ["auto", "pagemap", "all"])
@pytest.mark.parametrize("seed", range(4))
def test_scan_vma_by_windows_is_the_whole_vma_judged_at_once(seed, strategy):
    # A VMA of 2.5 windows; marker runs and a present run cross the window boundaries.
    from dumper.dump import scan_vma
    from dumper.select import PAGEMAP_WINDOW, private_selection

    rng = np.random.default_rng(seed)
    n = PAGEMAP_WINDOW * 5 // 2
    words = np.zeros(n, dtype=U64)
    kind = rng.choice(5, n, p=[0.6, 0.25, 0.05, 0.05, 0.05])
    words[kind == 1] = U64(PM_PRESENT) | rng.integers(8, 1 << 20, (kind == 1).sum()).astype(U64)
    words[kind == 2] = U64(PM_SWAP) | (rng.integers(1, 99, (kind == 2).sum()).astype(U64) << U64(5))
    words[kind == 3] = U64(PM_SWAP | PM_GUARD_REGION)
    words[kind == 4] = U64(PM_PRESENT) | U64(7)  # the zero page
    w = PAGEMAP_WINDOW
    words[w - 3 : w + 2] = U64(PM_SWAP | PM_GUARD_REGION)
    words[2 * w - 1 : 2 * w + 1] = U64(PM_SWAP) | U64((PTE_MARKER_POISONED << 5) | SWP_PTE_MARKER)
    vma = _vma(0x7F0000000000, n)
    host = _WordsHost(vma.start, words)
    got = scan_vma(host, 9, vma, strategy, True, 7, backed=False, keep_words=True)
    assert len(host.reads) == 3 and all(b - a <= w * PAGE_SIZE for a, b in host.reads)
    assert got.guards == marker_runs(9, vma, words, True)
    assert any(g.kind == "guard" and g.nr_pages >= 5 for g in got.guards)
    assert np.array_equal(got.keys, cow_keys(words, True, 7))
    assert np.array_equal(got.selected, private_selection(strategy, words, True, 7, False))
    assert np.array_equal(got.words, words)
    shared = MapEntry(vma.start, vma.end, 3, True, 0, 0, 0, 0, "")
    s = scan_vma(host, 9, shared, strategy, True, 7, backed=True, keep_words=False)
    assert s.selected is None and s.keys is None and s.words is None
    assert s.guards == got.guards


@pytest.mark.parametrize("seed", range(4))
def test_small_vmas_that_touch_are_judged_as_each_alone(seed):
    """_scanned judges a span of small touching VMAs in one read: each VMA's selection,
    keys, guards and words are what scan_vma finds for it alone; a VMA with a gap before
    it, or alone, is left to scan_vma (None)."""
    from dumper.dump import _scanned, scan_vma

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, 40)
    gaps = rng.random(40) < 0.2
    n = int(sizes.sum() + gaps.sum())
    words = np.zeros(n, dtype=U64)
    kind = rng.choice(4, n, p=[0.4, 0.4, 0.1, 0.1])
    words[kind == 1] = U64(PM_PRESENT) | rng.integers(8, 30, (kind == 1).sum()).astype(U64)
    words[kind == 2] = U64(PM_SWAP | PM_GUARD_REGION)
    words[kind == 3] = U64(PM_SWAP) | U64((PTE_MARKER_POISONED << 5) | SWP_PTE_MARKER)
    start = 0x7F0000000000
    maps, pos = [], 0
    for size, gap in zip(sizes.tolist(), gaps.tolist(), strict=True):
        pos += int(gap)
        shared = bool(rng.random() < 0.2)
        a = start + pos * PAGE_SIZE
        maps.append(MapEntry(a, a + size * PAGE_SIZE, 3, shared, 0, 0, 0, 0, ""))
        pos += size
    host = _WordsHost(start, words)
    t = TaskDump(TaskInfo(9, 0, "t", 9, 9), maps)
    got = list(_scanned(host, t, "auto", True, 7))
    assert [e for e, _ in got] == maps
    assert any(s is not None for _, s in got)
    for e, s in got:
        alone = scan_vma(host, 9, e, "auto", True, 7, backed=False, keep_words=True)
        if s is None:
            continue
        assert s.guards == alone.guards
        assert np.array_equal(s.words, alone.words)
        if e.shared:
            assert s.selected is None and s.keys is None
        else:
            assert np.array_equal(s.selected, alone.selected)
            assert np.array_equal(s.keys, alone.keys)
