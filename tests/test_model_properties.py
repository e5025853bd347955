"""Hypothesis property tests of the model over random operation programs (issue 2, "Tests").

A program is a kernel profile, a swap configuration (on/off, synchronous zram-like or
asynchronous swapfile-like) and a list of abstract operations over a random process tree: a
root that maps a few regions of 1-40 pages (private anon, shared anon, a memfd mapped shared,
a memfd mapped private), then forks, exits, maps, passes fds (SCM_RIGHTS), unmaps, moves,
writes, reads (fault-around), MADV_DONTNEED / PAGEOUT / REMOVE / GUARD_INSTALL /
POPULATE_(READ|WRITE), pwrite and pread through fds, punches holes, zaps, reclaims (both
stages), drops the swap cache and migrates (both stages). Operations name tasks, VMAs and
page ranges by small integers taken modulo what exists, so every program runs and shrinks
well. Operations the kernel refuses raise ModelError and are no-ops.

Properties, one test each:
1. observing (pagemap with and without PFNs, mincore, lseek walks, maps, smaps, map_files,
   the observable memory itself) changes no state at all and no observable memory;
2. a child's observable memory (and its maps) equals its parent's right after fork;
3. every operation changes observable memory exactly as the kernel would: reclaim, swap-in,
   migration, fault-around, pageout and swap-cache drops change nothing; a write changes the
   written pages of the writer's view and, for a shared mapping, every view that reads those
   object pages; and so on for the others (see ``expected_pages``);
4. the state's internal invariants (tests/modelinvariants.py) hold after every step, and a
   refused operation leaves the state unchanged (a read faulting on a guard page included);
5. under every profile, pagemap words, mincore vectors, lseek answers and smaps decode
   consistently with the state, using dumper.kabi's constants.

Each failing program prints the Model calls it made, ready to paste into a regression test.
The model bugs found this way are kept at the end as regression tests (all fixed: 492b378 and
the swap-readahead fix); ``known_bug`` is where a guard goes that keeps the random programs off
a newly found bug, with an xfail(strict=True) test, until the model is fixed.

DUMPER_PROPERTY_EXAMPLES raises the number of programs per property (default 50);
DUMPER_PROPERTY_RANDOM=1 explores new programs instead of the fixed derandomized set.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelinvariants import violations

from dumper.kabi import (
    MADV_COLD,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_NOHUGEPAGE,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_REMOVE,
    MADV_WIPEONFORK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PM_FILE,
    PM_GUARD_REGION,
    PM_MMAP_EXCLUSIVE,
    PM_PFRAME_MASK,
    PM_PRESENT,
    PM_SOFT_DIRTY,
    PM_SWAP,
    PM_UFFD_WP,
    PTE_MARKER_GUARD,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
    SEEK_DATA,
    SEEK_HOLE,
    SWP_MIGRATION_READ,
    SWP_MIGRATION_READ_EXCLUSIVE,
    SWP_MIGRATION_WRITE,
    SWP_PTE_MARKER,
    decode_frame,
)
from dumper.model import PROFILES, Model, ModelError, observe, pte
from dumper.model.content import UNREADABLE
from dumper.model.shmem import object_cids
from dumper.model.state import (
    F_ANON,
    F_DIRTY,
    F_LAZYFREE,
    F_UPTODATE,
    F_USED,
    PC_PAGE,
    PC_SHIFT,
    PC_SWAP,
    PC_VALUE,
    PFN_BASE,
    ZERO_PFN,
    Kernel,
)
from dumper.model.thp import HUGE_ZERO_PFN

PAGE = PAGE_SIZE
U64 = np.uint64
EXAMPLES = int(os.environ.get("DUMPER_PROPERTY_EXAMPLES", "50"))
RANDOM = os.environ.get("DUMPER_PROPERTY_RANDOM", "") not in ("", "0")

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------------------
# Programs
# ------------------------------------------------------------------------------------------

SETUP_KINDS = ("anon", "shared", "memfd", "memfd-private")
MAP_KINDS = SETUP_KINDS + ("fd-shared", "fd-private", "thp")
THP_PAGES = 1024  # 4 MiB under MADV_HUGEPAGE: at least one whole aligned PMD
FREE = (None, True, False)  # m.reclaim(free=...): the device's default, both stages, stage 1


@dataclass
class Program:
    profile: str
    swap: bool
    sync: bool
    setup: list[tuple]
    ops: list[tuple]

    def __repr__(self) -> str:
        ops = "".join(f"\n    {op!r}," for op in self.ops)
        return (f"Program(profile={self.profile!r}, swap={self.swap}, sync={self.sync},"
                f"\n  setup={self.setup!r},\n  ops=[{ops}\n  ])")


IDX = st.integers(0, 15)
NPAGES = st.integers(1, 40)
RANGE = st.one_of(st.none(), st.tuples(st.integers(0, 39), st.integers(0, 39)))

OPS = st.one_of(
    st.tuples(st.just("read"), IDX, IDX, RANGE),
    st.tuples(st.just("write"), IDX, IDX, RANGE),
    st.tuples(st.just("fork"), IDX),
    st.tuples(st.just("reclaim"), IDX, IDX, RANGE, st.sampled_from(FREE)),
    st.tuples(st.just("swapcache_drop")),
    st.tuples(st.just("migrate"), IDX, IDX, RANGE, st.booleans()),
    st.tuples(st.just("migrate_finish")),
    st.tuples(st.just("pageout"), IDX, IDX, RANGE),
    st.tuples(st.just("dontneed"), IDX, IDX, RANGE),
    st.tuples(st.just("zap"), IDX, IDX, RANGE),
    st.tuples(st.just("remove"), IDX, IDX, RANGE),
    st.tuples(st.just("punch"), IDX, IDX, RANGE),
    st.tuples(st.just("pwrite"), IDX, IDX, RANGE),
    st.tuples(st.just("pread"), IDX, IDX, RANGE),
    st.tuples(st.just("populate"), IDX, IDX, RANGE, st.booleans()),
    st.tuples(st.just("guard"), IDX, IDX, RANGE),
    st.tuples(st.just("munmap"), IDX, IDX, RANGE),
    st.tuples(st.just("mremap"), IDX, IDX, RANGE),
    st.tuples(st.just("exit"), IDX),
    st.tuples(st.just("mmap"), IDX, st.sampled_from(MAP_KINDS), NPAGES, IDX),
    st.tuples(st.just("send_fd"), IDX, IDX, IDX),
    st.tuples(st.just("write"), IDX, IDX, RANGE),
    st.tuples(st.just("read"), IDX, IDX, RANGE),
    st.tuples(st.just("fork"), IDX),
    st.tuples(st.just("mprotect"), IDX, IDX, RANGE, st.sampled_from((0, 1, 3))),
    st.tuples(st.just("resize"), IDX, IDX, RANGE, NPAGES),
    st.tuples(st.just("free"), IDX, IDX, RANGE),
    st.tuples(st.just("cold"), IDX, IDX, RANGE),
    st.tuples(st.just("vmaflag"), IDX, IDX, RANGE,
              st.sampled_from(("dontfork", "dofork", "wipeonfork", "keeponfork", "hugepage",
                               "nohugepage"))),
)
VMA_FLAG_ADVICE = {"dontfork": MADV_DONTFORK, "dofork": MADV_DOFORK,
                   "wipeonfork": MADV_WIPEONFORK, "keeponfork": MADV_KEEPONFORK,
                   "hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE}


@st.composite
def op_lists(draw) -> list[tuple]:
    """0-40 operations, their number drawn uniformly (st.lists favours short lists)."""
    n = draw(st.integers(0, 40))
    return draw(st.lists(OPS, min_size=n, max_size=n))


PROGRAMS = st.builds(
    Program,
    profile=st.sampled_from(sorted(PROFILES)),
    swap=st.booleans(),
    sync=st.booleans(),
    setup=st.lists(st.tuples(st.sampled_from(SETUP_KINDS), NPAGES), min_size=1, max_size=4),
    ops=op_lists(),
)


@dataclass
class Step:
    """One resolved operation: the concrete Model calls and what they touch."""

    name: str
    code: str  # the Model calls, as Python
    run: object  # () -> result
    pid: int = 0
    vma: object = None  # the Vma the range lies in (before the step)
    addr: int = 0
    npages: int = 0
    lo: int = 0  # page index of addr in vma
    obj: object = None  # the object a pwrite/punch/mmap of an fd acts on
    olo: int = 0  # object page range [olo, ohi)
    ohi: int = 0
    cids: np.ndarray | None = None  # contents a write stores
    kind: str = ""  # mmap kind
    result: object = None
    error: ModelError | None = None
    extra: dict = field(default_factory=dict)


class Runner:
    """Runs a Program on a fresh Model, one Step at a time, keeping a pasteable log."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.m = Model(prog.profile, swap=prog.swap, swap_sync=prog.sync)
        self.root = self.m.spawn("root")
        self.log = [f"m = Model({prog.profile!r}, swap={prog.swap}, swap_sync={prog.sync})",
                    f"a = m.spawn('root')  # pid {self.root}"]
        self.seed = 1 << 48  # our writes' contents, disjoint from the model's own seeds
        self.nobj = 0

    # -- choosing targets -------------------------------------------------------------------
    def pids(self) -> list[int]:
        return sorted(self.m.k.tasks)

    def pick_pid(self, i: int) -> int:
        pids = self.pids()
        return pids[i % len(pids)]

    def pick_range(self, pid: int, v: int, rng) -> tuple | None:
        vmas = self.m.k.task(pid).vmas
        if not vmas:
            return None
        vma = vmas[v % len(vmas)]
        if rng is None:
            lo, n = 0, vma.npages
        else:
            lo = rng[0] % vma.npages
            n = 1 + rng[1] % (vma.npages - lo)
        return vma, lo, n

    def pick_fd(self, pid: int, i: int) -> int | None:
        fds = sorted(self.m.k.task(pid).fds)
        return fds[i % len(fds)] if fds else None

    def fresh(self, n: int) -> np.ndarray:
        cids = np.arange(self.seed, self.seed + n, dtype=U64)
        self.seed += n
        return cids

    # -- resolving an abstract op to Model calls -------------------------------------------
    def resolve(self, op: tuple) -> Step | None:
        m = self.m
        name = op[0]
        if name == "swapcache_drop":
            return Step(name, "m.swapcache_drop()", m.swapcache_drop)
        if name == "migrate_finish":
            return Step(name, "m.migrate_finish()", m.migrate_finish)
        if name == "fork":
            pid = self.pick_pid(op[1])
            return Step(name, f"m.fork({pid})", lambda: m.fork(pid), pid=pid)
        if name == "exit":
            others = [p for p in self.pids() if p != self.root]
            if not others:
                return None
            pid = others[op[1] % len(others)]
            return Step(name, f"m.exit({pid})", lambda: m.exit(pid), pid=pid)
        if name == "mmap":
            return self.resolve_mmap(self.pick_pid(op[1]), op[2], op[3], op[4])
        if name == "send_fd":
            src = self.pick_pid(op[1])
            fd = self.pick_fd(src, op[2])
            dst = self.pick_pid(op[3])
            if fd is None:
                return None
            return Step(name, f"m.send_fd({src}, {fd}, {dst})", lambda: m.send_fd(src, fd, dst),
                        pid=dst)
        if name in ("punch", "pwrite", "pread"):
            pid = self.pick_pid(op[1])
            fd = self.pick_fd(pid, op[2])
            if fd is None:
                return None
            obj = m.k.task(pid).fds[fd]
            if obj.npages == 0:
                return None
            rng = op[3]
            lo, n = (0, obj.npages) if rng is None else (
                rng[0] % obj.npages, 1 + rng[1] % (obj.npages - rng[0] % obj.npages))
            off, length = lo * PAGE, n * PAGE
            if name == "punch":
                code = f"m.fallocate({pid}, {fd}, {lo} * PAGE, {n} * PAGE, punch=True)"
                run = lambda: m.fallocate(pid, fd, off, length, punch=True)  # noqa: E731
                return Step(name, code, run, pid=pid, obj=obj, olo=lo, ohi=lo + n)
            if name == "pread":
                code = f"m.pread({pid}, {fd}, {lo} * PAGE, {n} * PAGE)"
                run = lambda: m.pread(pid, fd, off, length)  # noqa: E731
                return Step(name, code, run, pid=pid, obj=obj, olo=lo, ohi=lo + n)
            cids = self.fresh(n)
            data = np.repeat(cids, PAGE // 8).astype("<u8").tobytes()
            code = f"m.pwrite({pid}, {fd}, {lo} * PAGE, {n} * PAGE)"
            return Step(name, code, lambda: m.pwrite(pid, fd, off, length, data), pid=pid,
                        obj=obj, olo=lo, ohi=lo + n, cids=cids)
        # operations on a page range of one VMA
        pid = self.pick_pid(op[1])
        picked = self.pick_range(pid, op[2], op[3])
        if picked is None:
            return None
        vma, lo, n = picked
        addr = vma.start + lo * PAGE
        length = n * PAGE
        where = f"{pid}, {addr:#x}, {n} * PAGE"
        step = Step(name, "", None, pid=pid, vma=vma, addr=addr, npages=n, lo=lo)
        if name == "read":
            step.code, step.run = f"m.read({where})", lambda: m.read(pid, addr, length)
        elif name == "write":
            cids = self.fresh(n)
            data = np.repeat(cids, PAGE // 8).astype("<u8").tobytes()
            step.cids = cids
            step.code = f"m.write({where})"
            step.run = lambda: m.write(pid, addr, length, data)
        elif name == "reclaim":
            free = op[4]
            step.code = f"m.reclaim({where}, free={free})"
            step.run = lambda: m.reclaim(pid, addr, length, free=free)
        elif name == "populate":
            advice = MADV_POPULATE_WRITE if op[4] else MADV_POPULATE_READ
            label = "MADV_POPULATE_WRITE" if op[4] else "MADV_POPULATE_READ"
            step.code = f"m.madvise({where}, {label})"
            step.run = lambda: m.madvise(pid, addr, length, advice)
        elif name == "migrate":
            finish = op[4]
            step.code = f"m.migrate({where}, finish={finish})"
            step.run = lambda: m.migrate(pid, addr, length, finish=finish)
        elif name in ("pageout", "dontneed", "remove", "guard"):
            advice, label = {
                "pageout": (MADV_PAGEOUT, "MADV_PAGEOUT"),
                "dontneed": (MADV_DONTNEED, "MADV_DONTNEED"),
                "remove": (MADV_REMOVE, "MADV_REMOVE"),
                "guard": (MADV_GUARD_INSTALL, "MADV_GUARD_INSTALL"),
            }[name]
            step.code = f"m.madvise({where}, {label})"
            step.run = lambda: m.madvise(pid, addr, length, advice)
        elif name == "zap":
            step.code, step.run = f"m.zap({where})", lambda: m.zap(pid, addr, length)
        elif name == "munmap":
            step.code, step.run = f"m.munmap({where})", lambda: m.munmap(pid, addr, length)
        elif name == "mremap":
            step.code = f"m.mremap({where})"
            step.run = lambda: m.mremap(pid, addr, length)
        elif name == "mprotect":
            prot = op[4]
            step.code = f"m.mprotect({where}, {prot})"
            step.run = lambda: m.mprotect(pid, addr, length, prot)
        elif name == "resize":
            new = op[4]
            step.extra["new"] = new
            step.code = f"m.mremap({where}, new_length={new} * PAGE)"
            step.run = lambda: m.mremap(pid, addr, length, new_length=new * PAGE)
        elif name in ("free", "cold", "vmaflag"):
            advice, label = (VMA_FLAG_ADVICE[op[4]], f"MADV_{op[4].upper()}") \
                if name == "vmaflag" else {"free": (MADV_FREE, "MADV_FREE"),
                                           "cold": (MADV_COLD, "MADV_COLD")}[name]
            step.code = f"m.madvise({where}, {label})"
            step.run = lambda: m.madvise(pid, addr, length, advice)
        else:
            raise AssertionError(f"unknown op {op!r}")
        return step

    def resolve_mmap(self, pid: int, kind: str, npages: int, fdi: int) -> Step | None:
        m = self.m
        length = npages * PAGE
        if kind == "anon":
            return Step("mmap", f"m.mmap({pid}, {npages} * PAGE)", lambda: m.mmap(pid, length),
                        pid=pid, kind=kind, extra={"npages": npages})
        if kind == "thp":
            def run_thp():
                r = m.mmap(pid, THP_PAGES * PAGE)
                m.madvise(pid, r, THP_PAGES * PAGE, MADV_HUGEPAGE)
                return r

            return Step("mmap", f"r = m.mmap({pid}, {THP_PAGES} * PAGE)\n"
                        f"m.madvise({pid}, r, {THP_PAGES} * PAGE, MADV_HUGEPAGE)", run_thp,
                        pid=pid, kind=kind, extra={"npages": THP_PAGES})
        if kind == "shared":
            return Step("mmap", f"m.mmap({pid}, {npages} * PAGE, shared=True)",
                        lambda: m.mmap(pid, length, shared=True), pid=pid, kind=kind,
                        extra={"npages": npages})
        if kind in ("memfd", "memfd-private"):
            name = f"r{self.nobj}"
            self.nobj += 1
            shared = kind == "memfd"
            cids = self.fresh(npages)
            data = np.repeat(cids, PAGE // 8).astype("<u8").tobytes()
            step = Step("mmap", "", None, pid=pid, kind=kind, cids=cids,
                        extra={"npages": npages})

            def run():
                fd = m.memfd_create(pid, name, length)
                step.extra["fd"] = fd
                if not shared:  # give the private mapping something to read
                    m.pwrite(pid, fd, 0, length, data)
                return m.mmap(pid, length, shared=shared, fd=fd)

            step.run = run
            step.code = (f"fd = m.memfd_create({pid}, {name!r}, {npages} * PAGE)\n"
                         + ("" if shared else f"m.pwrite({pid}, fd, 0, {npages} * PAGE)\n")
                         + f"m.mmap({pid}, {npages} * PAGE, shared={shared}, fd=fd)")
            return step
        fd = self.pick_fd(pid, fdi)
        if fd is None:
            return None
        obj = m.k.task(pid).fds[fd]
        if obj.npages == 0:
            return None
        shared = kind == "fd-shared"
        olen = obj.npages * PAGE
        return Step("mmap", f"m.mmap({pid}, {obj.npages} * PAGE, shared={shared}, fd={fd})",
                    lambda: m.mmap(pid, olen, shared=shared, fd=fd), pid=pid, kind=kind,
                    obj=obj, olo=0, ohi=obj.npages)

    def execute(self, step: Step) -> None:
        try:
            step.result = step.run()
        except ModelError as exc:
            step.error = exc
        code = step.code
        if step.error is not None:
            code += f"  # {step.error.errno_name}"
        elif step.result is not None and not isinstance(step.result, bytes):
            code += f"  # -> {step.result:#x}" if step.name in ("mmap", "mremap") else \
                f"  # -> {step.result}"
        self.log.append(code)

    def where(self) -> str:
        return "\nafter:\n  " + "\n  ".join(self.log)


# ------------------------------------------------------------------------------------------
# Known model bugs: steps that would hit one are skipped (and logged), so the properties keep
# testing everything else. Each names its xfail(strict=True) regression test at the end of
# this file; once the model is fixed that test XPASSes (strict: fails), and its guard here
# goes with the xfail mark.
# ------------------------------------------------------------------------------------------


def known_bug(k: Kernel, step: Step) -> str | None:
    """The known model bug the step would hit, or None. None are open: the last one,
    test_swap_readahead_reads_the_faulting_page_once, was fixed in the model's do_swap_page
    (the readahead window brings the faulting slot in; do_swap_page now maps that folio)."""
    del k, step
    return None


class Hooks:
    """What a property does around each step (and at the end of a program)."""

    def before(self, r: Runner, step: Step):
        return None

    def after(self, r: Runner, step: Step, ctx) -> None:
        pass

    def end(self, r: Runner) -> None:
        pass


def run_program(prog: Program, hooks: Hooks) -> Runner:
    r = Runner(prog)
    ops = [("mmap", 0, kind, npages, 0) for kind, npages in prog.setup] + list(prog.ops)
    for op in ops:
        step = r.resolve(op)
        if step is None:
            continue
        bug = known_bug(r.m.k, step)
        if bug:
            r.log.append(f"# {step.code}  -- skipped: would hit known model bug {bug}")
            continue
        ctx = hooks.before(r, step)
        r.execute(step)
        hooks.after(r, step, ctx)
    hooks.end(r)
    return r


# ------------------------------------------------------------------------------------------
# Snapshots and observation
# ------------------------------------------------------------------------------------------


def deep_state(k: Kernel) -> dict[str, object]:
    """Every piece of model state, flattened to {path: value}: numpy arrays as bytes, shared
    references as ("ref", first path). k.counters (the cost of observing) is left out."""
    flat: dict[str, object] = {}
    seen: dict[int, str] = {}

    def walk(x, path: str) -> None:
        if x is None or isinstance(x, bool | int | float | str | bytes):
            flat[path] = x
        elif isinstance(x, np.ndarray):
            flat[path] = ("ndarray", x.dtype.str, x.shape, x.tobytes())
        elif isinstance(x, np.generic):
            flat[path] = ("np", x.dtype.str, x.item())
        elif isinstance(x, list | tuple):
            flat[path] = (type(x).__name__, len(x))
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, dict):
            flat[path] = ("dict", tuple(x))
            for key, v in x.items():
                walk(v, f"{path}[{key!r}]")
        elif isinstance(x, set | frozenset):
            flat[path] = ("set", tuple(sorted(x)))
        else:
            if id(x) in seen:
                flat[path] = ("ref", seen[id(x)])
                return
            seen[id(x)] = path
            attrs = vars(x)
            flat[path] = (type(x).__qualname__, tuple(sorted(attrs)))
            for key in sorted(attrs):
                if x is k and key == "counters":
                    continue
                walk(attrs[key], f"{path}.{key}")

    walk(k, "k")
    return flat


def state_diff(a: dict, b: dict, limit: int = 6) -> list[str]:
    out = []
    for path in sorted(set(a) | set(b)):
        if a.get(path, "<absent>") != b.get(path, "<absent>"):
            va, vb = a.get(path, "<absent>"), b.get(path, "<absent>")
            if isinstance(va, tuple) and va and va[0] == "ndarray" and isinstance(vb, tuple) \
                    and vb and vb[0] == "ndarray" and va[1:3] == vb[1:3]:
                xa = np.frombuffer(va[3], dtype=va[1])
                xb = np.frombuffer(vb[3], dtype=vb[1])
                idx = np.nonzero(xa != xb)[0][:6]
                out.append(f"{path}: at {idx.tolist()}: {xa[idx].tolist()} -> {xb[idx].tolist()}")
            else:
                out.append(f"{path}: {va!r:.120} -> {vb!r:.120}")
            if len(out) >= limit:
                break
    return out


def observable_pages(m: Model) -> dict[tuple[int, int], int]:
    """Ground truth, page by page: {(pid, address): content id} for every mapped page."""
    out = {}
    for pid in sorted(m.k.tasks):
        for start, cids in observe.observable_memory(m.k, pid):
            for i, c in enumerate(cids.tolist()):
                out[(pid, start + i * PAGE)] = c
    return out


def pages_diff(want: dict, got: dict, limit: int = 8) -> list[str]:
    out = []
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key, "<unmapped>"), got.get(key, "<unmapped>")
        if a != b:
            fa = f"{a:#x}" if isinstance(a, int) else a
            fb = f"{b:#x}" if isinstance(b, int) else b
            out.append(f"pid {key[0]} {key[1]:#x}: expected {fa}, got {fb}")
            if len(out) >= limit:
                break
    return out


def lseek_walk(k: Kernel, obj) -> list:
    """The SEEK_DATA / SEEK_HOLE extent walk a dumper makes over an object, from 0 to i_size
    (each answer is checked page by page against the state in property 5)."""
    answers = []
    off = 0
    while off < obj.size:
        try:
            data = observe.shmem_file_llseek(k, obj, off, SEEK_DATA)
        except ModelError as exc:
            answers.append(exc.errno_name)
            break
        off = observe.shmem_file_llseek(k, obj, data, SEEK_HOLE)
        answers.append((data, off))
    return answers


def observe_everything(m: Model) -> None:
    """Every observation a dumper makes, over every task, VMA and object."""
    k = m.k
    for pid in sorted(k.tasks):
        task = k.task(pid)
        m.maps(pid)
        m.smaps(pid)
        observe.observable_memory(k, pid)
        if task.vmas:
            lo, hi = task.vmas[0].start, task.vmas[-1].end
            m.pagemap(pid, lo - PAGE, hi - lo + 2 * PAGE)
            m.pagemap(pid, lo, hi - lo, show_pfn=False)
        for vma in task.vmas:
            n = vma.end - vma.start
            m.pagemap(pid, vma.start, n)
            m.pagemap(pid, vma.start, n, show_pfn=False)
            m.mincore(pid, vma.start, n)
            if UNREADABLE not in observe.observable_vma(k, vma).tolist():
                m.peek(pid, vma.start, n)
            with contextlib.suppress(ModelError):
                observe.map_files_link(k, pid, vma.start, vma.end)
        for fd, obj in task.fds.items():
            if obj.size:
                with contextlib.suppress(ModelError):
                    m.lseek(pid, fd, 0, SEEK_DATA)
                m.lseek(pid, fd, 0, SEEK_HOLE)
    for obj in list(k.inodes):
        lseek_walk(k, obj)


# ------------------------------------------------------------------------------------------
# Property 1: observing changes nothing
# ------------------------------------------------------------------------------------------


class ObservingChangesNothing(Hooks):
    def after(self, r: Runner, step: Step, ctx) -> None:
        k = r.m.k
        state, pages = deep_state(k), observable_pages(r.m)
        observe_everything(r.m)
        diff = state_diff(state, deep_state(k))
        assert not diff, "observing changed state:\n  " + "\n  ".join(diff) + r.where()
        diff = pages_diff(pages, observable_pages(r.m))
        assert not diff, "observing changed memory:\n  " + "\n  ".join(diff) + r.where()


@SETTINGS
@given(PROGRAMS)
def test_observing_never_changes_state_or_memory(prog):
    """pagemap (with and without PFNs), mincore, lseek walks, maps, smaps, map_files and the
    ground truth itself are reads: fs/proc/task_mmu.c and mm/mincore.c walk page tables under
    the lock without faulting, mapping_seek_hole_data walks the xarray without swapping in
    (Peter Xu and the man page in the thread; kernel.md §5)."""
    run_program(prog, ObservingChangesNothing())


# ------------------------------------------------------------------------------------------
# Property 2: a child reads what its parent reads
# ------------------------------------------------------------------------------------------


def task_view(m: Model, pid: int) -> list[tuple[int, list[int]]]:
    return [(start, cids.tolist()) for start, cids in observe.observable_memory(m.k, pid)]


class ForkCopiesMemory(Hooks):
    def __init__(self) -> None:
        self.forks = 0

    def after(self, r: Runner, step: Step, ctx) -> None:
        if step.name == "fork" and step.error is None:
            self.check(r, step.pid, step.result)

    def check(self, r: Runner, parent: int, child: int) -> None:
        m = r.m
        self.forks += 1
        # dup_mmap leaves VM_DONTCOPY VMAs out and gives VM_WIPEONFORK ones empty
        kept = [v for v in m.k.task(parent).vmas if not v.dontcopy]
        pv = [(v.start, [0] * v.npages if v.wipeonfork else observe.observable_vma(m.k, v)
               .tolist()) for v in kept]
        cv = task_view(m, child)
        assert [s for s, _ in pv] == [s for s, _ in cv], "child's VMAs differ" + r.where()
        for (start, a), (_, b) in zip(pv, cv, strict=True):
            diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
            assert not diff, (f"child {child} of {parent} reads differently at {start:#x} "
                              f"pages {diff[:8]}: {[hex(a[i]) for i in diff[:4]]} vs "
                              f"{[hex(b[i]) for i in diff[:4]]}" + r.where())
        assert "".join(observe.maps_line(v) + "\n" for v in kept) == m.maps(child), (
            "child's maps differ" + r.where())

    def end(self, r: Runner) -> None:
        for pid in r.pids():  # every task of the final tree forks once more
            r.log.append(f"m.fork({pid})")
            child = r.m.fork(pid)
            self.check(r, pid, child)


@SETTINGS
@given(PROGRAMS)
def test_child_reads_what_parent_reads_after_fork(prog):
    """dup_mmap copies every VMA; copy_page_range copies PTEs only where vma_needs_copy says so
    and a fault refills the rest from the same object (kernel.md §3), so right after fork the
    child's observable memory equals the parent's page for page."""
    run_program(prog, ForkCopiesMemory())


# ------------------------------------------------------------------------------------------
# Property 3: operations change observable memory exactly as the kernel does
# ------------------------------------------------------------------------------------------


def page_sources(k: Kernel) -> dict[tuple[int, int], tuple]:
    """Where each mapped page's bytes come from: ("obj", ino, index) when a read returns the
    object's page (a shared mapping, or a private file mapping not yet COW-broken), else a
    key of its own (private anonymous pages, COW copies, swap entries, the zero page)."""
    out = {}
    for pid in sorted(k.tasks):
        for vma in k.task(pid).vmas:
            kinds = pte.kinds(vma.ptes)
            vals = pte.values(vma.ptes)
            for i in range(vma.npages):
                addr = vma.start + i * PAGE
                own = ("own", pid, addr)
                if vma.obj is None:
                    out[(pid, addr)] = own
                    continue
                objkey = ("obj", vma.obj.ino, vma.pgoff + i)
                if vma.shared:
                    out[(pid, addr)] = objkey
                    continue
                kind, val = int(kinds[i]), int(vals[i])
                if kind in (pte.NONE, pte.MARKER):
                    out[(pid, addr)] = objkey
                elif kind in (pte.PRESENT, pte.MIGRATION) and val != ZERO_PFN and not (
                        k.frames.flags.a[val - PFN_BASE] & F_ANON):
                    out[(pid, addr)] = objkey  # the page-cache page itself
                else:
                    out[(pid, addr)] = own
    return out


def object_view(k: Kernel, obj, lo: int, hi: int) -> list[int]:
    cids = object_cids(k, obj, lo, hi)
    cids[np.arange(lo, hi) >= obj.npages] = U64(UNREADABLE)
    return cids.tolist()


class ExactEffects(Hooks):
    """Before each step: the observable memory, the page sources, and what the step's object
    pages read. After: compare with the expectation for that operation."""

    def before(self, r: Runner, step: Step):
        k = r.m.k
        ctx = {"pages": observable_pages(r.m), "sources": page_sources(k)}
        if step.name == "mmap" and step.obj is not None:
            ctx["objview"] = object_view(k, step.obj, 0, step.obj.npages)
        if step.vma is not None and step.vma.obj is not None:
            v = step.vma
            ctx["objview"] = object_view(k, v.obj, v.pgoff + step.lo,
                                         v.pgoff + step.lo + step.npages)
            if step.name == "resize":  # what the grown tail will read of the object
                lo = v.pgoff + step.lo + step.npages
                ctx["tailview"] = object_view(k, v.obj, lo, lo + max(0, step.extra["new"]
                                                                    - step.npages))
        if step.name == "free":
            ctx["ptes"] = step.vma.ptes[step.lo : step.lo + step.npages].copy()
        if step.name in ("reclaim", "pageout"):
            ctx["discard"] = lazyfree_discards(r.m, step)
        return ctx

    def after(self, r: Runner, step: Step, ctx) -> None:
        got = observable_pages(r.m)
        want, subset = expected_pages(r, step, ctx, got)
        if subset:  # a write that faulted part way: some prefix of the expected change
            before = ctx["pages"]
            bad = {key for key in set(got) | set(before)
                   if got.get(key) != before.get(key) and got.get(key) != want.get(key)}
            diff = [f"pid {p} {a:#x}: {before.get((p, a))} -> {got.get((p, a))}"
                    for p, a in sorted(bad)[:8]]
        else:
            diff = pages_diff(want, got)
        assert not diff, (f"{step.code} changed observable memory unlike the kernel:\n  "
                          + "\n  ".join(diff) + r.where())


def expected_pages(r: Runner, step: Step, ctx, got: dict) -> tuple[dict, bool]:
    """The observable memory the kernel would show after the step; True if only a subset of
    the change may have happened (an access that faulted part way)."""
    before, src = ctx["pages"], ctx["sources"]
    want = dict(before)
    name, pid = step.name, step.pid
    rng = [(pid, step.addr + i * PAGE) for i in range(step.npages)]
    if step.error is not None:
        if name == "write":
            expect_write(step, src, want)
            return want, True
        return want, False  # refused, or a read that faulted: nothing observable changed
    if name in ("read", "pread", "populate", "swapcache_drop", "migrate", "migrate_finish",
                "send_fd", "mprotect", "cold", "vmaflag"):
        return want, False
    if name in ("reclaim", "pageout"):  # move pages, except clean lazyfree ones: discarded
        for key in ctx["discard"]:
            want[key] = 0
        return want, False
    if name == "free":  # madvise_free_pte_range: swap entries and poison markers cleared
        kinds, vals = pte.kinds(ctx["ptes"]), pte.values(ctx["ptes"])
        gone = (kinds == pte.SWAP) | ((kinds == pte.MARKER) & (
            (vals & U64(PTE_MARKER_POISONED)) != 0))
        for j in np.nonzero(gone)[0]:
            want[rng[j]] = 0
        return want, False
    if name == "resize":
        new = step.extra["new"]
        moved = [want.pop(key) for key in rng]
        tail = [0] * max(0, new - step.npages) if step.vma.obj is None else ctx["tailview"]
        for i, cid in enumerate((moved + tail)[:new]):
            want[(pid, step.result + i * PAGE)] = cid
        return want, False
    if name in ("write", "pwrite"):
        expect_write(step, src, want)
    elif name in ("dontneed", "zap"):
        # zap_page_range_single: only the caller's PTEs; markers (guard) stay; a shared page
        # reads the object again, a private file page the object, an anonymous one zeros.
        for j, key in enumerate(rng):
            if want[key] == UNREADABLE or step.vma.shared:
                continue
            want[key] = 0 if step.vma.obj is None else ctx["objview"][j]
    elif name in ("remove", "punch"):
        # shmem_fallocate(PUNCH_HOLE): every view of those object pages reads zeros (private
        # COW copies are kept: unmap_mapping_range with even_cows=0).
        if name == "remove":
            obj, lo = step.vma.obj, step.vma.pgoff + step.lo
            hi = lo + step.npages
        else:
            obj, lo, hi = step.obj, step.olo, step.ohi
        punched = {("obj", obj.ino, i) for i in range(lo, hi)}
        for key, s in src.items():
            if s in punched and want[key] != UNREADABLE:
                want[key] = 0
    elif name == "guard":
        for key in rng:  # MADV_GUARD_INSTALL: the caller's range faults (SIGSEGV) on access
            want[key] = UNREADABLE
    elif name == "munmap":
        for key in rng:
            del want[key]
    elif name == "mremap":
        for i, key in enumerate(rng):
            want[(pid, step.result + i * PAGE)] = want.pop(key)
    elif name == "exit":
        for key in [key for key in want if key[0] == pid]:
            del want[key]
    elif name == "fork":  # the parent and everyone else unchanged (the child: property 2)
        for key, val in got.items():
            if key[0] == step.result:
                want[key] = val
    elif name == "mmap":
        # a new anonymous mapping or a new memfd reads zeros; a memfd given contents, or an
        # existing object mapped whole, reads what the object held before the mmap
        if step.kind in ("anon", "shared", "memfd", "thp"):
            view = [0] * step.extra["npages"]
        elif step.kind == "memfd-private":
            view = step.cids.tolist()
        else:
            view = ctx["objview"]
        for i, cid in enumerate(view):
            want[(pid, step.result + i * PAGE)] = cid
    else:
        raise AssertionError(f"no expectation for {name}")
    return want, False


def lazyfree_discards(m: Model, step: Step) -> list[tuple[int, int]]:
    """The pages a reclaim or MADV_PAGEOUT step will discard: every mapping of a clean
    lazyfree frame among the ones it takes (reclaim: those the range maps; pageout: those
    mapped once, of private memory or a file the caller may page out)."""
    k = m.k
    ptes = step.vma.ptes[step.lo : step.lo + step.npages]
    pfns = pte.values(ptes[pte.kinds(ptes) == pte.PRESENT])
    pfns = pfns[pfns != U64(ZERO_PFN)]
    fi = pfns.astype(np.int64) - PFN_BASE
    if step.name == "pageout":
        fi = fi[k.frames.mapcount.a[fi] == 1]
    flags = k.frames.flags.a[fi]
    lazy = set((fi[((flags & F_LAZYFREE) != 0) & ((flags & F_DIRTY) == 0)] + PFN_BASE).tolist())
    out = []
    for pid in sorted(k.tasks):
        for vma in k.task(pid).vmas:
            kinds, vals = pte.kinds(vma.ptes), pte.values(vma.ptes)
            for i in np.nonzero(kinds == pte.PRESENT)[0]:
                if int(vals[i]) in lazy:
                    out.append((pid, vma.start + int(i) * PAGE))
    return out


def expect_write(step: Step, src: dict, want: dict) -> None:
    """A write stores step.cids: into the writer's own pages of a private mapping (COW), or
    into the object's pages of a shared mapping / the fd, which every view of them reads."""
    if step.name == "pwrite":
        obj, lo = step.obj, step.olo
    elif step.vma.shared:
        obj, lo = step.vma.obj, step.vma.pgoff + step.lo
    else:
        for j in range(step.npages):
            want[(step.pid, step.addr + j * PAGE)] = int(step.cids[j])
        return
    new = {("obj", obj.ino, lo + j): int(c) for j, c in enumerate(step.cids)}
    for key, s in src.items():
        if s in new and want[key] != UNREADABLE:
            want[key] = new[s]


@SETTINGS
@given(PROGRAMS)
def test_operations_change_observable_memory_exactly(prog):
    """Reclaim (shrink_folio_list, both stages), swap-in (do_swap_page, shmem_swapin_folio),
    NUMA migration (try_to_migrate / remove_migration_ptes), fault-around (filemap_map_pages),
    MADV_PAGEOUT and swap-cache release move pages, never change them; a write changes
    exactly the written pages of the writer's view and, through a shared mapping or the fd,
    every view of those object pages (MAP_SHARED semantics; private views until COW)."""
    run_program(prog, ExactEffects())


# ------------------------------------------------------------------------------------------
# Property 4: internal invariants after every step; refusals change nothing
# ------------------------------------------------------------------------------------------


class Invariants(Hooks):
    def before(self, r: Runner, step: Step):
        guard_read = step.name in ("read", "populate") and step.vma.ptes[step.lo] == U64(
            pte.make(pte.MARKER, PTE_MARKER_GUARD))
        return deep_state(r.m.k), guard_read

    def after(self, r: Runner, step: Step, ctx) -> None:
        found = violations(r.m.k)
        assert not found, "invariants broken:\n  " + "\n  ".join(found) + r.where()
        state, guard_read = ctx
        if guard_read:
            assert step.error is not None and step.error.errno_name == "SIGSEGV", (
                "a read of a guard page did not fault" + r.where())
        if step.error is not None and (step.name not in ("read", "write", "populate")
                                       or guard_read):
            diff = state_diff(state, deep_state(r.m.k))
            assert not diff, (f"refused {step.code} ({step.error}) changed state:\n  "
                              + "\n  ".join(diff) + r.where())


@SETTINGS
@given(PROGRAMS)
def test_invariants_hold_after_every_step(prog):
    """mapcounts, swap counts, the swap-cache link, no dangling or leaked frames, file pages
    mapped at their own index, sorted VMAs, inode references (tests/modelinvariants.py); an
    operation the kernel refuses (EINVAL, EACCES, a SIGSEGV on a guard page) changes nothing."""
    run_program(prog, Invariants())


# ------------------------------------------------------------------------------------------
# Property 5: observations decode consistently with the state
# ------------------------------------------------------------------------------------------


def expected_pagemap(k: Kernel, vma, i: int) -> int | None:
    """The pagemap word for page i of vma, from the state and the kabi encoding; None to
    accept anything (never returned today)."""
    word = int(vma.ptes[i])
    kind, val = pte.kind_of(word), pte.value_of(word)
    wp = bool(word & pte.UFFD_WP)
    flags = k.frames.flags.a
    if kind == pte.PRESENT:
        if word & pte.HUGE_ZERO:  # the huge zero page: its own PFNs, no anonymous folio
            return (PM_PRESENT | PM_FILE | (HUGE_ZERO_PFN + ((vma.start >> 12) + i) % 512)
                    | (PM_UFFD_WP if wp else 0))
        zero = val == ZERO_PFN
        anon = not zero and bool(flags[val - PFN_BASE] & F_ANON)
        excl = not zero and k.frames.mapcount.a[val - PFN_BASE] == 1
        pmd = (vma.start + i * PAGE) >> 21
        if excl and vma.huge.get(pmd) == "thp":  # PMD-mapped: the folio's mapcounts
            first = vma.index(pmd << 21)
            whole = pte.values(vma.ptes[first : first + 512]).astype(np.int64) - PFN_BASE
            excl = bool((k.frames.mapcount.a[whole] == 1).all())
        return (PM_PRESENT | val | (0 if zero or anon else PM_FILE)
                | (PM_MMAP_EXCLUSIVE if excl else 0) | (PM_UFFD_WP if wp else 0))
    if kind == pte.SWAP:
        return PM_SWAP | (val << 5) | (PM_UFFD_WP if wp else 0)
    if kind == pte.MIGRATION:
        anon = bool(flags[val - PFN_BASE] & F_ANON)
        typ = SWP_MIGRATION_WRITE if word & pte.WRITE else SWP_MIGRATION_READ
        return PM_SWAP | typ | (val << 5) | (0 if anon else PM_FILE) | (PM_UFFD_WP if wp else 0)
    if kind == pte.MARKER:
        w = PM_SWAP | SWP_PTE_MARKER | (val << 5)
        if val & PTE_MARKER_UFFD_WP:
            w |= PM_UFFD_WP
        if val & PTE_MARKER_GUARD and k.profile.pagemap_guard_bit:
            w |= PM_GUARD_REGION
        return w
    # none: 0, unless the page-cache-lookup series finds a swap value entry
    obj = vma.obj
    if k.profile.pagemap_pagecache_lookup and vma.shared and obj is not None:
        idx = vma.pgoff + i
        if idx < len(obj.cache):
            entry = int(obj.cache[idx])
            if entry >> PC_SHIFT == PC_SWAP:
                return PM_SWAP | ((entry & PC_VALUE) << 5)
    return 0


def decode_check(k: Kernel, pid: int, vma, i: int, w: int) -> list[str]:
    """Decode one pagemap word with the kabi constants and compare with the PTE."""
    out = []
    word = int(vma.ptes[i])
    kind, val = pte.kind_of(word), pte.value_of(word)
    present, swap = bool(w & PM_PRESENT), bool(w & PM_SWAP)
    if present != (kind == pte.PRESENT):
        out.append("PM_PRESENT disagrees with the PTE")
    if kind in (pte.SWAP, pte.MIGRATION, pte.MARKER) and not swap:
        out.append("a non-present, non-none PTE without PM_SWAP (is_swap_pte)")
    if present and swap:
        out.append("PM_PRESENT and PM_SWAP together")
    if w & PM_MMAP_EXCLUSIVE and not present:
        out.append("PM_MMAP_EXCLUSIVE without PM_PRESENT")
    if w & PM_SOFT_DIRTY or w & (3 << 59):
        out.append("soft-dirty or reserved bits set")
    frame = HUGE_ZERO_PFN + ((vma.start >> 12) + i) % 512 if word & pte.HUGE_ZERO else val
    if present and (w & PM_PFRAME_MASK) != frame:
        out.append("PFN differs from the PTE's frame")
    if kind == pte.SWAP and decode_frame(w) != (0, val):
        out.append(f"swap type/offset {decode_frame(w)} != (0, {val})")
    if kind == pte.MIGRATION and (decode_frame(w)[1] != val or decode_frame(w)[0] not in (
            SWP_MIGRATION_READ, SWP_MIGRATION_READ_EXCLUSIVE, SWP_MIGRATION_WRITE)):
        out.append(f"migration entry decodes as {decode_frame(w)}")
    if kind == pte.MARKER and decode_frame(w) != (SWP_PTE_MARKER, val):
        out.append(f"marker decodes as {decode_frame(w)}")
    if kind == pte.MARKER and val & PTE_MARKER_GUARD and k.profile.pagemap_guard_bit and not (
            w & PM_GUARD_REGION):
        out.append("guard marker without PM_GUARD_REGION")
    if w & PM_GUARD_REGION and not (kind == pte.MARKER and val & PTE_MARKER_GUARD):
        out.append("PM_GUARD_REGION on a PTE that is no guard marker")
    if kind == pte.NONE and present:
        out.append("a none PTE reads present")
    if kind in (pte.NONE, pte.MARKER) and w & PM_FILE:
        out.append("PM_FILE without a page")
    want = expected_pagemap(k, vma, i)
    if want is not None and w != want:
        out.append(f"word {w:#018x}, expected {want:#018x}")
    return [f"pid {pid} {vma.start + i * PAGE:#x} (pte {word:#x}): {msg}" for msg in out]


def expected_mincore(k: Kernel, vma, i: int) -> int:
    """mincore_pte_range / __mincore_unmapped_range / mincore_page from the state."""
    word = int(vma.ptes[i])
    kind, val = pte.kind_of(word), pte.value_of(word)
    if kind in (pte.PRESENT, pte.MIGRATION):
        return 1
    if kind == pte.SWAP:
        return int(k.swap.cache.a[val] != 0)
    if kind == pte.MARKER and not k.profile.mincore_marker_as_none:
        return 1
    if vma.obj is None:
        return 0
    idx = vma.pgoff + i
    if idx >= len(vma.obj.cache):
        return 0
    entry = int(vma.obj.cache[idx])
    ck, cv = entry >> PC_SHIFT, entry & PC_VALUE
    if ck == PC_PAGE:
        return int(bool(k.frames.flags.a[cv - PFN_BASE] & F_UPTODATE))
    if ck == PC_SWAP:
        return int(k.swap.cache.a[cv] != 0)
    return 0


def object_data(k: Kernel, obj) -> list[bool]:
    """folio_seek_hole_data per page: a swap value entry or an uptodate folio is data."""
    out = []
    for idx in range(obj.npages):
        entry = int(obj.cache[idx]) if idx < len(obj.cache) else 0
        ck, cv = entry >> PC_SHIFT, entry & PC_VALUE
        out.append(ck == PC_SWAP or (ck == PC_PAGE
                                     and bool(k.frames.flags.a[cv - PFN_BASE] & F_UPTODATE)))
    return out


def observation_mismatches(m: Model) -> list[str]:
    k = m.k
    out = []
    for pid in sorted(k.tasks):
        task = k.task(pid)
        if not task.vmas:
            continue
        lo, hi = task.vmas[0].start - PAGE, task.vmas[-1].end + PAGE
        words = m.pagemap(pid, lo, hi - lo).tolist()
        hidden = m.pagemap(pid, lo, hi - lo, show_pfn=False).tolist()
        covered = set()
        for vma in task.vmas:
            base = (vma.start - lo) >> PAGE_SHIFT
            mc = m.mincore(pid, vma.start, vma.end - vma.start)
            for i in range(vma.npages):
                covered.add(base + i)
                w = words[base + i]
                out += decode_check(k, pid, vma, i, w)
                if hidden[base + i] != w & ~PM_PFRAME_MASK:
                    out.append(f"pid {pid} {vma.start + i * PAGE:#x}: without CAP_SYS_ADMIN "
                               f"{hidden[base + i]:#x} != {w & ~PM_PFRAME_MASK:#x}")
                if mc[i] != expected_mincore(k, vma, i):
                    out.append(f"pid {pid} {vma.start + i * PAGE:#x}: mincore {mc[i]}, expected "
                               f"{expected_mincore(k, vma, i)} (pte {int(vma.ptes[i]):#x})")
        gaps = [i for i, w in enumerate(words) if i not in covered and w != 0]
        if gaps:
            out.append(f"pid {pid}: pagemap outside VMAs is not 0 at {gaps[:8]}")
        for vma, e in zip(task.vmas, m.smaps(pid), strict=True):
            kinds, vals = pte.kinds(vma.ptes), pte.values(vma.ptes)
            rss = int(((kinds == pte.PRESENT) & (vals != U64(ZERO_PFN))).sum())
            if vma.shared:
                data = [int(vma.obj.cache[j]) >> PC_SHIFT == PC_SWAP
                        for j in range(vma.pgoff, min(vma.pgoff + vma.npages,
                                                      len(vma.obj.cache)))]
                swap = sum(data)
            else:
                swap = int((kinds == pte.SWAP).sum())
            if (e.rss_kb, e.swap_kb) != (4 * rss, 4 * swap):
                out.append(f"pid {pid} {vma.start:#x}: smaps Rss/Swap {e.rss_kb}/{e.swap_kb} "
                           f"kB, expected {4 * rss}/{4 * swap}")
    for obj in k.inodes:
        data = object_data(k, obj)
        for idx in range(obj.npages):
            nxt = [j for j in range(idx, obj.npages) if data[j]]
            hole = [j for j in range(idx, obj.npages) if not data[j]]
            want_d = nxt[0] * PAGE if nxt else "ENXIO"
            want_h = min(hole[0] * PAGE, obj.size) if hole else obj.size
            for whence, want in ((SEEK_DATA, want_d), (SEEK_HOLE, want_h)):
                try:
                    got = observe.shmem_file_llseek(k, obj, idx * PAGE, whence)
                except ModelError as exc:
                    got = exc.errno_name
                if got != want:
                    out.append(f"inode {obj.ino}: lseek({idx * PAGE:#x}, "
                               f"{'SEEK_DATA' if whence == SEEK_DATA else 'SEEK_HOLE'}) = "
                               f"{got}, expected {want}")
    return out


class ObservationsDecode(Hooks):
    def after(self, r: Runner, step: Step, ctx) -> None:
        found = observation_mismatches(r.m)
        assert not found, "observations disagree with the state:\n  " + "\n  ".join(
            found[:12]) + r.where()


@SETTINGS
@given(PROGRAMS)
def test_observations_decode_consistently_with_state(prog):
    """Every profile: pte_to_pagemap_entry's words (PM_PRESENT iff present, PM_SWAP iff a
    swap/migration/marker entry — or, in the page-cache-lookup series, a shmem value entry —
    PFN or swap type/offset per include/linux/swapops.h, PM_FILE, PM_MMAP_EXCLUSIVE, bits 57
    and 58, the frame hidden without CAP_SYS_ADMIN, 0 outside VMAs), mincore_pte_range's
    bytes, mapping_seek_hole_data's offsets and smaps' Rss/Swap agree with the state."""
    run_program(prog, ObservationsDecode())


# ------------------------------------------------------------------------------------------
# Regression tests for the model bugs the properties found (shrunk by Hypothesis, then by
# hand; fixed in 492b378). One root cause: between try_to_migrate and remove_migration_ptes
# the kernel's migrate_pages holds the old folio isolated from the LRU, locked and
# referenced, so faults (filemap_fault / shmem_get_folio, do_swap_page) wait for it,
# fault-around and reclaim skip it, truncation waits for it, and the new folio is freed when
# nothing maps it. The model used to let every operation use the old frame as if idle.
# ------------------------------------------------------------------------------------------

DATA = bytes(range(1, 9)) * (PAGE // 8)


def frames_used(m: Model) -> int:
    return int((m.k.frames.flags.a[: m.k.frames.flags.n] & F_USED).sum())


def test_swap_readahead_reads_the_faulting_page_once():
    """swap_vma_readahead reads the window around the fault, the faulting entry included, and
    returns that entry's folio, which do_swap_page maps (mm/swap_state.c: the target folio
    is the one read at the fault address). The model's do_swap_page (f6831f9) calls
    swap_vma_readahead, which puts a frame for the faulting slot itself into the swap cache,
    and then allocates another frame for the same slot and overwrites swap.cache[slot]: the
    first frame leaks, still naming the slot. Every readahead swap-in does it (asynchronous
    device, or a synchronous one with the slot shared after fork)."""
    for sync in (True, False):
        m = Model("linux-5.14", swap=True, swap_sync=sync)
        a = m.spawn("A")
        r = m.mmap(a, PAGE)
        m.write(a, r, PAGE)
        m.fork(a)  # the child shares the slot: readahead even on a synchronous device
        m.reclaim(a, r, PAGE, free=True)
        m.read(a, r, PAGE)
        assert violations(m.k) == []
        assert m.k.frames.allocated == 1  # the page A maps, still in the swap cache


def test_fault_waits_for_page_cache_page_under_migration():
    """A read fault on a shmem page whose folio is being migrated waits for the migration
    (shmem_get_folio_gfp -> folio_lock; migrate_pages holds the lock until
    remove_migration_ptes) and then maps the new folio. The model's handle_mm_fault ->
    shmem_get_folio used to map the old frame, which migrate_finish then freed: B's PTE
    dangled and B's later write went to a freed frame, so neither A nor B read it."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE, shared=True)
    m.read(a, r, PAGE)
    b = m.fork(a)  # B's PTE is none (vma_needs_copy: no anon_vma)
    m.migrate(a, r, PAGE, finish=False)
    m.read(b, r, PAGE)
    m.migrate_finish()
    m.write(b, r, PAGE, DATA)
    assert m.peek(b, r, PAGE) == DATA
    assert m.peek(a, r, PAGE) == DATA
    assert violations(m.k) == []


def test_fault_around_skips_page_cache_page_under_migration():
    """filemap_map_pages (next_uptodate_folio: folio_trylock fails) skips a folio that is
    being migrated. The model's do_fault_around used to map the old frame of page 0 while B
    faulted on page 1; after migrate_finish B's PTE pointed at a freed frame."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    r = m.mmap(a, 2 * PAGE, shared=True)
    m.write(a, r, 2 * PAGE)
    m.migrate(a, r, PAGE, finish=False)  # page 0 only
    b = m.fork(a)
    m.read(b, r + PAGE, PAGE)  # fault-around reaches page 0
    m.migrate_finish()
    m.write(b, r, PAGE, DATA)
    assert m.peek(a, r, PAGE) == DATA
    assert violations(m.k) == []


def test_swapin_waits_for_swap_cache_page_under_migration():
    """do_swap_page finds the folio in the swap cache and folio_lock_or_retry waits while it is
    migrated; it then maps the new folio. The model used to map the old frame, which
    migrate_finish freed: B's present PTE dangled."""
    m = Model("linux-5.14", swap=True, swap_sync=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    b = m.fork(a)
    m.reclaim(a, r, PAGE)  # both hold swap entries; the page stays in the swap cache
    m.read(a, r, PAGE)  # A maps the swap-cache page, B still holds the swap entry
    m.migrate(a, r, PAGE, finish=False)
    m.read(b, r, PAGE)
    m.migrate_finish()
    assert violations(m.k) == []


def test_hole_punch_zaps_migration_entries_of_private_file_mappings():
    """PUNCH_HOLE zaps the page in every mapper except private COW copies
    (unmap_mapping_range, even_cows=0). A migration entry of a *file* folio in a private
    mapping is zapped too: zap_nonpresent_ptes -> should_zap_folio is true for any non-anon
    folio. The model's unmap_mapping_range used to look at present PTEs of private VMAs only,
    so the entry survived and A kept reading the punched page's old bytes (a child, whose PTE
    is none, read zeros) through a freed frame."""
    m = Model("linux-5.14", swap=False)
    a = m.spawn("A")
    fd = m.memfd_create(a, "r0", PAGE)
    m.pwrite(a, fd, 0, PAGE, DATA)
    r = m.mmap(a, PAGE, shared=False, fd=fd)
    m.read(a, r, PAGE)  # maps the page-cache page read-only
    m.migrate(a, r, PAGE, finish=False)
    m.fallocate(a, fd, 0, PAGE, punch=True)
    assert m.peek(a, r, PAGE) == bytes(PAGE)
    assert m.peek(m.fork(a), r, PAGE) == bytes(PAGE)


def test_hole_punch_waits_for_page_under_migration():
    """shmem_undo_range locks each folio (waiting for a migration to finish), and migrate_pages
    holds a reference on the folio it moves. The model's shmem_truncate_range used to free the
    old frame at once; migrate_finish then copied the freed frame into a new one that nothing
    referenced (a leak) and freed the old frame a second time. The same happened when the
    last mapping of a shared anon object went (munmap, exit: shmem_evict_inode)."""
    m = Model("linux-5.14", swap=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE, shared=True)
    m.write(a, r, PAGE)
    m.migrate(a, r, PAGE, finish=False)
    m.madvise(a, r, PAGE, MADV_REMOVE)
    m.migrate_finish()
    assert violations(m.k) == []
    assert frames_used(m) == m.k.frames.allocated == 0


def test_reclaim_skips_page_under_migration():
    """A folio being migrated is isolated from the LRU and locked, so kswapd's
    shrink_folio_list never sees it. The model's reclaim used to swap the shmem page out and
    free the frame under migration; migrate_finish then mapped a copy that was not in the page
    cache, so A's later write through its MAP_SHARED mapping was lost: A read the swapped-out
    bytes."""
    m = Model("linux-5.14", swap=True)
    a = m.spawn("A")
    r = m.mmap(a, PAGE, shared=True)
    m.write(a, r, PAGE)
    m.migrate(a, r, PAGE, finish=False)
    m.reclaim(a, r, PAGE)
    m.migrate_finish()
    m.write(a, r, PAGE, DATA)
    assert m.peek(a, r, PAGE) == DATA
    assert violations(m.k) == []


def test_swapcache_release_skips_page_under_migration():
    """__remove_mapping needs the folio locked with its refcount frozen at the expected value;
    a folio under migration is neither free to lock nor at that count. The model's
    swapcache_drop used to free it; migrate_finish then copied the freed frame's flags (none),
    so A's private anonymous page turned into a "file" page (pagemap reported PM_FILE)."""
    m = Model("linux-5.14", swap=True, swap_sync=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.fork(a)
    m.reclaim(a, r, PAGE)
    m.read(a, r, PAGE)  # A maps the swap-cache page; the child keeps the swap entry
    m.migrate(a, r, PAGE, finish=False)
    m.swapcache_drop()
    m.migrate_finish()
    assert not int(m.pagemap(a, r, PAGE)[0]) & PM_FILE
    assert violations(m.k) == []


def test_migration_frees_new_page_nobody_maps():
    """munmap (or exit, MADV_DONTNEED) during a migration drops the migration entries; when the
    migration completes, remove_migration_ptes finds none and migrate_pages' final folio_put
    frees the new folio. The model's remove_migration_ptes used to allocate the new frame
    anyway, and nothing ever freed it."""
    m = Model("linux-6.18", swap=False)
    a = m.spawn("A")
    r = m.mmap(a, PAGE)
    m.write(a, r, PAGE)
    m.migrate(a, r, PAGE, finish=False)
    m.munmap(a, r, PAGE)
    m.migrate_finish()
    assert m.k.frames.allocated == 0
    assert violations(m.k) == []
