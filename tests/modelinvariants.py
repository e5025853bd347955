"""Internal invariants of the model's state, checked from the outside.

``violations(k)`` walks every page table, page cache, frame and swap slot of a Kernel and
returns a list of human-readable violations (empty when the state is consistent). Each rule
is a bookkeeping rule the real kernel keeps:

- a frame's mapcount is the number of present PTEs mapping it (page_add_*_rmap /
  page_remove_rmap), and a page under migration is mapped by none (try_to_migrate unmaps it
  and the folio lock keeps faults and fault-around away until remove_migration_ptes);
- a swap slot's count (swap_map) is the number of swap PTEs plus shmem page-cache value
  entries referring to it; a slot with a swap-cache folio has a count, or its folio is mapped
  (SWAP_HAS_CACHE: a read fault swapped it in and kept the slot);
- the swap cache link is symmetric (swap.cache[slot] == pfn iff frames.swapslot[pfn] == slot);
- no PTE, page-cache entry or swap-cache entry refers to a freed frame, and no allocated frame
  is unreachable from all of them (a leak);
- a file/shmem page is mapped only at its own index of its own object (folio->mapping,
  folio->index, the rmap's linear_page_index), a shared VMA maps only page-cache pages, and
  swap PTEs only live in private VMAs (shmem reclaim never writes swap PTEs);
- VMAs are sorted, page aligned, non-overlapping, with one PTE per page;
- an inode's reference count is its VMAs, fds and live SysV id, and every referenced inode is
  still in k.inodes (not evicted).
"""

from __future__ import annotations

import numpy as np

from dumper.kabi import (
    PAGE_SIZE,
    PTE_MARKER_GUARD,
    PTE_MARKER_PAGEOUT,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
)
from dumper.model import pte
from dumper.model.state import (
    F_ANON,
    F_USED,
    PC_HOLE,
    PC_PAGE,
    PC_SHIFT,
    PC_SWAP,
    PC_VALUE,
    PFN_BASE,
    ZERO_PFN,
    Kernel,
)

U64 = np.uint64
MARKER_BITS = PTE_MARKER_UFFD_WP | PTE_MARKER_POISONED | PTE_MARKER_GUARD | PTE_MARKER_PAGEOUT


def _fmt(xs) -> str:
    xs = [int(x) for x in xs]
    return ", ".join(hex(x) for x in xs[:8]) + (" ..." if len(xs) > 8 else "")


def violations(k: Kernel) -> list[str]:
    """Every invariant the state breaks, as messages (empty: consistent)."""
    out: list[str] = []
    fr = k.frames
    nfr = fr.content.n
    if not (fr.mapcount.n == fr.flags.n == fr.swapslot.n == nfr):
        out.append("frame arrays have different lengths")
        return out
    flags = fr.flags.a[:nfr]
    used = (flags & F_USED) != 0
    anon = (flags & F_ANON) != 0
    mapcount = fr.mapcount.a[:nfr]
    swapslot = fr.swapslot.a[:nfr]
    sw = k.swap
    nsl = sw.count.n
    count = sw.count.a[:nsl]
    cache = sw.cache.a[:nsl]

    mapped = np.zeros(nfr, dtype=np.int64)  # present PTEs per frame
    reach = np.zeros(nfr, dtype=bool)  # referenced by a PTE, page cache or swap cache
    swrefs = np.zeros(nsl, dtype=np.int64)  # swap PTEs + shmem value entries per slot
    migrating = np.array(sorted(k.migrating), dtype=np.int64)

    def frames_ok(pfns: np.ndarray, where: str) -> np.ndarray:
        """Indices of pfns into the frame arrays; reports PFNs out of range or freed."""
        i = pfns.astype(np.int64) - PFN_BASE
        bad = (i < 0) | (i >= nfr)
        if bad.any():
            out.append(f"{where}: PFNs out of range: {_fmt(pfns[bad])}")
        i = i[~bad]
        dead = ~used[i]
        if dead.any():
            out.append(f"{where}: refers to freed frames {_fmt(i[dead] + PFN_BASE)}")
        return i

    inodes = {id(obj): obj for obj in k.inodes}
    refs: dict[int, int] = {id(obj): 0 for obj in k.inodes}

    for pid, task in k.tasks.items():
        if not task.alive or task.pid != pid:
            out.append(f"task table holds a dead or misfiled task {pid}")
        for fd, obj in task.fds.items():
            if id(obj) not in inodes:
                out.append(f"pid {pid} fd {fd}: inode {obj.ino} was evicted")
            else:
                refs[id(obj)] += 1
        prev_end = 0
        for vma in task.vmas:
            where = f"pid {pid} vma {vma.start:#x}-{vma.end:#x}"
            if vma.start % PAGE_SIZE or vma.end % PAGE_SIZE or vma.start >= vma.end:
                out.append(f"{where}: bad bounds")
                continue
            if vma.start < prev_end:
                out.append(f"{where}: unsorted or overlapping (previous ends at {prev_end:#x})")
            prev_end = vma.end
            if len(vma.ptes) != vma.npages or vma.ptes.dtype != U64:
                out.append(f"{where}: {len(vma.ptes)} PTEs of {vma.ptes.dtype} for "
                           f"{vma.npages} pages")
                continue
            obj = vma.obj
            if vma.shared and obj is None:
                out.append(f"{where}: a shared VMA without an object")
            if obj is not None:
                if id(obj) not in inodes:
                    out.append(f"{where}: maps evicted inode {obj.ino}")
                else:
                    refs[id(obj)] += 1
            kinds = pte.kinds(vma.ptes)
            vals = pte.values(vma.ptes)
            known = np.isin(kinds, [pte.NONE, pte.PRESENT, pte.SWAP, pte.MIGRATION, pte.MARKER])
            if not known.all():
                out.append(f"{where}: unknown PTE kinds at {np.nonzero(~known)[0][:8]}")
            if ((kinds == pte.NONE) & (vma.ptes != 0)).any():
                out.append(f"{where}: none PTEs with stray bits")
            # present PTEs
            p = np.nonzero(kinds == pte.PRESENT)[0]
            pf = vals[p]
            zero = pf == U64(ZERO_PFN)
            if zero.any() and (obj is not None):
                out.append(f"{where}: the zero page mapped in a file/shmem VMA at "
                           f"{np.nonzero(zero)[0][:8] + 0}")
            real_idx, real_pf = p[~zero], pf[~zero]
            fi = frames_ok(real_pf, f"{where} present PTEs")
            if len(fi) == len(real_pf):
                np.add.at(mapped, fi, 1)
                reach[fi] = True
            # migration entries
            mi = np.nonzero(kinds == pte.MIGRATION)[0]
            mfi = frames_ok(vals[mi], f"{where} migration entries")
            if len(mfi) == len(mi):
                reach[mfi] = True
                notmig = ~np.isin(mfi + PFN_BASE, migrating)
                if notmig.any():
                    out.append(f"{where}: migration entries for frames not under migration: "
                               f"{_fmt(mfi[notmig] + PFN_BASE)}")
            # file pages: mapped only at their own index of their own object
            for idx, pfns, fis, what in ((real_idx, real_pf, fi, "present"),
                                         (mi, vals[mi], mfi, "migration")):
                if len(fis) != len(pfns) or not len(pfns):
                    continue
                isanon = anon[fis]
                if obj is None and (~isanon).any():
                    out.append(f"{where}: {what} PTEs map non-anonymous frames "
                               f"{_fmt(pfns[~isanon])} in an anonymous VMA")
                if vma.shared and isanon.any():
                    out.append(f"{where}: {what} PTEs map anonymous frames "
                               f"{_fmt(pfns[isanon])} in a shared VMA")
                if obj is not None:
                    fidx = vma.pgoff + idx[~isanon]
                    fp = pfns[~isanon]
                    inside = fidx < len(obj.cache)
                    expect = np.full(len(fp), -1, dtype=np.int64)
                    expect[inside] = obj.cache[fidx[inside]].astype(np.int64)
                    want = (fp | U64(PC_PAGE << PC_SHIFT)).astype(np.int64)
                    wrong = expect != want
                    if wrong.any():
                        j = np.nonzero(wrong)[0][:4]
                        out.append(
                            f"{where}: {what} PTEs at pages {idx[~isanon][j]} map file frames "
                            f"{_fmt(fp[j])} that are not the object's pages at those indices "
                            f"(cache: {_fmt(expect[j])})")
            # swap entries
            si = np.nonzero(kinds == pte.SWAP)[0]
            if len(si) and vma.shared:
                out.append(f"{where}: swap PTEs in a shared VMA at {si[:8]}")
            slots = vals[si].astype(np.int64)
            bad = (slots < 1) | (slots >= nsl)
            if bad.any():
                out.append(f"{where}: swap PTEs with bad slots {_fmt(slots[bad])}")
            np.add.at(swrefs, slots[~bad], 1)
            # markers
            mk = vals[kinds == pte.MARKER]
            if ((mk == 0) | ((mk & ~U64(MARKER_BITS)) != 0)).any():
                out.append(f"{where}: markers with unknown bits {_fmt(mk)}")

    for obj in k.inodes:
        where = f"inode {obj.ino} ({obj.kind})"
        want = refs[id(obj)] + (1 if obj.sysv_id >= 0 else 0)
        if obj.refs != want:
            out.append(f"{where}: refs {obj.refs}, but {want} VMAs/fds/ids hold it")
        if obj.refs <= 0 and obj.is_shmem:
            out.append(f"{where}: unreferenced shmem inode not evicted")
        ck = (obj.cache >> U64(PC_SHIFT)).astype(np.uint8)
        cv = obj.cache & U64(PC_VALUE)
        if not np.isin(ck, [PC_HOLE, PC_PAGE, PC_SWAP]).all() or (cv[ck == PC_HOLE] != 0).any():
            out.append(f"{where}: malformed page-cache entries")
        pages = cv[ck == PC_PAGE]
        fi = frames_ok(pages, f"{where} page cache")
        if len(fi) == len(pages):
            reach[fi] = True
            if anon[fi].any():
                out.append(f"{where}: anonymous frames in the page cache {_fmt(pages[anon[fi]])}")
            if (swapslot[fi] != 0).any():
                out.append(f"{where}: page-cache pages also in the swap cache "
                           f"{_fmt(pages[swapslot[fi] != 0])}")
        slots = cv[ck == PC_SWAP].astype(np.int64)
        bad = (slots < 1) | (slots >= nsl)
        if bad.any():
            out.append(f"{where}: value entries with bad slots {_fmt(slots[bad])}")
        np.add.at(swrefs, slots[~bad], 1)

    # a page belongs to at most one page-cache index
    allpages = np.concatenate(
        [(o.cache & U64(PC_VALUE))[(o.cache >> U64(PC_SHIFT)) == U64(PC_PAGE)] for o in k.inodes]
        + [np.zeros(0, dtype=U64)])
    uniq, cnt = np.unique(allpages, return_counts=True)
    if (cnt > 1).any():
        out.append(f"frames in the page cache at more than one index: {_fmt(uniq[cnt > 1])}")

    # the swap cache
    cs = np.nonzero(cache)[0]
    cfi = frames_ok(cache[cs].astype(U64), "swap cache")
    if len(cfi) == len(cs):
        reach[cfi] = True
        asym = swapslot[cfi] != cs
        if asym.any():
            out.append(f"swap cache slots {_fmt(cs[asym])} hold frames whose swapslot is "
                       f"{_fmt(swapslot[cfi[asym]])}")
    linked = np.nonzero(swapslot)[0]
    lslots = swapslot[linked]
    bad = (lslots < 1) | (lslots >= nsl)
    if bad.any():
        out.append(f"frames {_fmt(linked[bad] + PFN_BASE)} name bad swap slots")
    else:
        asym = cache[lslots] != linked + PFN_BASE
        if asym.any():
            out.append(f"frames {_fmt(linked[asym] + PFN_BASE)} name swap slots "
                       f"{_fmt(lslots[asym])} whose swap cache holds "
                       f"{_fmt(cache[lslots[asym]])}")

    # mapcounts and reachability
    wrong = used & (mapcount != mapped)
    if wrong.any():
        j = np.nonzero(wrong)[0][:4]
        out.append(f"mapcount of frames {_fmt(j + PFN_BASE)} is {mapcount[j].tolist()}, but "
                   f"{mapped[j].tolist()} present PTEs map them")
    if (mapcount < 0).any():
        out.append(f"negative mapcounts at {_fmt(np.nonzero(mapcount < 0)[0] + PFN_BASE)}")
    if (~used & (mapcount != 0)).any():
        out.append("freed frames with a mapcount")
    # migrate_pages holds its own reference on the folios it is moving
    inrange = migrating[(migrating >= PFN_BASE) & (migrating < PFN_BASE + nfr)]
    reach[inrange - PFN_BASE] = True
    leaked = np.nonzero(used & ~reach)[0] + PFN_BASE
    if len(leaked):
        out.append(f"leaked frames (allocated, unreachable): {_fmt(leaked)}")
    if fr.allocated != int(used.sum()):
        out.append(f"frames.allocated is {fr.allocated}, {int(used.sum())} frames are in use")
    for pfn in migrating:
        i = pfn - PFN_BASE
        if not (0 <= i < nfr) or not used[i]:
            out.append(f"frame {pfn:#x} under migration was freed")
        elif mapcount[i] or mapped[i]:
            out.append(f"frame {pfn:#x} under migration is mapped by {mapped[i]} present PTEs")

    # swap slots
    if nsl and (count[0] != 0 or cache[0] != 0):
        out.append("swap slot 0 (the header) is in use")
    wrong = np.nonzero(count != swrefs)[0]
    if len(wrong):
        j = wrong[:4]
        out.append(f"swap count of slots {j.tolist()} is {count[j].tolist()}, but "
                   f"{swrefs[j].tolist()} swap PTEs / value entries refer to them")
    if (count < 0).any():
        out.append(f"negative swap counts at slots {np.nonzero(count < 0)[0][:8].tolist()}")
    allocated = int(((count > 0) | (cache != 0)).sum())
    if sw.in_use != allocated:
        out.append(f"swap.in_use is {sw.in_use}, {allocated} slots have a count or a "
                   "swap-cache folio")
    # A slot may outlive its last swap entry only while its swap-cache folio is mapped
    # (SWAP_HAS_CACHE after a read fault's do_swap_page) or being migrated; unmapped, it
    # would have been freed.
    held = np.zeros(nsl, dtype=bool)
    hc = np.nonzero(cache)[0]
    hfi = cache[hc].astype(np.int64) - PFN_BASE
    ok = (hfi >= 0) & (hfi < nfr)
    held[hc[ok]] = (mapcount[hfi[ok]] > 0) | np.isin(hfi[ok] + PFN_BASE, migrating)
    orphan = (cache != 0) & (count <= 0) & ~held
    if orphan.any():
        out.append(f"swap-cache pages on freed slots {np.nonzero(orphan)[0][:8].tolist()}")
    if not sw.enabled and nsl > 1:
        out.append("swap slots allocated while swap is off")
    return out


def assert_invariants(k: Kernel, context: str = "") -> None:
    found = violations(k)
    if found:
        raise AssertionError(f"model invariants broken {context}:\n  " + "\n  ".join(found))
