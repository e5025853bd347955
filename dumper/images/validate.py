"""The whole-set check restore and verify run before they create or allocate anything.

ImageSet.open validates each image as it is read (framing, fields, VMAs, pagemaps, objects,
COW records, the manifest). This adds what only the whole set shows, and what a restorer
needs bounded before it starts (criu's restore likewise reads and checks every image before
the first fork, prepare_task_entries .. prepare_pstree, cr-restore.c):

- every image file of the set decodes by the codec table (any kind, new ones included), so a
  corrupt image a reader never opened (a thread's core, an ids image) is refused too;
- pids and thread ids: non-zero, unique across the set, each task its own first thread, and
  a core image for every thread;
- references: every VMA's object or file is held by the set, each COW run resolves to stored
  pages without a cycle or a chain over the reader's depth;
- sizes: the pages a restore would map (VMAs and shared objects: the model keeps 8 bytes per
  page) within a budget;
- verify: the truth digests are the ones the host computes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from dumper.images import codec, safeio
from dumper.images import magic as M
from dumper.images.errors import ImageError
from dumper.images.manifest import listed
from dumper.images.reader import _COW_DEPTH, ImageSet
from dumper.kabi import PAGE_SIZE

# Pages of mappings and objects a restore or verify takes on: 64 GiB, the largest tree the
# model is benchmarked with (bench/model_scale.py); its page tables cost 8 bytes a page.
MAX_RESTORE_PAGES = 1 << 24


def check_images(path: Path) -> None:
    """Decode every image file of the set whose magic the codec knows (pages images aside)."""
    for name in sorted(os.listdir(path)):
        if not name.endswith(".img") or not listed(name):
            continue
        try:
            with safeio.open_image(path / name) as f:
                kind = codec.read_header(f, str(path / name))
                for _ in codec.iter_entries(f, str(path / name), kind):
                    pass  # streamed: a truth image may be large
        except ImageError as e:
            if e.message.startswith("unknown magic") and not (path / M.DUMPER).exists():
                continue  # a CRIU image type dumper does not read (tty, sk-inet, ...)
            raise


def check_tasks(s: ImageSet) -> None:
    """Pids and thread ids across the set."""
    pstree = s.path / M.PSTREE
    seen: dict[int, int] = {}
    for t in s.tasks.values():
        # pgid or sid 0: its leader is outside the dumped pid namespace (do_task_stat prints
        # task_session_nr_ns, 0 when not visible); a restore on Linux asks --shell-job for it
        if t.threads[0] != t.pid:
            raise ImageError(pstree, f"task {t.pid}: its first thread is {t.threads[0]}")
        for tid in t.threads:
            if tid == 0 or seen.setdefault(tid, t.pid) != t.pid or t.threads.count(tid) > 1:
                raise ImageError(pstree, f"task {t.pid}: thread id {tid} is zero or not unique")
            if not os.path.lexists(s.path / M.core(tid)):
                raise ImageError(s.path / M.core(tid), f"missing: thread {tid} of task {t.pid}")


def _held(s: ImageSet, pid: int, lo: int, hi: int, depth: int) -> str:
    """Why [lo, hi) of task pid does not resolve to stored pages, or "" (run by run)."""
    t = s.tasks[pid]
    spans = sorted([(r.vaddr, r.end(), None) for r in t.pagemap if r.present]
                   + [(c.vaddr, c.vaddr + c.nr_pages * PAGE_SIZE, c) for c in t.cow],
                   key=lambda x: x[0])
    pos = lo
    for a, b, c in spans:
        if b <= pos or a >= hi:
            continue
        if a > pos:
            break
        end = min(b, hi)
        if c is not None:
            if depth == 0:
                return f"a COW chain deeper than {_COW_DEPTH} (or a cycle) at {pos:#x}"
            why = _held(s, c.src_pid, c.src_vaddr + pos - c.vaddr,
                        c.src_vaddr + end - c.vaddr, depth - 1)
            if why:
                return why
        pos = end
        if pos >= hi:
            return ""
    return f"task {pid} holds no page at {pos:#x}"


def check_references(s: ImageSet) -> None:
    """VMAs' objects and files, COW chains."""
    for t in s.tasks.values():
        for v in t.vmas:
            if v.obj is not None and v.obj not in s.objects:
                raise ImageError(s.path / M.mm(t.pid), f"VMA {v.start:#x} maps object "
                                 f"{v.obj}, which the set does not hold")
            if v.obj is None and v.path:
                _check_referenced_file(s.path / M.mm(t.pid), v.start, v.path)
        for c in t.cow:
            why = _held(s, c.src_pid, c.src_vaddr, c.src_vaddr + c.nr_pages * PAGE_SIZE,
                        _COW_DEPTH - 1)
            if why:
                raise ImageError(s.path / M.cow(t.pid),
                                 f"COW run {c.vaddr:#x}+{c.nr_pages} pages: {why}")


def _check_referenced_file(mm: Path, start: int, path: str) -> None:
    """A regular file a VMA references is read by verify (its pages, as a mapping reads
    them): what the image names there must not be a FIFO or a device, or the read hangs."""
    try:
        st = os.stat(path.removesuffix(" (deleted)"))
    except OSError:
        return  # gone: its pages read as unreadable, nothing is opened
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(mm, f"VMA {start:#x} maps {path}, which is a "
                         f"{safeio.file_kind(st.st_mode)}, not a regular file")


def check_sizes(s: ImageSet, budget: int = MAX_RESTORE_PAGES, live: bool = False) -> None:
    """What a restore would map, against the budget (ImageSet.open has bounded each VMA by the
    truth, where there is one). live: a verify of the live tree, which builds its arrays one
    VMA at a time, bounds the largest VMA instead of the sum."""
    # A set with every task's truth has had each task's VMAs bounded by the digests it
    # holds on disk (ImageSet.open), and restore and verify build their per-page arrays one
    # VMA at a time: only the largest VMA matters then (the 64 GiB pipeline tree maps 288 GiB
    # across its tasks, every page of it recorded).
    truthful = bool(s.tasks) and all(t in s.truths for t in s.tasks)
    if live or truthful:
        for o in s.objects.values():  # a restore creates each object whole
            if not live and -(-o.size // PAGE_SIZE) > budget:
                raise ImageError(s.path / M.OBJECTS, f"object {o.shmid} of {o.size} bytes is "
                                 f"more than the {budget} pages a restore takes on")
        for t in s.tasks.values():
            for v in t.vmas:
                if v.npages > budget:
                    raise ImageError(s.path / M.mm(t.pid), f"VMA {v.start:#x} spans "
                                     f"{v.npages} pages, more than the {budget} verify takes on")
        return
    total = sum(-(-o.size // PAGE_SIZE) for o in s.objects.values())
    total += sum(v.npages for t in s.tasks.values() for v in t.vmas)
    if total > budget:
        raise ImageError(s.path, f"maps {total} pages of VMAs and objects, more than the "
                         f"{budget} a restore or verify takes on")


def check_set(s: ImageSet, budget: int = MAX_RESTORE_PAGES, live: bool = False) -> None:
    """Everything above: call before a restore or verify creates or allocates anything
    (once per opened set: restore --verify runs it for both)."""
    if s.checked_whole:
        return
    check_images(s.path)
    check_tasks(s)
    check_references(s)
    check_sizes(s, budget, live)
    s.checked_whole = True


def check_regular_files(s: ImageSet) -> None:
    """A restore cannot map a regular file the set references but does not hold."""
    for t in s.tasks.values():
        for v in t.vmas:
            if v.obj is None and v.path:
                raise ImageError(s.path / M.mm(t.pid), f"VMA {v.start:#x} maps the regular "
                                 f"file {v.path}, which the set references but does not hold")


def check_for_restore(s: ImageSet, maps_files: bool = False) -> None:
    """check_set, and, for a target that cannot map files (the model), no VMA that needs a
    regular file the set references; a live target maps them from their paths (checking
    each is the one dumped)."""
    check_set(s)
    if not maps_files:
        check_regular_files(s)


def check_for_verify(s: ImageSet, host: Any) -> None:
    """check_set, and truth digests of the kind host.truth() returns."""
    check_set(s)
    algos = {t.algo for t in s.truths.values()}
    if algos and algos != {host.truth_algo}:
        raise ImageError(s.path, f"truth digests are {', '.join(sorted(algos))}, but this "
                         f"host digests with {host.truth_algo}")


def model_profile(s: ImageSet):
    """The built-in kernel profile a model set names. Never load_profile's file path: an image
    set must not make dumper run code (dumper.img's profile is data, and a name)."""
    from dumper.model.kernels import PROFILES

    name = s.meta.profile if s.meta is not None else ""
    if name not in PROFILES:
        raise ImageError(s.path / M.DUMPER, f"profile {name!r} is not a built-in kernel "
                         f"profile ({', '.join(PROFILES)}); a set's profile is never loaded "
                         "from a file")
    return PROFILES[name]
