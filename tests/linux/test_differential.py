"""The model against the kernel: the same operation program runs on real helper processes
and on the model's linux-6.18 profile, and after every operation pagemap flags (P S F G W X),
mincore and lseek extents must agree page by page (tests/linux/programs.py, runners.py).

Swap: the swap fixture is a swapfile on ext4, written back asynchronously, so a paged-out
page stays in the swap cache (mincore 1) until memory pressure frees it (kernel.md §4): the
model runs with swap_sync=False to match. With everything still in the swap cache, swap-in
readahead (which the model lacks) brings in nothing new, so it cannot show.

A disagreement fails with the shortest prefix of the program that shows it (for random
programs, after greedy shrinking), what the kernel says and what the model says.
"""

from __future__ import annotations

import pytest

from .conftest import HUGEPAGES, _active_swaps
from .programs import Op, parse, random_program, shrink, text, uses_swap
from .runners import ModelRunner, RealRunner, View, describe

pytestmark = pytest.mark.linux


def kernel_views(procs, ops: list[Op]) -> list:
    """The kernel's view after every op, on helper processes that end with the run."""
    real = RealRunner(procs, ops)
    try:
        return real.run(ops)
    finally:
        real.close()
        procs.end_all()


def first_disagreement(procs, ops: list[Op], swap: bool, kernel: list | None = None,
                       hugepages: int = 0, shmem_folio_pages: int = 1) -> str | None:
    """None if kernel and model agree after every op; else a report of the first op after
    which they do not. kernel: views already taken by kernel_views."""
    if kernel is None:
        kernel = kernel_views(procs, ops)
    model = ModelRunner(swap=swap, swap_sync=False, hugepages=hugepages,
                        shmem_folio_pages=shmem_folio_pages).run(ops)
    for i, (k, m) in enumerate(zip(kernel, model, strict=True)):
        if k == m:
            continue
        lines = [f"after op {i + 1} ({ops[i]}):"]
        for key in sorted(set(k) | set(m)):
            if k.get(key) != m.get(key):
                where = f"{key[0]} {key[1]}"
                lines.append(f"  {where}: kernel {describe(k[key]) if key in k else 'unmapped'}")
                lines.append(f"  {' ' * len(where)}  model  "
                             f"{describe(m[key]) if key in m else 'unmapped'}")
        return "\n".join(lines)
    return None


def check_program(procs, ops: list[Op], swap: bool, minimise: bool = False) -> None:
    report = first_disagreement(procs, ops, swap)
    if report is None:
        return
    if minimise:
        ops = shrink(ops, lambda cand: first_disagreement(procs, cand, swap) is not None)
        report = first_disagreement(procs, ops, swap)
    pytest.fail(f"kernel and model disagree\nprogram:\n{text(ops)}\n{report}", pytrace=False)


@pytest.fixture
def no_swap():
    if _active_swaps():
        pytest.skip("swap is active on this machine: the no-swap programs need none")


PROGRAMS = {
    # kernel.md (e): COW after fork: same pages, X gone in both; the child's write breaks it.
    "fork-cow": """
        spawn A
        mmap A r0 8 anon
        write A r0 0-3
        read A r0 4          # the zero page: P only
        fork A C
        write C r0 1
        read C r0 5
        munmap A r0
    """,
    # kernel.md (a), (b): scenario 2; a read in the child maps the cached neighbours.
    "shared-fork-unmap": """
        spawn A
        mmap A r1 8 shared
        write A r1 0-2,5
        read A r1 3          # a read fault allocates: data from now on
        fork A C
        read C r1 1          # fault-around: every cached page of the window
        write C r1 6
        munmap A r1
        read C r1 7
    """,
    # Fault-around is bounded by the 16-page window and by the VMA, in a 16-page region
    # mapped from object page 3.
    "fault-around-window": """
        spawn A
        memfd A m 24
        pwrite A m 0-23
        mmap A r2 16 memfd m 3
        read A r2 9
        fork A C
        read C r2 0
        write C r2 15
    """,
    # kernel.md (i): DONTNEED zaps only the caller; REMOVE and PUNCH_HOLE zap every mapper
    # and free the pages; the parent then reads zeros back into holes.
    "dontneed-remove-punch": """
        spawn A
        memfd A m 8
        mmap A r2 8 memfd m 0
        write A r2 0-7
        fork A C
        read C r2 0
        dontneed A r2 0 2
        remove A r2 2 2
        punch A m 4 2
        read A r2 0-5
        dontneed C r2 0 8
        mmap C r3 8 anon
        write C r3 0-7
        dontneed C r3 2 4
    """,
    # A SysV segment's VMA has shm_vm_ops, without map_pages: a read fault maps the faulting
    # page alone (should_fault_around is false), where shmem maps its cached neighbours.
    "sysv-no-fault-around": """
        spawn A
        mmap A r0 8 sysv
        write A r0 0-5
        fork A C
        read C r0 1          # C maps page 1 only
        write C r0 6
        dontneed A r0 0 8
        read A r0 2-3
        remove C r0 4 1
        read C r0 5
    """,
    # mprotect splits the VMA (mprotect_fixup) and fault-around stops at the split
    # (do_fault_around clips to the VMA); PROT_NONE PTEs stay present; putting the
    # protection back merges the parts, and fault-around spans the whole VMA again.
    "mprotect-fault-around": """
        spawn A
        memfd A m 16
        pwrite A m 0-15
        mmap A r0 16 memfd m 0
        mprotect A r0 4 4 none
        read A r0 2          # maps 0-3 only
        read A r0 9          # maps 8-15
        mprotect A r0 4 4 rw
        fork A C
        read C r0 5          # the merged VMA: all 16
        mprotect A r0 0 8 r
        write A r0 12
        mmap A r1 8 anon
        write A r1 0-5
        mprotect A r1 2 2 none
        fork A D
        mprotect D r1 0 8 r
        read D r1 6
    """,
    # mremap in place: a shrink unmaps the tail, a grow adds none PTEs (vma_expand); a
    # shmem object does not grow with its mapping (pages past it: SIGBUS, not touched).
    "mremap-grow-shrink": """
        spawn A
        mmap A r0 4 anon
        write A r0 0-3
        mremap A r0 8
        write A r0 6
        mremap A r0 2
        mmap A r1 4 shared
        write A r1 0-3
        mremap A r1 8
        mremap A r1 3
        memfd A m 8
        pwrite A m 0-7
        mmap A r2 4 memfd m 0
        mremap A r2 8
        read A r2 6          # fault-around over the grown VMA: the cached 4-7
    """,
    # VM_DONTCOPY: the child has no such VMA; VM_WIPEONFORK: the child's VMA part is empty
    # (dup_mmap skips copy_page_range); DOFORK / KEEPONFORK undo them.
    "dontfork-wipeonfork": """
        spawn A
        mmap A r0 4 anon
        write A r0 0-3
        mmap A r1 4 anon
        write A r1 0-3
        guard A r1 2 1
        mmap A r2 4 shared
        write A r2 0-3
        dontfork A r0 0 4
        wipeonfork A r1 1 2
        dontfork A r2 0 4
        fork A C
        read C r1 1          # the zero page
        dofork A r0 0 4
        keeponfork A r1 0 4
        cold A r1 0 4        # no LRU in the views: nothing changes
        fork A D
    """,
    # kernel.md (f): a memfd passed over SCM_RIGHTS, mapped at different offsets.
    "memfd-scm-rights": """
        spawn A
        spawn B
        memfd A m 12
        pwrite A m 0-1
        send A m B
        mmap A r0 8 memfd m 0
        mmap B r1 8 memfd m 2
        write B r1 3         # object page 5
        read A r0 5
        read A r0 7
        punch B m 0 1
    """,
    # kernel.md (g): guard markers (S G) on anon and shmem; on shmem the guard gives the VMA
    # an anon_vma, so fork copies its PTEs (6.18; VM_COPY_ON_FORK in 6.19).
    "guards": """
        spawn A
        mmap A r0 8 anon
        write A r0 0-5
        guard A r0 2 2
        mmap A r1 8 shared
        write A r1 0-5
        guard A r1 2 2
        fork A C
        unguard C r1 2 1
        read C r1 2
        dontneed C r0 0 8     # markers survive DONTNEED
        munmap A r1
    """,
}

SWAP_PROGRAMS = {
    # kernel.md (c), (d): MADV_PAGEOUT of shmem (pagemap 0, mincore 1 in the swap cache, lseek
    # data) and of private memory (S, copied by fork); pages mapped twice are skipped.
    "pageout": """
        spawn A
        mmap A r1 8 shared
        write A r1 0-5
        pageout A r1 0 4
        fork A C
        read C r1 1           # swap-in: page 1 back; fault-around maps cached 4-5 too
        pageout A r1 4 2      # mapped by C as well: skipped
        mmap A r0 8 anon
        write A r0 0-5
        pageout A r0 0 4
        fork A D
        read A r0 0
        write D r0 1
        dontneed D r0 2 1
    """,
    # Paged-out shmem then MADV_REMOVE / punch: the swap entries go with the pages.
    "pageout-remove": """
        spawn A
        memfd A m 8
        mmap A r2 8 memfd m 0
        write A r2 0-7
        pageout A r2 0 8
        remove A r2 0 2
        punch A m 6 2
        read A r2 1-2
    """,
}

# Transparent huge pages (the thp fixture: enabled=madvise, khugepaged asleep), measured on
# 6.18 and followed by dumper/model/thp.py: one write maps the whole PMD, a read the huge
# zero page (P F), a partial DONTNEED splits the PMD (a DONTNEED emptying the PTE table
# frees it: the next fault maps a THP again), a fork shares it and a write in the
# child splits it there and copies one page; reclaim of a THP that is not all data splits it
# and maps its zero-filled pages to the zero page (P, no X) — without swap the data page
# stays, with swap it is swapped out — and a THP that is all data goes to swap whole.
THP_PROGRAMS = {
    "thp-fault-split-fork": """
        spawn A
        mmap A r0 512 anon
        hugepage A r0 0 512
        write A r0 5
        write A r0 0-511      # no zero-filled page: a deferred split would change nothing
        dontneed A r0 8 4
        write A r0 9          # the PTE table stays: a small page
        mmap A r1 512 anon
        hugepage A r1 0 512
        read A r1 7
        write A r1 9
        fork A C
        write C r1 3
        mmap A r2 512 anon
        write A r2 4          # no MADV_HUGEPAGE: one small page
        dontneed A r0 0 512   # the PTE table left empty is freed (try_to_free_pte)
        write A r0 100        # so this maps a THP again
        nohugepage A r1 0 512
    """,
    "thp-pageout": """
        spawn A
        mmap A r0 512 anon
        hugepage A r0 0 512
        write A r0 0
        write A r0 100
        pageout A r0 0 512
        mmap A r1 512 anon
        hugepage A r1 0 512
        write A r1 0
        pageout A r1 16 16    # part of the range: the folio is split all the same
        mmap A r2 512 anon
        hugepage A r2 0 512
        write A r2 0-511
        pageout A r2 0 512    # all data: swapped out whole
        read A r2 7
    """,
}


# hugetlb (the hugetlb fixture: nr_hugepages=8), measured on 6.18 and followed by
# dumper/model/hugetlb.py: a fault maps the whole 2 MiB page (a read too: no zero page),
# private pages are anonymous (P X), shared ones file pages (P F X); fork copies a private
# mapping's PTEs for COW and leaves a shared one's; DONTNEED works in whole huge pages
# (a shorter range does nothing); MADV_REMOVE punches a shared one's pages; mincore reads
# only the PTEs (mincore_hugetlb), lseek on hugetlbfs finds data everywhere.
HUGETLB_PROGRAMS = {
    "hugetlb-private-shared": """
        spawn A
        mmap A r0 1024 hugetlb
        write A r0 5
        read A r0 515
        mmap A r1 1024 hugetlb-shared
        write A r1 5
        fork A C
        write C r0 7          # COW of the whole huge page
        read C r1 600         # a fault maps the shared huge page
        dontneed A r0 0 4     # shorter than a huge page: nothing
        dontneed A r0 0 512
        read A r0 5           # a new zeroed page
        dontneed A r1 512 512
        remove C r1 0 512
        read A r1 2
        munmap C r0
    """,
}


# Large shmem folios (the shmem_folios fixture: hugepages-64kB/shmem_enabled=always),
# measured on 6.18 and followed by dumper/model/shmem_large.py: a fault on a hole in an
# all-hole aligned 16-page block maps a 64 KiB folio whole; write(2) and a block with a page
# in it get small folios; a punch through a folio splits it (every mapper loses its PTEs);
# reclaim takes a folio whole (clean: 16 holes).
SHMEM_FOLIO_PROGRAMS = {
    "shmem-large-folios": """
        spawn A
        memfd A m 64
        mmap A r0 16 memfd m 0
        mmap A r1 16 memfd m 16
        mmap A r2 16 memfd m 32
        mmap A r3 8 memfd m 48     # shorter than a folio: small folios
        write A r0 5
        pwrite A m 40
        read A r2 10
        read A r1 6
        punch A m 6 1
        dontneed A r2 8 2
        fork A C
        read C r2 1
        pageout A r1 0 16
        write A r3 0
        mmap A r4 16 shared
        read A r4 3
        fork A D
        write D r4 9
        pageout A r4 0 16
    """,
}


# MADV_FREE: a clean lazyfree page is discarded by reclaim (reads zeros), a redirtied one
# is set swapbacked again and stays mapped this round; a swapped page is freed at once.
LAZYFREE = """
    spawn A
    mmap A r0 8 anon
    write A r0 0-7
    free A r0 0 4
    write A r0 1
    pageout A r0 0 8
    read A r0 0
    free A r0 4 2
    fork A C
    free C r0 0 8
    pageout C r0 0 8
"""
SWAP_PROGRAMS["lazyfree"] = LAZYFREE

# Found by the random programs, fixed in the model by e393dfd: MADV_PAGEOUT of a shmem page
# that a read fault allocated (shmem_get_folio_gfp, SGP_CACHE: cleared and uptodate, not
# dirty) and nobody wrote. shrink_folio_list calls pageout() only for a dirty folio
# (try_to_unmap first moves a dirty pte's bit to the folio); a clean one goes straight to
# __remove_mapping and leaves a hole: lseek '.', mincore 0, with or without swap. The model
# used to write every shmem page to swap (or, without swap, keep it).
CLEAN_SHMEM = """
    spawn A
    mmap A r1 4 shared
    read A r1 0-1
    write A r1 2
    pageout A r1 0 4
"""
SWAP_PROGRAMS["pageout-clean-shmem"] = CLEAN_SHMEM

NO_SWAP_PROGRAMS = {
    "pageout-clean-shmem": CLEAN_SHMEM,
    "lazyfree": LAZYFREE,  # discarded with no swap at all: no add_to_swap for lazyfree
    # kernel.md (n): without swap, PAGEOUT zaps shmem PTEs but keeps the pages; private
    # pages stay mapped.
    "pageout-no-swap": """
        spawn A
        mmap A r1 8 shared
        write A r1 0-5
        pageout A r1 0 4
        mmap A r0 8 anon
        write A r0 0-5
        pageout A r0 0 4
    """,
}


# Was a model gap, fixed (the model kept every reclaimed folio in the swap cache until
# swapcache_drop()): a private page paged out, read back (do_swap_page on a read fault keeps
# the folio in the swap cache with its slot: should_try_to_free_swap wants FAULT_FLAG_WRITE),
# then paged out again once the first writeback is done. The folio is clean and its slot
# holds the data, so shrink_folio_list skips pageout() and __remove_mapping frees it at once:
# mincore 0 although the device is asynchronous. (Without the writeback wait the kernel may
# find the folio still under writeback and keep it mapped: activate_locked.)
REPAGEOUT = """
    spawn A
    mmap A r0 4 anon
    write A r0 0-3
    pageout A r0 0 4
    writeback A
    read A r0 1
    pageout A r0 1 1
"""
REPAGEOUT_KERNEL: View = (("S", "S", "S", "S"), "1011", None)


def test_the_model_reproduces_the_repageout_view():
    """The model alone ends REPAGEOUT as this kernel did (measured on 6.18.44, above)."""
    views = ModelRunner(swap=True, swap_sync=False).run(parse(REPAGEOUT))
    assert views[-1][("A", "r0")] == REPAGEOUT_KERNEL


# If the first writeback is still running at the second pageout, shrink_folio_list keeps the
# folio mapped (folio_test_writeback -> activate_locked): seen in a CI-like run under load.
# The model takes the program's "writeback" as done, so it follows the first outcome only.
REPAGEOUT_KERNEL_BUSY: View = (("S", "PX", "S", "S"), "1111", None)


def test_second_pageout_of_a_read_swapped_in_page(procs, swap):
    ops = parse(REPAGEOUT)
    kernel = kernel_views(procs, ops)
    final = kernel[-1][("A", "r0")]
    assert final in (REPAGEOUT_KERNEL, REPAGEOUT_KERNEL_BUSY)
    if final == REPAGEOUT_KERNEL_BUSY:
        pytest.skip("the kernel still had the first writeback in flight (activate_locked)")
    report = first_disagreement(procs, ops, True, kernel)
    assert report is None, f"kernel and model disagree\n{report}"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program(procs, name):
    check_program(procs, parse(PROGRAMS[name]), swap=bool(_active_swaps()))


@pytest.mark.parametrize("name", sorted(SWAP_PROGRAMS))
def test_program_with_swap(procs, swap, name):
    check_program(procs, parse(SWAP_PROGRAMS[name]), swap=True)


@pytest.mark.parametrize("name", sorted(NO_SWAP_PROGRAMS))
def test_program_without_swap(procs, no_swap, name):
    check_program(procs, parse(NO_SWAP_PROGRAMS[name]), swap=False)


@pytest.mark.parametrize("name", sorted(THP_PROGRAMS))
def test_thp_program(procs, thp, name):
    check_program(procs, parse(THP_PROGRAMS[name]), swap=bool(_active_swaps()))


@pytest.mark.parametrize("name", sorted(THP_PROGRAMS))
def test_thp_program_with_swap(procs, thp, swap, name):
    check_program(procs, parse(THP_PROGRAMS[name]), swap=True)


@pytest.mark.parametrize("seed", range(300, 303))
def test_random_program_thp(procs, thp, seed):
    """Random programs with PMD-sized private regions under MADV_HUGEPAGE, written whole
    (the first local run of these found that a MADV_FREE through part of a THP splits the
    folio). A THP left partly mapped is split by the deferred-split shrinker whenever memory
    is short, and a split maps zero-filled pages to the zero page: with no such page, the
    split shows nowhere, so the outcome does not depend on when the shrinker runs."""
    check_program(procs, random_program(seed, length=20, thp=True),
                  swap=bool(_active_swaps()), minimise=True)


@pytest.mark.parametrize("name", sorted(HUGETLB_PROGRAMS))
def test_hugetlb_program(procs, hugetlb, name):
    ops = parse(HUGETLB_PROGRAMS[name])
    report = first_disagreement(procs, ops, bool(_active_swaps()), hugepages=HUGEPAGES)
    assert report is None, f"kernel and model disagree\n{text(ops)}\n{report}"


@pytest.mark.parametrize("name", sorted(SHMEM_FOLIO_PROGRAMS))
def test_shmem_folio_program(procs, shmem_folios, name):
    ops = parse(SHMEM_FOLIO_PROGRAMS[name])
    report = first_disagreement(procs, ops, bool(_active_swaps()), shmem_folio_pages=16)
    assert report is None, f"kernel and model disagree\n{text(ops)}\n{report}"


@pytest.mark.parametrize("seed", range(6))
def test_random_program(procs, seed):
    ops = random_program(seed, length=20, pageout=False)
    assert not uses_swap(ops)
    check_program(procs, ops, swap=bool(_active_swaps()), minimise=True)


@pytest.mark.parametrize("seed", range(100, 104))
def test_random_program_with_swap(procs, swap, seed):
    ops = random_program(seed, length=20, repageout=False)  # see REPAGEOUT
    check_program(procs, ops, swap=True, minimise=True)


@pytest.mark.parametrize("seed", range(200, 203))
def test_random_program_pageout_without_swap(procs, no_swap, seed):
    check_program(procs, random_program(seed, length=20), swap=False, minimise=True)


def test_programs_round_trip_through_text():
    for body in [*PROGRAMS.values(), *SWAP_PROGRAMS.values(), REPAGEOUT]:
        ops = parse(body)
        assert parse(text(ops)) == ops
    ops = random_program(3)
    assert parse(text(ops)) == ops and len(ops) == 16
