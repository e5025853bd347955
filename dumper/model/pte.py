"""The model's page-table entry: one u64 per page, in numpy arrays, never one object a page.

Layout (the model's own, not the hardware's):
    bits 60-63  kind: NONE, PRESENT, SWAP, MIGRATION, MARKER
    bit  59     writable (present: pte_write; migration: a WRITE migration entry)
    bit  58     uffd-wp (pte_uffd_wp / pte_swp_uffd_wp)
    bit  57     huge zero page (present, value ZERO_PFN: a read fault's huge zero PMD)
    bits 0-54   value: PFN (present, migration), swap offset (swap), marker bits (marker)
A kernel PTE carries the same information: include/linux/swapops.h encodes swap, migration and
marker entries as "swap entries" of distinct types; the model keeps the kind explicit.
"""

from __future__ import annotations

import numpy as np

NONE = 0
PRESENT = 1
SWAP = 2
MIGRATION = 3
MARKER = 4

KIND_SHIFT = 60
WRITE = 1 << 59
UFFD_WP = 1 << 58
HUGE_ZERO = 1 << 57  # a present PTE word of the huge zero page (its value is ZERO_PFN)
VALUE_MASK = (1 << 55) - 1

U64 = np.uint64
_KSHIFT = U64(KIND_SHIFT)
_VMASK = U64(VALUE_MASK)
_WRITE = U64(WRITE)
_UFFD = U64(UFFD_WP)


def make(kind: int, value: int, write: bool = False, uffd_wp: bool = False) -> int:
    """One PTE word."""
    return (kind << KIND_SHIFT) | (WRITE if write else 0) | (UFFD_WP if uffd_wp else 0) | value


def kind_of(word: int) -> int:
    return int(word) >> KIND_SHIFT


def value_of(word: int) -> int:
    return int(word) & VALUE_MASK


def kinds(ptes: np.ndarray) -> np.ndarray:
    """The kind of every PTE of an array."""
    return (ptes >> _KSHIFT).astype(np.uint8)


def only_none_or_present(ptes: np.ndarray) -> bool:
    """No swap, migration or marker entry among these PTEs (one pass, no kind array)."""
    return not len(ptes) or int(ptes.max() >> _KSHIFT) <= PRESENT


def huge_zero(ptes: np.ndarray) -> np.ndarray:
    return (ptes & U64(HUGE_ZERO)) != 0


def values(ptes: np.ndarray) -> np.ndarray:
    return ptes & _VMASK


def writable(ptes: np.ndarray) -> np.ndarray:
    return (ptes & _WRITE) != 0


def uffd(ptes: np.ndarray) -> np.ndarray:
    return (ptes & _UFFD) != 0


def make_array(kind: int, vals: np.ndarray, write: bool = False) -> np.ndarray:
    """PTE words of one kind for an array of values."""
    base = U64((kind << KIND_SHIFT) | (WRITE if write else 0))
    return np.asarray(vals, dtype=U64) | base
