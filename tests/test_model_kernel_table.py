"""The linux-6.18 profile against the observation table of ../shared/facts/kernel.md §7.

Each test replays one probe case (a)-(n) on the model with the same steps and asserts the
strings the probe printed on this kind of machine (6.18.44). Swap cases use the zram run
(a synchronous device: the swap cache lets go at once), the model's default.
"""

from __future__ import annotations

from modelsupport import PAGE, flags, frames, ls, mc, pm

from dumper.kabi import (
    MADV_DONTNEED,
    MADV_GUARD_INSTALL,
    MADV_PAGEOUT,
    MADV_REMOVE,
    PROT_READ,
)
from dumper.model import Model
from dumper.model.state import ZERO_PFN


def test_a_shared_anon_fork_child_sees_nothing_until_it_faults():
    """(a): parent writes 0,1,2,5 and reads 3, forks; the child's PTEs start none; a read of
    pg1 maps every cached page (fault-around); the child's write of pg6 is invisible to the
    parent's pagemap but not to its mincore and lseek."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE, shared=True)
    for i in (0, 1, 2, 5):
        m.write(a, r + i * PAGE, PAGE)
    m.read(a, r + 3 * PAGE, PAGE)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("PPPP-P--", "11110100", "DDDD.D..")
    assert flags(m, a, r) == "PFX PFX PFX PFX 0 PFX 0 0"
    b = m.fork(a)
    assert (pm(m, b, r), mc(m, b, r), ls(m, b, r)) == ("--------", "11110100", "DDDD.D..")
    m.read(b, r + PAGE, PAGE)
    assert pm(m, b, r) == "PPPP-P--"
    assert flags(m, b, r) == "PF PF PF PF 0 PF 0 0"
    m.write(b, r + 6 * PAGE, PAGE)
    assert (pm(m, b, r), mc(m, b, r), ls(m, b, r)) == ("PPPP-PP-", "11110110", "DDDD.DD.")
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("PPPP-P--", "11110110", "DDDD.DD.")
    # (b) the parent unmaps: the child's view is intact, and exclusive again.
    data = m.peek(b, r + 5 * PAGE, PAGE)
    m.munmap(a, r, 8 * PAGE)
    assert m.k.task(a).find_vma(r) is None
    assert (pm(m, b, r), mc(m, b, r), ls(m, b, r)) == ("PPPP-PP-", "11110110", "DDDD.DD.")
    assert flags(m, b, r) == "PFX PFX PFX PFX 0 PFX PFX 0"
    assert m.read(b, r + 5 * PAGE, PAGE) == data


def test_c_shmem_pageout_with_swap():
    """(c) zram: PAGEOUT of pg0-3 leaves none PTEs (pagemap blind), lseek still sees data,
    smaps Swap counts them; PAGEOUT of pages a child also maps is skipped; the child's read
    of swapped pg1 maps it in the child only."""
    m = Model("linux-6.18")
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE, shared=True)
    m.write(a, r, 6 * PAGE)
    m.madvise(a, r, 4 * PAGE, MADV_PAGEOUT)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("----PP--", "00001100", "DDDDDD..")
    assert flags(m, a, r) == "0 0 0 0 PFX PFX 0 0"
    assert (m.smaps(a)[0].rss_kb, m.smaps(a)[0].swap_kb) == (8, 16)
    b = m.fork(a)
    m.read(b, r + 4 * PAGE, PAGE)
    assert pm(m, b, r) == "----PP--"
    m.madvise(a, r + 4 * PAGE, 2 * PAGE, MADV_PAGEOUT)
    assert pm(m, a, r) == pm(m, b, r) == "----PP--"
    assert m.smaps(a)[0].swap_kb == 16
    m.read(b, r + PAGE, PAGE)
    assert (pm(m, b, r), mc(m, b, r)) == ("-P--PP--", "01001100")
    assert (pm(m, a, r), mc(m, a, r)) == ("----PP--", "01001100")
    assert m.smaps(a)[0].swap_kb == m.smaps(b)[0].swap_kb == 12


def test_c_swapfile_pages_stay_in_swap_cache():
    """(c) swapfile: writeback is asynchronous, so the paged-out pages linger in the swap
    cache and mincore reads 1111 for them (SwapCached=16 kB)."""
    m = Model("linux-6.18", swap_sync=False)
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE, shared=True)
    m.write(a, r, 6 * PAGE)
    m.madvise(a, r, 4 * PAGE, MADV_PAGEOUT)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("----PP--", "11111100", "DDDDDD..")
    m.swapcache_drop()
    assert mc(m, a, r) == "00001100"


def test_d_private_anon_pageout_and_fork():
    """(d) zram: swapped private pages read S with type 0 and offsets from 1; the child gets
    the same swap entries; the parent's read of pg0 swaps it in for the parent only."""
    m = Model("linux-6.18")
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE)
    m.write(a, r, 6 * PAGE)
    m.madvise(a, r, 4 * PAGE, MADV_PAGEOUT)
    assert (pm(m, a, r), mc(m, a, r)) == ("SSSSPP--", "00001100")
    assert flags(m, a, r) == "S S S S PX PX 0 0"
    assert [f >> 5 for f in frames(m, a, r, 4)] == [1, 2, 3, 4]
    assert [f & 31 for f in frames(m, a, r, 4)] == [0, 0, 0, 0]
    assert (m.smaps(a)[0].rss_kb, m.smaps(a)[0].swap_kb) == (8, 16)
    b = m.fork(a)
    assert pm(m, b, r) == "SSSSPP--"
    assert flags(m, b, r) == "S S S S P P 0 0"
    assert frames(m, b, r) == frames(m, a, r)
    m.read(a, r, PAGE)
    assert flags(m, a, r) == "PX S S S P P 0 0"
    assert flags(m, b, r) == "S S S S P P 0 0"
    # swap_vma_readahead brought the neighbours' slots into the swap cache (shared slots:
    # not zram's synchronous single-owner path), so mincore reads them in core in both.
    assert mc(m, a, r) == mc(m, b, r) == "11111100"


def test_e_private_anon_cow_after_fork():
    """(e): after fork both see the same PFNs without X; the child's write gives it a new PFN
    and makes the parent's page exclusive again; the zero page is P only, with its PFN."""
    m = Model("linux-6.18")
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE)
    m.write(a, r, 4 * PAGE)
    m.read(a, r + 4 * PAGE, PAGE)
    assert flags(m, a, r) == "PX PX PX PX P 0 0 0"
    assert frames(m, a, r)[4] == ZERO_PFN
    assert (m.smaps(a)[0].rss_kb, mc(m, a, r)) == (16, "11111000")
    b = m.fork(a)
    assert flags(m, b, r) == flags(m, a, r) == "P P P P P 0 0 0"
    assert frames(m, b, r) == frames(m, a, r)
    m.write(b, r + PAGE, PAGE)
    assert flags(m, b, r) == flags(m, a, r) == "P PX P P P 0 0 0"
    same = [x == y for x, y in zip(frames(m, a, r), frames(m, b, r), strict=True)]
    assert same == [True, False, True, True, True, True, True, True]


def test_f_memfd_shared_by_two_processes():
    """(f): B maps A's memfd and sees nothing in pagemap; B's write of pg3 is seen by A only
    through mincore and lseek until A reads it (PF without X: two mappers)."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    fd = m.memfd_create(a, "kprobe", 8 * PAGE)
    ra = m.mmap(a, 8 * PAGE, shared=True, fd=fd)
    m.write(a, ra, 2 * PAGE)
    b = m.fork(a)
    rb = m.mmap(b, 8 * PAGE, shared=True, fd=fd)
    assert (pm(m, b, rb), mc(m, b, rb), ls(m, b, rb)) == ("--------", "11000000", "DD......")
    m.write(b, rb + 3 * PAGE, PAGE)
    assert (pm(m, a, ra), mc(m, a, ra), ls(m, a, ra)) == ("PP------", "11010000", "DD.D....")
    assert flags(m, b, rb) == "0 0 0 PFX 0 0 0 0"
    m.read(a, ra + 3 * PAGE, PAGE)
    assert flags(m, a, ra) == "PFX PFX 0 PF 0 0 0 0"
    assert "/memfd:kprobe (deleted)" in m.maps(a)


def test_g_guard_regions_anon_and_shmem():
    """(g): guard pages read S G with swap type 31 offset 4; fork copies them; on shmem the
    install gives the VMA an anon_vma, so the child gets the shmem PTEs (PF) too. The probe
    wrote pages 0,1,4,5 (its shmem lseek shows pg2-3 as holes: guard install zaps PTEs, it
    never frees page-cache pages), which is why mincore reads 0 there."""
    for shared, first in ((False, "PX PX SG SG PX PX 0 0"), (True, "PFX PFX SG SG PFX PFX 0 0")):
        m = Model("linux-6.18", swap=False)
        a = m.spawn("A")
        r = m.mmap(a, 8 * PAGE, shared=shared)
        m.write(a, r, 2 * PAGE)
        m.write(a, r + 4 * PAGE, 2 * PAGE)
        m.madvise(a, r + 2 * PAGE, 2 * PAGE, MADV_GUARD_INSTALL)
        assert (pm(m, a, r), mc(m, a, r)) == ("PPSSPP--", "11001100")
        assert flags(m, a, r) == first
        assert frames(m, a, r)[2:4] == [31 | 4 << 5] * 2
        b = m.fork(a)
        assert pm(m, b, r) == "PPSSPP--"
        assert flags(m, b, r) == ("PF PF SG SG PF PF 0 0" if shared else "P P SG SG P P 0 0")
        if shared:
            assert ls(m, b, r) == "DD..DD.."


def test_h_uffd_wp_markers_survive_pageout():
    """(h) zram: uffd-wp'd shmem: none PTEs get uffd-wp markers (S W, type 31 offset 1); after
    PAGEOUT the protected present PTEs become markers too; DONTNEED keeps the marker."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 8 * PAGE, shared=True)
    m.write(a, r, 4 * PAGE)
    m.uffd_writeprotect(a, r, 8 * PAGE)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("PPPPSSSS", "11110000", "DDDD....")
    assert flags(m, a, r) == "PFWX PFWX PFWX PFWX SW SW SW SW"
    assert frames(m, a, r)[4] == 31 | 1 << 5
    m.write(a, r + PAGE, PAGE)
    m.write(a, r + 6 * PAGE, PAGE)
    m.uffd_writeprotect(a, r, 8 * PAGE)  # the probe's scan#2 with PM_SCAN_WP_MATCHING
    m.madvise(a, r, 4 * PAGE, MADV_PAGEOUT)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("SSSSSSPS", "00000010", "DDDD..D.")
    assert flags(m, a, r) == "SW SW SW SW SW SW PFWX SW"
    m.madvise(a, r + 6 * PAGE, PAGE, MADV_DONTNEED)
    assert pm(m, a, r) == "SSSSSSSS"
    assert flags(m, a, r) == " ".join(["SW"] * 8)


def test_i_dontneed_remove_punch():
    """(i): DONTNEED zaps the caller only; MADV_REMOVE and PUNCH_HOLE free the pages and zap
    every mapper; reading the holes back gives zeros and allocates them again."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("parent")
    r = m.mmap(a, 8 * PAGE, shared=True)
    m.write(a, r, 8 * PAGE)
    b = m.fork(a)
    m.read(b, r, PAGE)
    assert pm(m, b, r) == "PPPPPPPP"
    m.madvise(a, r, 2 * PAGE, MADV_DONTNEED)
    m.madvise(a, r + 2 * PAGE, 2 * PAGE, MADV_REMOVE)
    fd = m.open_map_files(a, a, r)
    m.fallocate(a, fd, 4 * PAGE, 2 * PAGE, punch=True)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("------PP", "11000011", "DD....DD")
    assert flags(m, a, r) == "0 0 0 0 0 0 PF PF"
    assert (pm(m, b, r), mc(m, b, r)) == ("PP----PP", "11000011")
    assert flags(m, b, r) == "PFX PFX 0 0 0 0 PF PF"
    assert m.read(a, r + 2 * PAGE, 4 * PAGE) == bytes(4 * PAGE)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("PPPPPPPP", "11111111", "DDDDDDDD")


def test_k_unprivileged_mincore_and_pageout_of_root_file():
    """(k): uid 65534 mapping a root-owned 0644 tmpfs file read-only: mincore says all 1s
    (can_do_mincore), MADV_PAGEOUT silently does nothing; root's PAGEOUT swaps."""
    m = Model("linux-6.18")
    root = m.spawn("root")
    fd = m.tmpfs_create(root, "/dev/shm/probe", 8 * PAGE)
    m.pwrite(root, fd, 0, 4 * PAGE)
    nobody = m.spawn("nobody", uid=65534)
    fdn = m.send_fd(root, fd, nobody)
    rn = m.mmap(nobody, 8 * PAGE, prot=PROT_READ, shared=True, fd=fdn)
    m.read(nobody, rn, 4 * PAGE)
    assert mc(m, nobody, rn) == "11111111"
    m.madvise(nobody, rn, 4 * PAGE, MADV_PAGEOUT)
    assert m.smaps(nobody)[0].swap_kb == 0
    rr = m.mmap(root, 8 * PAGE, shared=True, fd=fd)
    m.munmap(nobody, rn, 8 * PAGE)
    m.read(root, rr, 4 * PAGE)
    m.madvise(root, rr + 2 * PAGE, 2 * PAGE, MADV_PAGEOUT)
    assert (m.smaps(root)[0].rss_kb, m.smaps(root)[0].swap_kb) == (8, 8)
    assert mc(m, root, rr) == "11000000"


def test_l_fallocated_pages_are_holes():
    """(l): fallocated-but-unwritten memfd pages are !uptodate: holes for lseek, 0 for
    mincore; a read fault through the mapping zeroes and maps one (and it becomes data)."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "l", 8 * PAGE)
    m.fallocate(a, fd, 0, 4 * PAGE)
    m.pwrite(a, fd, PAGE, PAGE)
    r = m.mmap(a, 8 * PAGE, shared=True, fd=fd)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("--------", "01000000", ".D......")
    m.read(a, r + 2 * PAGE, PAGE)
    assert (pm(m, a, r), mc(m, a, r), ls(m, a, r)) == ("-PP-----", "01100000", ".DD.....")
    assert flags(m, a, r) == "0 PFX PFX 0 0 0 0 0"


def test_m_pmd_split_zaps_without_installing_ptes():
    """(m): splitting a PMD-mapped shmem THP zaps the PMD and installs no PTEs: pagemap loses
    every page while mincore and lseek keep them all."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    r = m.mmap(a, 512 * PAGE, shared=True)
    m.write(a, r, 512 * PAGE)
    assert pm(m, a, r, 512).count("P") == 512
    m.zap(a, r, 512 * PAGE)
    assert pm(m, a, r, 512).count("P") == 0
    assert mc(m, a, r, 512) == "1" * 512
    assert ls(m, a, r, 512) == "D" * 512


def test_n_pageout_without_swap():
    """(n): with no swap, PAGEOUT of shmem zaps the PTEs but the page stays in RAM (mincore 1);
    PAGEOUT of private anon does nothing."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    s = m.mmap(a, 8 * PAGE, shared=True)
    m.write(a, s, 6 * PAGE)
    m.madvise(a, s, 4 * PAGE, MADV_PAGEOUT)
    assert (pm(m, a, s), mc(m, a, s), ls(m, a, s)) == ("----PP--", "11111100", "DDDDDD..")
    assert m.smaps(a)[0].swap_kb == 0
    p = m.mmap(a, 8 * PAGE)
    m.write(a, p, 6 * PAGE)
    m.madvise(a, p, 4 * PAGE, MADV_PAGEOUT)
    assert flags(m, a, p) == "PX PX PX PX PX PX 0 0"
