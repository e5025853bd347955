"""Kernel behaviour profiles: the rules that differ between the kernels the thread discusses.

A profile is data: each field is one rule, and its comment names the kernel function or the
thread message it follows (../shared/thread/SCENARIOS.md, docs/thread.md). The operations
consult the profile; they never test a profile's name. A profile of one's own ("what if the
kernel did X") is a Python file defining ``PROFILE = replace(LINUX_6_18, name=..., ...)``,
loaded with ``load_profile(path)``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    # Reclaim of a shmem page (try_to_unmap from shrink_folio_list): what a *present* PTE of
    # each mapper becomes. False: pte_clear, none (5.14 and every merged kernel). True: the
    # RFC's PTE_MARKER_PAGEOUT (Peter Xu, "mm: Enable PM_SWAP for shmem with PTE_MARKER",
    # 2021-08-06, patch 3); PTEs already none stay none.
    shmem_pageout_marker: bool = False
    # pagemap on a none PTE in a shmem VMA. False: 0 (pte_to_pagemap_entry sees pte_none).
    # True: Tiberiu Georgescu's series ("pagemap: swap location for shared pages",
    # 2021-07-30) looks the index up in the page cache and reports a swap value as PM_SWAP,
    # at the cost of one page-cache lookup per none PTE.
    pagemap_pagecache_lookup: bool = False
    # mincore on a marker PTE. False: 5.14 and the RFC's mincore_pte_range: a marker is a
    # non-swap entry, so the page "is in core" (1). True: 6.18's pte_none_mostly() treats a
    # marker like none and falls back to __mincore_unmapped_range (page-cache lookup).
    mincore_marker_as_none: bool = False
    # PTE markers merged after 2021 (kernel.md §8): uffd-wp (5.19), poison (6.6), guard
    # (6.13). Without them the operations that install them are refused with EINVAL.
    uffd_wp_markers: bool = False
    guard_regions: bool = False
    # PM_GUARD_REGION, bit 58 (6.15, Lorenzo Stoakes, "fs/proc/task_mmu: add guard region
    # bit to pagemap").
    pagemap_guard_bit: bool = False
    # madvise_guard_install() calls anon_vma_prepare() even on shmem VMAs (6.13 .. 6.18), so
    # fork's vma_needs_copy() copies that VMA's PTEs (kernel.md §3, verified (g)).
    guard_install_anon_vma: bool = False
    # PAGEMAP_SCAN ioctl (6.7, commit 52526ca7fdb9).
    pagemap_scan: bool = False
    # do_read_fault -> do_fault_around -> filemap_map_pages: a read fault on a file/shmem page
    # maps the page-cache neighbours within fault_around_bytes (64 KiB: 16 pages), clipped to
    # the VMA and the page table. In mm/memory.c since 3.15, so in every profile here.
    fault_around_pages: int = 16
    # swap_vma_readahead (mm/swap_state.c): an anonymous swap-in also reads the swap entries
    # of the neighbouring PTEs into the swap cache, a window of 2^page-cluster pages (8) —
    # except on a synchronous device (zram) for an entry only this PTE holds, where
    # do_swap_page reads the one page around the swap cache. Measured: kernel.md §7 (d) zram,
    # the fork child's mincore reads 11111100 after the parent swapped in one page.
    swap_readahead_pages: int = 8


LINUX_5_14 = Profile(
    name="linux-5.14",
    summary="the RFC's base (v5.14-rc4): swapped-out shmem leaves none PTEs; pagemap reads 0",
)

PTE_MARKER_RFC = replace(
    LINUX_5_14,
    name="pte-marker-rfc",
    summary="Peter Xu's RFC with CONFIG_PTE_MARKER_PAGEOUT=y: reclaim leaves a PAGEOUT marker "
    "in present shmem PTEs (best effort: not copied on fork, dropped on munmap)",
    shmem_pageout_marker=True,
)

PAGECACHE_LOOKUP = replace(
    LINUX_5_14,
    name="pagecache-lookup",
    summary="Tiberiu Georgescu's series: pagemap looks none shmem PTEs up in the page cache "
    "and reports swap entries found there",
    pagemap_pagecache_lookup=True,
)

LINUX_6_18 = replace(
    LINUX_5_14,
    name="linux-6.18",
    summary="today's kernel (this machine): uffd-wp, poison and guard markers, "
    "PM_GUARD_REGION, PAGEMAP_SCAN, pte_none_mostly in mincore",
    mincore_marker_as_none=True,
    uffd_wp_markers=True,
    guard_regions=True,
    pagemap_guard_bit=True,
    guard_install_anon_vma=True,
    pagemap_scan=True,
)

PROFILES: dict[str, Profile] = {
    p.name: p for p in (LINUX_5_14, PTE_MARKER_RFC, PAGECACHE_LOOKUP, LINUX_6_18)
}
DEFAULT_PROFILE = LINUX_6_18


def load_profile(spec: str) -> Profile:
    """A built-in profile by name, or a user's profile from a Python file defining PROFILE."""
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(PROFILES)
        raise ValueError(f"{spec}: not a kernel profile ({known}) nor a profile file")
    mod_spec = importlib.util.spec_from_file_location(f"dumper_profile_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(f"{spec}: cannot load as a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: report, don't trace
        raise ValueError(f"{spec}: {type(exc).__name__}: {exc}") from None
    profile = getattr(module, "PROFILE", None)
    if not isinstance(profile, Profile):
        raise ValueError(f"{spec}: defines no PROFILE = Profile(...)")
    return profile
