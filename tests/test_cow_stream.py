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


@pytest.mark.parametrize("seed", range(20))
def test_find_cow_matches_a_sort_of_every_key(seed):
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
            base += (n + 3) * PAGE_SIZE
            sel = rng.random(n) < 0.8
            t.private.append(PrivateVma(vma, cow_keys(words, True, 7), sel))
        tasks.append(t)
    stored, copies = _reference(tasks)
    assert find_cow(tasks, True, 7) == len(copies)
    for t in tasks:
        got = {}
        for r in t.cow:
            for j in range(r.nr_pages):
                got[(t.info.pid, r.vaddr + j * PAGE_SIZE)] = (r.src_pid,
                                                              r.src_vaddr + j * PAGE_SIZE)
        assert got == {a: s for a, s in copies.items() if a[0] == t.info.pid}
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
