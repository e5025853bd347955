"""One test per kernel rule the model claims, named after it and citing its source.

Rules already pinned by the probe table live in test_model_kernel_table.py; these cover the
profile differences (../shared/thread/SCENARIOS.md; docs/thread.md for the messages) and the
rules the table does not reach.
"""

from __future__ import annotations

import pytest
from modelinvariants import violations
from modelsupport import PAGE, flags, frames, ls, mc, pm

from dumper.kabi import (
    MADV_COLD,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_KEEPONFORK,
    MADV_PAGEOUT,
    MADV_WIPEONFORK,
    PROT_NONE,
    PROT_READ,
    PTE_MARKER_PAGEOUT,
    SEEK_DATA,
    SEEK_HOLE,
    SWP_MIGRATION_READ,
    SWP_MIGRATION_WRITE,
    SWP_PTE_MARKER,
)
from dumper.model import Model, ModelError, load_profile
from dumper.model.observe import shmem_file_llseek
from dumper.model.state import PFN_BASE

PROFILES = ["linux-5.14", "pte-marker-rfc", "pagecache-lookup", "linux-6.18"]


def shared_written(profile: str, n: int = 8, **kw) -> tuple[Model, int, int]:
    m = Model(profile, **kw)
    a = m.spawn("A")
    r = m.mmap(a, n * PAGE, shared=True)
    m.write(a, r, n * PAGE)
    return m, a, r


@pytest.mark.parametrize("profile", ["linux-5.14", "pagecache-lookup", "linux-6.18"])
def test_try_to_unmap_clears_shmem_ptes(profile):
    """try_to_unmap on a shmem folio leaves pte_none in every mapper (5.14 and all merged
    kernels; kernel.md §7 (c): swapped-out shmem reads 0)."""
    m, a, r = shared_written(profile, 4)
    m.reclaim(a, r, 4 * PAGE)
    assert m.k.task(a).vmas[0].ptes.tolist() == [0, 0, 0, 0]
    assert ls(m, a, r, 4) == "DDDD"


def test_rfc_pageout_marker_left_in_present_ptes_only():
    """The RFC (Peter Xu, 2021-08-06): reclaim leaves PTE_MARKER_PAGEOUT where a PTE was
    present; PTEs already none stay none — Peter's first accuracy example (scenario 3)."""
    m, a, r = shared_written("pte-marker-rfc", 2)
    b = m.fork(a)
    m.read(b, r, 2 * PAGE)
    m.zap(a, r, PAGE)  # A's PTE for page 0 is zapped (a THP split)
    m.reclaim(b, r, 2 * PAGE)
    assert pm(m, a, r, 2) == "-S"
    assert pm(m, b, r, 2) == "SS"
    assert frames(m, b, r, 1) == [SWP_PTE_MARKER | PTE_MARKER_PAGEOUT << 5]
    assert flags(m, b, r, 2) == "S S"


def test_rfc_marker_not_copied_on_fork():
    """copy_pte_marker under the RFC: the PAGEOUT hint is not copied (and a shmem VMA without
    anon_vma is not copied at all) — Peter's second example (scenario 4)."""
    m, a, r = shared_written("pte-marker-rfc", 4)
    m.reclaim(a, r, 4 * PAGE)
    b = m.fork(a)
    assert (pm(m, a, r, 4), pm(m, b, r, 4)) == ("SSSS", "----")


def test_rfc_marker_dropped_by_zap():
    """zap_pte_range drops the RFC's hint ("best effort"): after MADV_DONTNEED pagemap is 0."""
    m, a, r = shared_written("pte-marker-rfc", 2)
    m.reclaim(a, r, 2 * PAGE)
    m.madvise(a, r, 2 * PAGE, MADV_DONTNEED)
    assert pm(m, a, r, 2) == "--"


@pytest.mark.parametrize(
    "profile,expect", [("linux-5.14", "00"), ("pte-marker-rfc", "11"), ("linux-6.18", "00")]
)
def test_mincore_pte_range_on_markers(profile, expect):
    """mincore_pte_range: under 5.14 and the RFC a marker is a non-swap entry, read as 1
    (Tiberiu: with the RFC mincore reads 1 for every marker, scenario 10); 6.18's
    pte_none_mostly() sends it to the page-cache lookup: swapped out, 0."""
    m, a, r = shared_written(profile, 2)
    m.reclaim(a, r, 2 * PAGE)
    assert mc(m, a, r, 2) == expect


def test_pagecache_lookup_reports_swap_for_none_ptes():
    """Tiberiu's series: pagemap looks every none shmem PTE up in the page cache and reports
    a swap entry as PM_SWAP with its type/offset — for a fork child too (scenario 1) — at the
    cost of one lookup per none PTE."""
    m, a, r = shared_written("pagecache-lookup", 4)
    m.reclaim(a, r, 2 * PAGE)
    b = m.fork(a)
    before = m.k.counters.snapshot()
    assert pm(m, b, r, 4) == "SS--"  # resident-but-unmapped pages still read 0
    assert m.k.counters.since(before).pagecache_lookups == 4
    assert m.k.counters.since(before).ptes_walked == 4
    assert [f >> 5 for f in frames(m, b, r, 2)] == [1, 2]


def test_linux_6_18_pagemap_does_no_pagecache_lookup():
    """pte_to_pagemap_entry on 6.18: a none PTE reads 0 and costs no page-cache lookup."""
    m, a, r = shared_written("linux-6.18", 4)
    m.reclaim(a, r, 4 * PAGE)
    before = m.k.counters.snapshot()
    assert pm(m, a, r, 4) == "----"
    assert m.k.counters.since(before).pagecache_lookups == 0


@pytest.mark.parametrize("shared", [False, True])
def test_migration_entries_read_pm_swap(shared):
    """try_to_migrate leaves pfn swap entries: pagemap PM_SWAP, type 30 (write) or 28 (read),
    offset = PFN, PM_FILE for shmem folios (Peter in the thread; task_mmu.c
    is_pfn_swap_entry); mincore reads 1; remove_migration_ptes maps a new PFN, same bytes."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 2 * PAGE, shared=shared)
    m.write(a, r, 2 * PAGE)
    before = m.peek(a, r, 2 * PAGE)
    old = frames(m, a, r, 2)
    m.migrate(a, r, 2 * PAGE, finish=False)
    assert pm(m, a, r, 2) == "SS"
    assert flags(m, a, r, 2) == ("SF SF" if shared else "S S")
    assert frames(m, a, r, 2) == [SWP_MIGRATION_WRITE | p << 5 for p in old]
    assert mc(m, a, r, 2) == "11"
    assert m.peek(a, r, 2 * PAGE) == before
    m.migrate_finish()
    assert pm(m, a, r, 2) == "PP"
    assert set(frames(m, a, r, 2)).isdisjoint(old)
    assert m.peek(a, r, 2 * PAGE) == before


def test_copy_page_range_makes_writable_migration_entries_readable():
    """copy_nonpresent_pte: a WRITE migration entry in a COW mapping becomes READ in both."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.migrate(a, r, PAGE, finish=False)
    b = m.fork(a)
    assert frames(m, a, r, 1)[0] & 31 == frames(m, b, r, 1)[0] & 31 == SWP_MIGRATION_READ
    m.migrate_finish()
    assert flags(m, a, r, 1) == flags(m, b, r, 1) == "P"


def test_do_fault_around_window_is_16_aligned_pages():
    """do_fault_around: fault_around_bytes = 64 KiB, aligned down: a read of page 20 of a
    fork child maps pages 16..31 that are in the page cache, nothing else."""
    m, a, r = shared_written("linux-6.18", 64)
    b = m.fork(a)
    m.read(b, r + 20 * PAGE, PAGE)
    assert pm(m, b, r, 64) == "-" * 16 + "P" * 16 + "-" * 32


def test_do_fault_around_clipped_to_vma():
    """do_fault_around clips the window to the VMA (and the page table): a 4-page mapping at
    a non-aligned offset maps at most its own pages."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "f", 32 * PAGE)
    m.pwrite(a, fd, 0, 32 * PAGE)
    r = m.mmap(a, 4 * PAGE, shared=True, fd=fd, offset=5 * PAGE)
    m.read(a, r + PAGE, PAGE)
    assert pm(m, a, r, 4) == "PPPP"
    assert m.k.task(a).vmas[0].npages == 4


def test_filemap_map_pages_skips_swapped_and_not_uptodate():
    """filemap_map_pages maps only uptodate page-cache folios: swapped and fallocated pages
    are left to their own faults (no swap-in by fault-around)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "f", 8 * PAGE)
    m.pwrite(a, fd, 0, 4 * PAGE)
    m.fallocate(a, fd, 4 * PAGE, 2 * PAGE)
    r = m.mmap(a, 8 * PAGE, shared=True, fd=fd)
    m.reclaim(a, r, 2 * PAGE)
    m.read(a, r + 3 * PAGE, PAGE)
    assert pm(m, a, r) == "--PP----"
    assert ls(m, a, r) == "DDDD...."


def test_shm_vm_ops_has_no_map_pages():
    """should_fault_around is false for a SysV segment (shm_vm_ops has no map_pages): a read
    fault of a fork child maps the faulting page only, where a memfd maps its neighbours."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    seg = m.shmget(0x42, 8 * PAGE)
    r = m.shmat(a, seg)
    m.write(a, r, 8 * PAGE)
    b = m.fork(a)
    m.read(b, r + 3 * PAGE, PAGE)
    assert pm(m, b, r) == "---P----"
    assert pm(m, a, r) == "PPPPPPPP"


def test_do_shared_fault_maps_only_the_faulting_page():
    """A write fault on shmem (do_shared_fault) does no fault-around."""
    m, a, r = shared_written("linux-6.18", 8)
    b = m.fork(a)
    m.write(b, r + 3 * PAGE, PAGE)
    assert pm(m, b, r) == "---P----"


def test_shmem_fault_allocates_holes_but_fd_read_does_not():
    """shmem_fault uses SGP_CACHE (a read fault allocates a zeroed page that lseek then
    counts as data); read(2) uses SGP_READ and leaves holes alone (kernel.md §5, §6)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "f", 4 * PAGE)
    assert m.pread(a, fd, 0, 4 * PAGE) == bytes(4 * PAGE)
    r = m.mmap(a, 4 * PAGE, shared=True, fd=fd)
    assert ls(m, a, r, 4) == "...."
    m.read(a, r + 2 * PAGE, PAGE)
    assert ls(m, a, r, 4) == "..D."


def test_shmem_file_read_swaps_in_without_ptes():
    """Reading through the fd (map_files) swaps a page into the page cache but creates no PTE
    in any mapper (kernel.md §6, verified (j))."""
    m, a, r = shared_written("linux-6.18", 2)
    b = m.fork(a)
    m.reclaim(a, r, 2 * PAGE)
    fd = m.open_map_files(a, b, r)
    data = m.pread(a, fd, 0, PAGE)
    assert data == m.peek(b, r, PAGE)
    assert (pm(m, b, r, 2), mc(m, b, r, 2)) == ("--", "10")
    assert m.smaps(b)[0].swap_kb == 4


def test_shmem_file_llseek_does_not_swap_in():
    """mapping_seek_hole_data: a swap value entry is data, and nothing is swapped in
    (Tiberiu tested it; kernel.md §5: smaps Swap unchanged)."""
    m, a, r = shared_written("linux-6.18", 4)
    m.reclaim(a, r, 2 * PAGE)
    obj = m.object_at(a, r)
    assert shmem_file_llseek(m.k, obj, 0, SEEK_DATA) == 0
    assert shmem_file_llseek(m.k, obj, 0, SEEK_HOLE) == 4 * PAGE
    assert m.smaps(a)[0].swap_kb == 8
    with pytest.raises(ModelError, match="ENXIO"):
        shmem_file_llseek(m.k, obj, 4 * PAGE, SEEK_DATA)


def test_do_anonymous_page_zero_page_is_not_copied_on_fork():
    """A read-only touched anonymous VMA maps the zero page without anon_vma_prepare, so
    vma_needs_copy is false and the child's PTEs start none."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 2 * PAGE)
    m.read(a, r, 2 * PAGE)
    b = m.fork(a)
    assert (pm(m, a, r, 2), pm(m, b, r, 2)) == ("PP", "--")
    assert m.peek(b, r, 2 * PAGE) == bytes(2 * PAGE)


def test_vma_needs_copy_private_file_mapping_with_anon_vma_copies_file_ptes():
    """kernel.md §3: a MAP_PRIVATE file mapping with one COWed page has an anon_vma, so fork
    copies all its PTEs, the page-cache ones too (PF in the child)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "f", 4 * PAGE)
    m.pwrite(a, fd, 0, 4 * PAGE)
    r = m.mmap(a, 4 * PAGE, shared=False, fd=fd)
    m.read(a, r, 4 * PAGE)
    m.write(a, r, PAGE)
    b = m.fork(a)
    assert flags(m, b, r, 4) == "P PF PF PF"
    assert m.peek(b, r, 4 * PAGE) == m.peek(a, r, 4 * PAGE)


@pytest.mark.parametrize("profile", ["linux-5.14", "pte-marker-rfc", "pagecache-lookup"])
def test_guard_regions_absent_before_6_13(profile):
    """MADV_GUARD_INSTALL arrived in 6.13 (kernel.md §8): older profiles refuse it."""
    m = Model(profile)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    with pytest.raises(ModelError, match="EINVAL"):
        m.madvise(a, r, PAGE, MADV_GUARD_INSTALL)


def test_guard_page_read_faults():
    """A guard marker makes the access fault with SIGSEGV and the read leaves it in place."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.madvise(a, r, PAGE, MADV_GUARD_INSTALL)
    with pytest.raises(ModelError, match="SIGSEGV"):
        m.read(a, r, PAGE)
    assert flags(m, a, r, 1) == "SG"


def test_move_page_tables_carries_swap_entries_and_markers():
    """mremap's move_page_tables moves every PTE, swap entries and markers included."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 4 * PAGE)
    m.write(a, r, 3 * PAGE)
    data = m.peek(a, r, 4 * PAGE)
    m.madvise(a, r, PAGE, MADV_PAGEOUT)
    m.madvise(a, r + 3 * PAGE, PAGE, MADV_GUARD_INSTALL)
    before = flags(m, a, r, 4)
    n = m.mremap(a, r, 4 * PAGE)
    assert n != r and flags(m, a, n, 4) == before == "S PX PX SG"
    assert m.peek(a, n, 3 * PAGE) == data[: 3 * PAGE]
    with pytest.raises(ModelError, match="ENOMEM"):
        m.mincore(a, r, PAGE)


def test_do_exit_frees_private_pages_and_reparents():
    """exit_mmap drops every PTE (private frames and swap slots freed); the shared object
    lives on in other mappers; children go to the exiting task's parent."""
    m = Model("linux-6.18")
    root = m.spawn("init")
    a = m.fork(root, "A")
    p = m.mmap(a, 4 * PAGE)
    s = m.mmap(a, 4 * PAGE, shared=True)
    m.write(a, p, 4 * PAGE)
    m.write(a, s, 4 * PAGE)
    m.madvise(a, p, 2 * PAGE, MADV_PAGEOUT)
    c = m.fork(a, "C")
    shared = m.peek(c, s, 4 * PAGE)
    frames_before = m.k.frames.allocated
    m.exit(a)
    assert m.k.tasks[c].ppid == root
    assert m.peek(c, s, 4 * PAGE) == shared
    m.exit(c)
    assert m.k.frames.allocated < frames_before
    assert m.k.frames.allocated == 0 and m.k.swap.in_use == 0


def test_show_map_vma_line_format():
    """show_map_vma: anonymous lines end "0 " and named ones pad the name to column 73 (as
    /proc/self/maps on this machine)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 2 * PAGE, shared=True)
    p = m.mmap(a, PAGE, prot=PROT_READ)
    lines = m.maps(a).splitlines()
    assert lines[0] == f"{p:x}-{p + PAGE:x} r--p 00000000 00:00 0 "
    assert lines[1].startswith(f"{r:x}-{r + 2 * PAGE:x} rw-s 00000000 00:01 ")
    assert lines[1].index("/dev/zero (deleted)") == 73
    seg = m.shmget(0x1234, PAGE)
    m.shmat(a, seg)
    assert "/SYSV00001234 (deleted)" in m.maps(a)


def test_pagemap_read_hides_frames_without_cap_sys_admin():
    """pagemap_read: pm.show_pfn is false without CAP_SYS_ADMIN: flags stay, the whole frame
    field (PFN and swap type/offset) is 0 (kernel.md §1, verified (k))."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 2 * PAGE)
    m.write(a, r, 2 * PAGE)
    m.madvise(a, r + PAGE, PAGE, MADV_PAGEOUT)
    words = [int(w) for w in m.pagemap(a, r, 2 * PAGE, show_pfn=False)]
    assert words == [0x8100000000000000, 0x4000000000000000]


def test_system_reclaim_unmaps_every_mapper_but_pageout_skips_shared():
    """kswapd reclaims through the rmap from every mapper; MADV_PAGEOUT skips folios mapped
    more than once (folio_likely_mapped_shared) — the model needs both (SCENARIOS.md)."""
    m, a, r = shared_written("linux-6.18", 2)
    b = m.fork(a)
    m.read(b, r, 2 * PAGE)
    m.madvise(a, r, 2 * PAGE, MADV_PAGEOUT)
    assert pm(m, a, r, 2) == pm(m, b, r, 2) == "PP"
    m.reclaim(a, r, 2 * PAGE)
    assert pm(m, a, r, 2) == pm(m, b, r, 2) == "--"
    assert ls(m, b, r, 2) == "DD"


def test_swap_cache_stage_is_observable():
    """shrink_folio_list then __remove_mapping: between the two the folio is in the swap cache
    (mincore 1 with none PTEs: Tiberiu, scenario 9); afterwards mincore reads 0."""
    m, a, r = shared_written("linux-5.14", 2)
    m.reclaim(a, r, 2 * PAGE, free=False)
    assert (pm(m, a, r, 2), mc(m, a, r, 2), ls(m, a, r, 2)) == ("--", "11", "DD")
    m.swapcache_drop()
    assert (pm(m, a, r, 2), mc(m, a, r, 2), ls(m, a, r, 2)) == ("--", "00", "DD")


def test_shmem_setattr_shrink_zaps_and_sigbus_past_eof():
    """ftruncate shrinking a memfd zaps every mapper past the new end (unmap_mapping_range
    with even_cows) and frees the pages; a fault past EOF is SIGBUS."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "t", 4 * PAGE)
    r = m.mmap(a, 4 * PAGE, shared=True, fd=fd)
    m.write(a, r, 4 * PAGE)
    m.ftruncate(a, fd, 2 * PAGE)
    assert pm(m, a, r, 4) == "PP--"
    with pytest.raises(ModelError, match="SIGBUS"):
        m.read(a, r + 3 * PAGE, PAGE)


def test_madvise_remove_needs_shared_writable_mapping():
    """MADV_REMOVE: vma_is_shared_maywrite or -EACCES (kernel.md §3)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    with pytest.raises(ModelError, match="EACCES"):
        m.madvise(a, r, PAGE, 9)


def test_load_profile_from_a_users_file(tmp_path):
    """A user's own profile is a Python file defining PROFILE; the operations need no edit."""
    f = tmp_path / "myk.py"
    f.write_text(
        "from dataclasses import replace\n"
        "from dumper.model.kernels import LINUX_6_18\n"
        "PROFILE = replace(LINUX_6_18, name='my-kernel', shmem_pageout_marker=True)\n"
    )
    prof = load_profile(str(f))
    m, a, r = shared_written(prof, 2)
    m.reclaim(a, r, 2 * PAGE)
    assert pm(m, a, r, 2) == "SS"
    bad = tmp_path / "bad.py"
    bad.write_text("PROFILE = 3\n")
    with pytest.raises(ValueError, match="defines no PROFILE"):
        load_profile(str(bad))
    with pytest.raises(ValueError, match="not a kernel profile"):
        load_profile("linux-9.99")


def test_observation_costs_are_counted():
    """pagemap walks one PTE per page; lseek SEEK_HOLE steps through data entries while
    SEEK_DATA skips empty slots: the costs the replay reports."""
    m, a, r = shared_written("linux-6.18", 8)
    obj = m.object_at(a, r)
    before = m.k.counters.snapshot()
    m.pagemap(a, r, 8 * PAGE)
    assert m.k.counters.since(before).ptes_walked == 8
    before = m.k.counters.snapshot()
    shmem_file_llseek(m.k, obj, 0, SEEK_HOLE)
    cost = m.k.counters.since(before)
    assert (cost.syscalls, cost.pagecache_lookups) == (1, 8)


def test_read_swap_in_keeps_the_slot_and_clean_repageout_frees_at_once():
    """do_swap_page keeps a read-faulted folio in the swap cache with its slot
    (should_try_to_free_swap wants FAULT_FLAG_WRITE); reclaim then has nothing to write for it
    and __remove_mapping frees it at once, even on an asynchronous device (measured on 6.18,
    tests/linux/test_differential.py REPAGEOUT). A write fault's swap-in frees the slot."""
    m = Model("linux-6.18", swap_sync=False)
    a = m.spawn("A")
    r = m.mmap(a, 4 * PAGE)
    m.write(a, r, 4 * PAGE)
    before = m.peek(a, r, 4 * PAGE)
    m.reclaim(a, r, 4 * PAGE)
    m.swapcache_drop()
    assert (pm(m, a, r, 4), mc(m, a, r, 4)) == ("SSSS", "0000")
    used = m.k.swap.in_use
    m.read(a, r + PAGE, PAGE)  # slot kept: still in use, the folio in the swap cache
    m.write(a, r + 2 * PAGE, PAGE, before[2 * PAGE : 3 * PAGE])  # slot freed
    assert m.k.swap.in_use == used - 1
    fi = frames(m, a, r, 4)
    assert [int(m.k.frames.swapslot.a[f - PFN_BASE]) != 0 for f in fi[1:3]] == [True, False]
    m.reclaim(a, r + PAGE, 2 * PAGE)  # page 1 clean: freed; page 2 dirty: written, cached
    # (pages 0 and 3 came into the swap cache by swap_vma_readahead around page 1's fault)
    assert (pm(m, a, r, 4), mc(m, a, r, 4)) == ("SSSS", "1011")
    m.swapcache_drop()
    assert m.read(a, r, 4 * PAGE) == before


def test_write_after_a_read_swap_in_goes_to_the_same_slot_again():
    """An exclusive read-faulted folio is mapped writable (do_swap_page): a later write takes
    no fault, the folio stays in the swap cache but dirty, and reclaim writes it to its slot
    again (pageout) — the slot never serves stale data."""
    m = Model("linux-6.18", swap_sync=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.reclaim(a, r, PAGE, free=True)
    m.read(a, r, PAGE)
    slot = int(m.k.frames.swapslot.a[frames(m, a, r, 1)[0] - PFN_BASE])
    assert slot and flags(m, a, r, 1) == "PX"
    new = bytes([7]) * PAGE
    m.write(a, r, PAGE, new)
    m.reclaim(a, r, PAGE, free=True)
    assert pm(m, a, r, 1) == "S" and m.read(a, r, PAGE) == new


def test_synchronous_swap_in_skips_the_swap_cache():
    """do_swap_page on a SWP_SYNCHRONOUS_IO device (zram) with one reference reads into a
    folio that skips the swap cache: the slot goes with the PTE's reference."""
    m = Model("linux-6.18", swap_sync=True)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.reclaim(a, r, PAGE)
    m.read(a, r, PAGE)
    assert m.k.swap.in_use == 0
    assert int(m.k.frames.swapslot.a[frames(m, a, r, 1)[0] - PFN_BASE]) == 0


@pytest.mark.parametrize("zap", ["munmap", "exit-sharer"])
def test_migrating_a_read_swapped_in_folio_leaks_nothing(zap):
    """A folio a read fault swapped in keeps its slot in the swap cache; migrate it while the
    last mapping goes (munmap), or while the other holder of the slot exits: once the
    migration finishes nothing is left behind (remove_migration_ptes, free_swap_cache)."""
    m = Model("linux-6.18", swap_sync=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.reclaim(a, r, PAGE, free=True)
    c = m.fork(a) if zap == "exit-sharer" else None
    m.read(a, r, PAGE)
    m.migrate(a, r, PAGE, finish=False)
    if c is None:
        m.munmap(a, r, PAGE)
    else:
        m.exit(c)
    assert violations(m.k) == []
    m.migrate_finish()
    assert violations(m.k) == []
    m.swapcache_drop()
    assert violations(m.k) == []
    if c is None:
        assert (m.k.swap.in_use, m.k.frames.allocated) == (0, 0)
    else:
        assert pm(m, a, r, 1) == "P" and m.k.swap.in_use == 1  # mapped, slot kept


def test_mprotect_fixup_splits_and_fault_around_stops_at_the_split():
    """mprotect_fixup splits the VMA; do_fault_around clips to the faulting VMA, so a read
    beside a PROT_NONE part maps fewer neighbours; PROT_NONE PTEs stay present; giving the
    protection back merges the parts (vma_modify_flags) and fault-around spans them again."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "f", 16 * PAGE)
    m.pwrite(a, fd, 0, 16 * PAGE)
    r = m.mmap(a, 16 * PAGE, shared=True, fd=fd)
    m.read(a, r + 5 * PAGE, PAGE)
    m.mprotect(a, r + 4 * PAGE, 4 * PAGE, PROT_NONE)
    assert len(m.k.task(a).vmas) == 3
    assert pm(m, a, r, 16) == "P" * 16
    with pytest.raises(ModelError, match="SIGSEGV"):
        m.read(a, r + 5 * PAGE, PAGE)
    b = m.fork(a)
    m.read(b, r + 2 * PAGE, PAGE)
    assert pm(m, b, r, 16) == "PPPP" + "-" * 12
    m.mprotect(a, r + 4 * PAGE, 4 * PAGE, PROT_READ | 2)
    assert len(m.k.task(a).vmas) == 1
    c = m.fork(a)
    m.read(c, r + 2 * PAGE, PAGE)
    assert pm(m, c, r, 16) == "P" * 16
    assert not violations(m.k)


def test_mprotect_read_only_write_protects_and_write_faults():
    """change_protection without PROT_WRITE: a later write is SIGSEGV; pages stay."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 4 * PAGE)
    m.write(a, r, 4 * PAGE)
    before = m.peek(a, r, 4 * PAGE)
    m.mprotect(a, r, 2 * PAGE, PROT_READ)
    with pytest.raises(ModelError, match="SIGSEGV"):
        m.write(a, r, PAGE)
    assert m.peek(a, r, 4 * PAGE) == before and pm(m, a, r, 4) == "PPPP"


def test_mremap_shrinks_in_place_and_grows_with_none_ptes():
    """do_mremap: a shrink unmaps the tail; a grow of a VMA with room after it is vma_expand
    in place (new PTEs none); a shmem object does not grow, so its new pages are SIGBUS."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 4 * PAGE, addr=0x100000000)
    m.write(a, r, 4 * PAGE)
    assert m.mremap(a, r, 4 * PAGE, new_length=2 * PAGE) == r
    assert m.k.task(a).vmas[0].npages == 2
    assert m.mremap(a, r, 2 * PAGE, new_length=6 * PAGE, may_move=False) == r
    assert pm(m, a, r, 6) == "PP----"
    s = m.mmap(a, 2 * PAGE, shared=True, addr=0x200000000)
    m.mremap(a, s, 2 * PAGE, new_length=4 * PAGE, may_move=False)
    with pytest.raises(ModelError, match="SIGBUS"):
        m.read(a, s + 3 * PAGE, PAGE)
    m.mmap(a, PAGE, addr=r + 6 * PAGE)
    with pytest.raises(ModelError, match="ENOMEM"):
        m.mremap(a, r, 6 * PAGE, new_length=8 * PAGE, may_move=False)
    moved = m.mremap(a, r, 6 * PAGE, new_length=8 * PAGE)
    assert moved != r and pm(m, a, moved, 8) == "PP------"
    assert not violations(m.k)


def test_madvise_free_lazyfree_discarded_when_clean_kept_when_redirtied():
    """madvise_free_pte_range marks exclusive pages lazyfree and frees swap entries at once;
    shrink_folio_list discards a clean lazyfree folio (zeros, even without swap) and puts a
    redirtied one back (try_to_unmap_one: folio_set_swapbacked, stays mapped)."""
    for swap in (True, False):
        m = Model("linux-6.18", swap=swap)
        a = m.spawn("A")
        r = m.mmap(a, 6 * PAGE)
        m.write(a, r, 6 * PAGE)
        if swap:
            m.madvise(a, r + 4 * PAGE, 2 * PAGE, MADV_PAGEOUT)
            assert pm(m, a, r + 4 * PAGE, 2) == "SS"
        kept = m.peek(a, r + PAGE, PAGE)
        m.madvise(a, r, 6 * PAGE, MADV_FREE)
        assert pm(m, a, r, 6) == "PPPP" + ("--" if swap else "PP")
        m.write(a, r + PAGE, PAGE, kept)
        m.madvise(a, r, 4 * PAGE, MADV_PAGEOUT)
        assert pm(m, a, r, 4) == "-P--"
        assert m.peek(a, r, 4 * PAGE) == bytes(PAGE) + kept + bytes(2 * PAGE)
        assert not violations(m.k)


def test_madvise_free_needs_private_anonymous_memory():
    m, a, r = shared_written("linux-6.18", 2)
    with pytest.raises(ModelError, match="EINVAL"):
        m.madvise(a, r, PAGE, MADV_FREE)


def test_madvise_cold_changes_nothing_the_model_shows():
    """MADV_COLD only deactivates (no LRU in the model): every page and view stays."""
    m, a, r = shared_written("linux-6.18", 4)
    p = m.mmap(a, 4 * PAGE)
    m.write(a, p, 4 * PAGE)
    before = (m.peek(a, p, 4 * PAGE), pm(m, a, p, 4), pm(m, a, r, 4), mc(m, a, r, 4))
    m.madvise(a, p, 4 * PAGE, MADV_COLD)
    m.madvise(a, r, 4 * PAGE, MADV_COLD)
    assert before == (m.peek(a, p, 4 * PAGE), pm(m, a, p, 4), pm(m, a, r, 4), mc(m, a, r, 4))


def test_dup_mmap_skips_dontcopy_and_empties_wipeonfork():
    """dup_mmap: a VM_DONTCOPY VMA is not in the child; a VM_WIPEONFORK one is, empty (no
    copy_page_range, no anon_vma), and keeps the flag; DOFORK / KEEPONFORK undo them, and the
    madvise splits merge back."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 4 * PAGE)
    m.write(a, r, 4 * PAGE)
    s = m.mmap(a, 4 * PAGE)
    m.write(a, s, 4 * PAGE)
    m.madvise(a, r, 4 * PAGE, MADV_DONTFORK)
    m.madvise(a, s + PAGE, 2 * PAGE, MADV_WIPEONFORK)
    b = m.fork(a)
    assert m.k.task(b).find_vma(r) is None
    assert pm(m, b, s, 4) == "P--P"
    assert m.peek(b, s + PAGE, 2 * PAGE) == bytes(2 * PAGE)
    c = m.fork(b)
    assert pm(m, c, s, 4) == "P--P"
    m.madvise(a, r, 4 * PAGE, MADV_DOFORK)
    m.madvise(a, s, 4 * PAGE, MADV_KEEPONFORK)
    assert len(m.k.task(a).vmas) == 2
    d = m.fork(a)
    assert pm(m, d, r, 4) == pm(m, d, s, 4) == "PPPP"
    with pytest.raises(ModelError, match="EINVAL"):
        m.madvise(a, m.mmap(a, PAGE, shared=True), PAGE, MADV_WIPEONFORK)
    assert not violations(m.k)


def _runs(m: Model, pid: int, addr: int, n: int) -> str:
    """pagemap letters (P F X, - for none) per page, run-length encoded: "PXx512"."""
    from itertools import groupby

    letters = ["".join(c for c in (flags(m, pid, addr + i * PAGE, 1)) if c in "PSFX") or "-"
               for i in range(n)]
    return " ".join(f"{k}x{len(list(g))}" for k, g in groupby(letters))


def _thp_region(m: Model, a: int) -> int:
    from dumper.kabi import MADV_HUGEPAGE

    r = m.mmap(a, 4 << 20)
    r = (r + (2 << 20) - 1) & ~((2 << 20) - 1)
    m.madvise(a, r, 2 << 20, MADV_HUGEPAGE)
    return r


def test_do_huge_pmd_anonymous_page_maps_the_whole_pmd():
    """A write in a VM_HUGEPAGE PMD maps all 512 pages (a THP), a read the huge zero page
    (P F); a partial DONTNEED splits the PMD; fork shares it and a child's write copies one
    page (6.18, measured: tests/linux/test_differential.py thp-fault-split-fork)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = _thp_region(m, a)
    m.write(a, r + 5 * PAGE, PAGE)
    assert _runs(m, a, r, 512) == "PXx512"
    m.madvise(a, r + 8 * PAGE, 4 * PAGE, MADV_DONTNEED)
    assert _runs(m, a, r, 512) == "PXx8 -x4 PXx500"
    z = _thp_region(m, a)
    m.read(a, z + 7 * PAGE, PAGE)
    assert _runs(m, a, z, 512) == "PFx512"
    m.write(a, z + 9 * PAGE, PAGE)
    assert _runs(m, a, z, 512) == "PXx512"
    b = m.fork(a)
    m.write(b, z + 3 * PAGE, PAGE)
    assert _runs(m, b, z, 512) == "Px3 PXx1 Px508"
    assert not violations(m.k)


@pytest.mark.parametrize("swap", [False, True])
def test_reclaim_of_a_thp_splits_it_and_remaps_zero_pages(swap):
    """shrink_folio_list on a THP: one holding data in every page is swapped out whole; any
    other is split and its zero-filled pages are mapped to the shared zero page (6.12)."""
    m = Model("linux-6.18", swap=swap)
    a = m.spawn("A")
    d = _thp_region(m, a)
    m.write(a, d, PAGE)
    m.write(a, d + 100 * PAGE, PAGE)
    m.madvise(a, d, 2 << 20, MADV_PAGEOUT)
    s = "S" if swap else "PX"
    assert _runs(m, a, d, 512) == f"{s}x1 Px99 {s}x1 Px411"
    g = _thp_region(m, a)
    m.write(a, g, 2 << 20)
    m.madvise(a, g, 2 << 20, MADV_PAGEOUT)
    assert _runs(m, a, g, 512) == ("Sx512" if swap else "PXx512")
    assert not violations(m.k)


def test_hugetlb_faults_whole_pages_and_keeps_them_from_reclaim():
    """hugetlb: a fault maps the whole 2 MiB page (private: anonymous, no zero page; shared:
    the file's); fork COW-copies a private page whole and leaves a shared one's PTEs; a
    DONTNEED shorter than a huge page does nothing; LRU advice is EINVAL; mmap needs the
    pool (measured: tests/linux/test_differential.py hugetlb-private-shared)."""
    m = Model("linux-6.18", hugepages=3)
    a = m.spawn("A")
    p = m.mmap(a, 2 << 20, hugetlb=True)
    m.read(a, p + 5 * PAGE, PAGE)
    assert _runs(m, a, p, 512) == "PXx512" and mc(m, a, p, 512) == "1" * 512
    s = m.mmap(a, 2 << 20, shared=True, hugetlb=True)
    m.write(a, s, PAGE)
    b = m.fork(a)
    assert _runs(m, b, p, 512) == "Px512" and _runs(m, b, s, 512) == "-x512"
    m.write(b, p, PAGE)
    assert _runs(m, b, p, 512) == "PXx512"
    m.madvise(a, p, 4 * PAGE, MADV_DONTNEED)
    assert _runs(m, a, p, 512) == "PXx512"
    for advice in (MADV_PAGEOUT, MADV_COLD, MADV_FREE):
        with pytest.raises(ModelError, match="EINVAL"):
            m.madvise(a, p, 2 << 20, advice)
    with pytest.raises(ModelError, match="ENOMEM"):
        m.mmap(a, 2 << 20, hugetlb=True)
    m.madvise(a, s, 2 << 20, MADV_DONTNEED)
    assert mc(m, a, s, 512) == "0" * 512  # mincore_hugetlb: the page cache is not asked
    assert m.peek(a, s, PAGE) != bytes(PAGE)
    assert not violations(m.k)
