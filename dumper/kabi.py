"""Kernel ABI constants shared by the model and the real-Linux host.

Values are the kernel's own (x86_64, 4 KiB pages); each group names the header or source file
it comes from, so a decoder written against these constants decodes real /proc output too.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# fs/proc/task_mmu.c: the bits of a /proc/PID/pagemap word.
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# include/linux/swapops.h: a swap pte's frame is type | offset << MAX_SWAPFILES_SHIFT.
MAX_SWAPFILES_SHIFT = 5
SWP_TYPE_MASK = (1 << MAX_SWAPFILES_SHIFT) - 1
# include/linux/swap.h on 6.18 (no device-private, no hwpoison): 28 swap files, then
# migration READ/READ_EXCLUSIVE/WRITE, then SWP_PTE_MARKER.
MAX_SWAPFILES = 28
SWP_MIGRATION_READ = 28
SWP_MIGRATION_READ_EXCLUSIVE = 29
SWP_MIGRATION_WRITE = 30
SWP_PTE_MARKER = 31

# include/linux/swapops.h: PTE marker bits (the marker entry's "offset").
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2
# The RFC's CONFIG_PTE_MARKER_PAGEOUT marker (never merged); given the next free bit here.
PTE_MARKER_PAGEOUT = 1 << 3


def swp_frame(swp_type: int, offset: int) -> int:
    """The pagemap frame field of a swap-like entry (pte_to_pagemap_entry)."""
    return (swp_type & SWP_TYPE_MASK) | (offset << MAX_SWAPFILES_SHIFT)


def decode_frame(word: int) -> tuple[int, int]:
    """(swap type, offset) of a PM_SWAP word's frame field."""
    frame = word & PM_PFRAME_MASK
    return frame & SWP_TYPE_MASK, frame >> MAX_SWAPFILES_SHIFT


# include/uapi/linux/fs.h: PAGEMAP_SCAN categories.
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8
PAGEMAP_SCAN_CATEGORIES = (1 << 9) - 1
PAGEMAP_SCAN_IOCTL = 0xC0606610

# include/uapi/linux/mman.h and asm-generic/mman-common.h
PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x100
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
MFD_HUGETLB = 0x4
HUGE_SHIFT = 26  # MAP_HUGE_SHIFT, MFD_HUGE_SHIFT, SHM_HUGE_SHIFT: log2 of the page size there


def huge_flags(page_size: int, flag: int = MAP_HUGETLB) -> int:
    """flag | log2(page_size) << HUGE_SHIFT: mmap's MAP_HUGE_2MB, memfd's MFD_HUGE_2MB."""
    return flag | (page_size.bit_length() - 1) << HUGE_SHIFT

MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_GUARD_INSTALL = 102
MADV_GUARD_REMOVE = 103
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2

# include/uapi/linux/fs.h (lseek whence) and falloc.h
SEEK_SET = 0
SEEK_CUR = 1
SEEK_END = 2
SEEK_DATA = 3
SEEK_HOLE = 4
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def prot_string(prot: int, shared: bool) -> str:
    """The four permission characters of a /proc/PID/maps line (show_vma_header_prefix)."""
    return (
        ("r" if prot & PROT_READ else "-")
        + ("w" if prot & PROT_WRITE else "-")
        + ("x" if prot & PROT_EXEC else "-")
        + ("s" if shared else "p")
    )


def pagemap_flag_string(word: int) -> str:
    """Flags of a pagemap word as kernel.md writes them: P S F G W X D (empty for 0)."""
    out = ""
    for bit, ch in (
        (PM_PRESENT, "P"),
        (PM_SWAP, "S"),
        (PM_FILE, "F"),
        (PM_GUARD_REGION, "G"),
        (PM_UFFD_WP, "W"),
        (PM_MMAP_EXCLUSIVE, "X"),
        (PM_SOFT_DIRTY, "D"),
    ):
        if word & bit:
            out += ch
    return out
