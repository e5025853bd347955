"""The scenario file format: one operation per line over named tasks and regions.

    # comments run to the end of a line
    scenario fork-unmap-after-swapout      # the name (defaults to the file's stem)
    cite david-2021-08-17a                 # the thread message it comes from (docs/thread.md)
    swap on | off | async                  # the swap device: zram-like, none, swapfile-like
    thp madvise | always | never           # transparent_hugepage/enabled (default madvise)
    hugepages N                            # vm.nr_hugepages: the hugetlb pool (default 0)
    shmem-folio N                          # large shmem folios of N pages (16: 64 KiB)
    task A                                 # the root task
    mmap A shm 8 shared                    # A maps 8 pages MAP_SHARED|MAP_ANONYMOUS as "shm"
    write A shm 0-7                        # pages are region-relative: 3, 0-7, 0-3,6, all
    reclaim A shm all                      # the system (kswapd) reclaims them
    fork A B
    munmap A shm
    dump A                                 # when (here) and whom (the tree under A)
    expect lost pagemap linux-5.14,linux-6.18 = 8
    expect view B shm pagemap linux-6.18 = "--------"

Operations (TASK, REGION, FD are names; PAGES region-relative page lists):
    task NAME                       fork PARENT CHILD               exit TASK
    mmap TASK REGION NPAGES [shared|private] [fd=FD] [offset=N] [prot=r|rw] [hugetlb]
    munmap TASK REGION [PAGES]      zap TASK REGION PAGES
    mremap TASK REGION [NPAGES]     a move, or a grow / shrink to NPAGES (in place if it can)
    mprotect TASK REGION PAGES none|r|rw
    shm TASK REGION NPAGES          a private SysV segment attached, its id removed at once
    write TASK REGION PAGES         read TASK REGION PAGES
    madvise TASK REGION PAGES dontneed|pageout|remove|populate-read|populate-write|
                                    guard-install|guard-remove|free|cold|dontfork|dofork|
                                    wipeonfork|keeponfork|hugepage|nohugepage
    uffd-wp TASK REGION PAGES       poison TASK REGION PAGES
    memfd TASK FD [NPAGES]          sendfd FROM FD TO               mapfd TASK REGION FD
    pwrite TASK FD PAGES            fallocate TASK FD PAGES [punch] ftruncate TASK FD NPAGES
    reclaim TASK REGION PAGES [keep-swapcache]                      swapcache-drop
    migrate TASK REGION PAGES [pending]                             migrate-finish
Expectations (PROFILES and STRATEGIES: comma lists, or *):
    expect lost STRATEGIES PROFILES = N
    expect view TASK REGION pagemap|mincore|lseek|flags|classify|truth PROFILES = "STRING"
    expect unchanged-by-selection
    expect same|differ TASK TASK REGION PAGES   # the two tasks read equal / other bytes
Every mistake is reported with its file and line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dumper.model.kernels import PROFILES
from dumper.select import STRATEGIES

ADVICE = ("dontneed", "pageout", "remove", "populate-read", "populate-write", "guard-install",
          "guard-remove", "free", "cold", "dontfork", "dofork", "wipeonfork", "keeponfork",
          "hugepage", "nohugepage")
PROTS = ("none", "r", "rw")
VIEWS = ("pagemap", "mincore", "lseek", "flags", "classify", "truth")

# name -> (positional arg kinds, allowed options); kinds: task, newtask, region, newregion,
# fd, newfd, pages, int, advice, prot
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fork": (("task", "newtask"), ()),
    "exit": (("task",), ()),
    "mmap": (("task", "newregion", "int"), ("shared", "private", "fd=", "offset=", "prot=",
                                            "hugetlb")),
    "munmap": (("task", "region"), ("pages",)),
    "mremap": (("task", "region"), ("int",)),
    "mprotect": (("task", "region", "pages", "prot"), ()),
    "shm": (("task", "newregion", "int"), ()),
    "zap": (("task", "region", "pages"), ()),
    "write": (("task", "region", "pages"), ()),
    "read": (("task", "region", "pages"), ()),
    "madvise": (("task", "region", "pages", "advice"), ()),
    "uffd-wp": (("task", "region", "pages"), ()),
    "poison": (("task", "region", "pages"), ()),
    "memfd": (("task", "newfd"), ("int",)),
    "sendfd": (("task", "fd", "task"), ()),
    "pwrite": (("task", "fd", "pages"), ()),
    "fallocate": (("task", "fd", "pages"), ("punch",)),
    "ftruncate": (("task", "fd", "int"), ()),
    "reclaim": (("task", "region", "pages"), ("keep-swapcache",)),
    "swapcache-drop": ((), ()),
    "migrate": (("task", "region", "pages"), ("pending",)),
    "migrate-finish": ((), ()),
}


class ScenarioError(Exception):
    """A mistake in a scenario file: str() is `FILE:LINE: what is wrong`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class Op:
    line: int
    name: str
    args: tuple
    opts: dict


@dataclass(frozen=True)
class LostExpect:
    line: int
    strategies: tuple[str, ...]
    profiles: tuple[str, ...]
    pages: int


@dataclass(frozen=True)
class ViewExpect:
    line: int
    task: str
    region: str
    view: str
    profiles: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class CompareExpect:
    line: int
    same: bool
    task_a: str
    task_b: str
    region: str
    pages: tuple[int, ...] | str


@dataclass
class Scenario:
    name: str
    path: str
    cite: list[str] = field(default_factory=list)
    header: str = ""  # the leading comment block
    swap: str = "on"
    thp: str = "madvise"
    hugepages: int = 0
    shmem_folio: int = 1
    root: str = ""
    ops: list[Op] = field(default_factory=list)
    dump_line: int = 0
    dump_root: str = ""
    lost: list[LostExpect] = field(default_factory=list)
    views: list[ViewExpect] = field(default_factory=list)
    compares: list[CompareExpect] = field(default_factory=list)
    unchanged_by_selection: bool = False
    text: str = ""

    def expected_lost(self, strategy: str, profile: str) -> LostExpect | None:
        """The last expectation naming this strategy and profile."""
        hit = None
        for e in self.lost:
            if strategy in e.strategies and profile in e.profiles:
                hit = e
        return hit


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_pages(text: str) -> tuple[int, ...] | str:
    """'3', '0-7', '0-3,6' -> page indices; 'all' stays 'all'; ValueError otherwise."""
    if text == "all":
        return "all"
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad page list {text!r} (use 3, 0-7, 0-3,6 or all)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise ValueError(f"bad page range {part!r}")
        out.extend(range(a, b + 1))
    return tuple(out)


def _names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if text == "*":
        return known
    items = tuple(text.split(","))
    for i in items:
        if i not in known:
            raise ValueError(f"unknown {what} {i!r} (known: {', '.join(known)})")
    return items


def parse(text: str, path: str = "<scenario>") -> Scenario:
    """Parse a scenario file; ScenarioError at the first mistake."""
    sc = Scenario(name=Path(path).stem, path=path, text=text)
    tasks: set[str] = set()
    regions: dict[str, int] = {}  # name -> pages
    fds: set[str] = set()
    header_done = False
    header: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") and not header_done:
            header.append(stripped.lstrip("#").strip())
            continue
        line = raw.split("#", 1)[0].strip() if "\"" not in raw else _strip_comment(raw)
        if not line:
            continue
        header_done = True

        def fail(msg: str, n: int = n) -> ScenarioError:
            return ScenarioError(path, n, msg)

        try:
            words = shlex.split(line)
        except ValueError as e:
            raise fail(f"cannot split the line: {e}") from None
        op, args = words[0], words[1:]
        if op == "scenario":
            if len(args) != 1:
                raise fail("scenario takes one name")
            sc.name = args[0]
        elif op == "cite":
            if not args:
                raise fail("cite takes one or more message ids (docs/thread.md)")
            sc.cite.extend(args)
        elif op == "swap":
            if args not in (["on"], ["off"], ["async"]):
                raise fail("swap takes on, off or async")
            sc.swap = args[0]
        elif op == "thp":
            if args not in (["madvise"], ["always"], ["never"]):
                raise fail("thp takes madvise, always or never")
            sc.thp = args[0]
        elif op == "hugepages":
            if len(args) != 1 or not args[0].isdigit():
                raise fail("hugepages takes the number of 2 MiB pages in the pool")
            sc.hugepages = int(args[0])
        elif op == "shmem-folio":
            if len(args) != 1 or args[0] not in ("1", "2", "4", "8", "16", "32", "64", "128",
                                                 "256", "512"):
                raise fail("shmem-folio takes a power of two from 1 to 512 (pages)")
            sc.shmem_folio = int(args[0])
        elif op == "task":
            if sc.root:
                raise fail(f"the root task is already {sc.root!r}; create others with fork")
            if len(args) != 1 or not _NAME.match(args[0]):
                raise fail("task takes one name")
            sc.root = args[0]
            tasks.add(args[0])
        elif op == "dump":
            if sc.dump_line:
                raise fail(f"a second dump line (the first is line {sc.dump_line})")
            if len(args) != 1 or args[0] not in tasks:
                raise fail(f"dump takes one known task, got {' '.join(args) or 'nothing'}")
            sc.dump_line, sc.dump_root = n, args[0]
        elif op == "expect":
            _parse_expect(sc, args, tasks, regions, fail, n)
        elif op in OPS:
            if sc.dump_line:
                raise fail("operations come before the dump line")
            if not sc.root:
                raise fail("declare the root task first (task NAME)")
            sc.ops.append(_parse_op(op, args, tasks, regions, fds, fail, n))
        else:
            raise fail(f"unknown operation {op!r}")
    if not sc.root:
        raise ScenarioError(path, 1, "no task line")
    if not sc.dump_line:
        raise ScenarioError(path, max(1, len(text.splitlines())), "no dump line")
    sc.header = "\n".join(header)
    return sc


def _strip_comment(raw: str) -> str:
    """Drop a # comment that is not inside double quotes."""
    quoted = False
    for i, ch in enumerate(raw):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return raw[:i].strip()
    return raw.strip()


def _parse_op(op, args, tasks, regions, fds, fail, n) -> Op:
    kinds, allowed = OPS[op]
    if len(args) < len(kinds):
        raise fail(f"{op} needs {len(kinds)} arguments ({' '.join(kinds)}), got {len(args)}")
    pos, rest = args[: len(kinds)], args[len(kinds):]
    out: list = []
    for kind, a in zip(kinds, pos, strict=True):
        if kind == "task":
            if a not in tasks:
                raise fail(f"unknown task {a!r}")
            out.append(a)
        elif kind == "newtask":
            if a in tasks or not _NAME.match(a):
                raise fail(f"task name {a!r} is taken or not a name")
            tasks.add(a)
            out.append(a)
        elif kind == "region":
            if a not in regions:
                raise fail(f"unknown region {a!r}")
            out.append(a)
        elif kind == "newregion":
            if not _NAME.match(a):
                raise fail(f"region name {a!r} is not a name")
            out.append(a)
        elif kind == "fd":
            if a not in fds:
                raise fail(f"unknown fd {a!r}")
            out.append(a)
        elif kind == "newfd":
            if not _NAME.match(a):
                raise fail(f"fd name {a!r} is not a name")
            fds.add(a)
            out.append(a)
        elif kind == "int":
            if not a.isdigit() or int(a) == 0:
                raise fail(f"{a!r} is not a positive number of pages")
            out.append(int(a))
        elif kind == "prot":
            if a not in PROTS:
                raise fail(f"unknown protection {a!r} (one of {', '.join(PROTS)})")
            out.append(a)
        elif kind == "advice":
            if a not in ADVICE:
                raise fail(f"unknown advice {a!r} (one of {', '.join(ADVICE)})")
            out.append(a)
        elif kind == "pages":
            try:
                out.append(parse_pages(a))
            except ValueError as e:
                raise fail(str(e)) from None
    opts: dict = {}
    for r in rest:
        key = r.split("=", 1)[0] + ("=" if "=" in r else "")
        if "pages" in allowed and "pages" not in opts and "=" not in r:
            try:
                opts["pages"] = parse_pages(r)
                continue
            except ValueError as e:
                raise fail(str(e)) from None
        if "int" in allowed and r.isdigit():
            opts["int"] = int(r)
            continue
        if key not in allowed:
            raise fail(f"{op} does not take {r!r}")
        if key.endswith("="):
            value = r.split("=", 1)[1]
            if key == "fd=" and value not in fds:
                raise fail(f"unknown fd {value!r}")
            if key == "offset=" and not value.isdigit():
                raise fail(f"offset={value!r} is not a number of pages")
            if key == "prot=" and value not in ("r", "rw"):
                raise fail(f"prot={value!r}: use r or rw")
            opts[key[:-1]] = value
        else:
            opts[r] = True
    _check_pages(op, out, opts, regions, fail)
    if op in ("mmap", "shm"):
        regions[out[1]] = out[2]
    elif op == "mremap" and "int" in opts:  # names are per task: a fork may keep the old size
        regions[out[1]] = max(regions[out[1]], opts["int"])
    return Op(n, op, tuple(out), opts)


def _check_pages(op, out, opts, regions, fail) -> None:
    """Pages must fall inside their region (the region's size as mmap'ed)."""
    kinds = OPS[op][0]
    if "region" not in kinds and "newregion" not in kinds:
        return
    region = out[kinds.index("region")] if "region" in kinds else None
    pages = [a for k, a in zip(kinds, out, strict=True) if k == "pages"]
    if "pages" in opts:
        pages.append(opts["pages"])
    for p in pages:
        if region is None or p == "all":
            continue
        if max(p) >= regions[region]:
            raise fail(f"page {max(p)} is outside region {region!r} "
                       f"({regions[region]} pages)")


def _parse_expect(sc, args, tasks, regions, fail, n) -> None:
    try:
        if args[:1] == ["unchanged-by-selection"] and len(args) == 1:
            sc.unchanged_by_selection = True
        elif args[:1] == ["lost"]:
            if len(args) != 5 or args[3] != "=" or not args[4].isdigit():
                raise ValueError("use: expect lost STRATEGIES PROFILES = N")
            sc.lost.append(LostExpect(n, _names(args[1], STRATEGIES, "strategy"),
                                      _names(args[2], tuple(PROFILES), "profile"),
                                      int(args[4])))
        elif args[:1] == ["view"]:
            if len(args) != 7 or args[5] != "=":
                raise ValueError('use: expect view TASK REGION VIEW PROFILES = "STRING"')
            task, region, view = args[1], args[2], args[3]
            if task not in tasks:
                raise ValueError(f"unknown task {task!r}")
            if region not in regions:
                raise ValueError(f"unknown region {region!r}")
            if view not in VIEWS:
                raise ValueError(f"unknown view {view!r} (one of {', '.join(VIEWS)})")
            sc.views.append(ViewExpect(n, task, region, view,
                                       _names(args[4], tuple(PROFILES), "profile"), args[6]))
        elif args[:1] in (["same"], ["differ"]):
            if len(args) != 5:
                raise ValueError(f"use: expect {args[0]} TASK TASK REGION PAGES")
            for t in args[1:3]:
                if t not in tasks:
                    raise ValueError(f"unknown task {t!r}")
            if args[3] not in regions:
                raise ValueError(f"unknown region {args[3]!r}")
            sc.compares.append(CompareExpect(n, args[0] == "same", args[1], args[2], args[3],
                                             parse_pages(args[4])))
        else:
            raise ValueError("expect lost, view, same, differ or unchanged-by-selection")
    except ValueError as e:
        raise fail(f"malformed expectation: {e}") from None


def load(path: str | Path) -> Scenario:
    """Read and parse a scenario file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioError(str(p), 0, e.strerror or str(e)) from None
    return parse(text, str(p))
