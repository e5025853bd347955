"""Run a program (tests/linux/programs.py) on real helper processes or on the model, and
observe both the same way after every op.

An observation is, per process (in creation order) and region it maps: the pagemap flags
of each page (P S F G W X; no PFNs, no swap offsets), the mincore vector (asked from inside
the process on Linux; mincore has no pid argument), and for a shared region the extents
SEEK_DATA/SEEK_HOLE find in the object over the region's pages ("D" data, "." hole).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from dataclasses import dataclass

import numpy as np

from dumper.kabi import (
    MADV_COLD,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_NOHUGEPAGE,
    MADV_PAGEOUT,
    MADV_REMOVE,
    MADV_WIPEONFORK,
    PM_FILE,
    PM_GUARD_REGION,
    PM_MMAP_EXCLUSIVE,
    PM_PRESENT,
    PM_SWAP,
    PM_UFFD_WP,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    SEEK_DATA,
    SEEK_HOLE,
)
from dumper.linux import pagemap
from dumper.linux.mapfiles import MapFile
from dumper.model import Model, ModelError

from .procs import PAGE, Proc, ProcSet
from .programs import Checker, Op, Region, region_addr

ADVICE = {"dontneed": MADV_DONTNEED, "pageout": MADV_PAGEOUT, "remove": MADV_REMOVE,
          "guard": MADV_GUARD_INSTALL, "unguard": MADV_GUARD_REMOVE, "free": MADV_FREE,
          "cold": MADV_COLD, "dontfork": MADV_DONTFORK, "dofork": MADV_DOFORK,
          "wipeonfork": MADV_WIPEONFORK, "keeponfork": MADV_KEEPONFORK,
          "hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE}
PROT = {"none": PROT_NONE, "r": PROT_READ, "rw": PROT_READ | PROT_WRITE}
FLAGS = ((PM_PRESENT, "P"), (PM_SWAP, "S"), (PM_FILE, "F"), (PM_GUARD_REGION, "G"),
         (PM_UFFD_WP, "W"), (PM_MMAP_EXCLUSIVE, "X"))

View = tuple[tuple[str, ...], str, str | None]  # flags per page, mincore, lseek
Observation = dict[tuple[str, str], View]


def flag_strings(words: np.ndarray) -> tuple[str, ...]:
    return tuple("".join(c for bit, c in FLAGS if int(w) & bit) or "-" for w in words)


def extents_mask(lseek, first: int, n: int, size: int) -> str:
    """'D'/'.' per page of object pages [first, first+n) from SEEK_DATA/SEEK_HOLE."""
    out = ["."] * n
    pos, end = first * PAGE, min((first + n) * PAGE, size)
    while pos < end:
        try:
            data = lseek(pos, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if data >= end:
            break
        hole = lseek(data, SEEK_HOLE)
        for p in range(data // PAGE, min(-(-hole // PAGE), first + n)):
            out[p - first] = "D"
        pos = hole
    return "".join(out)


def wait_writeback(timeout: float = 20.0) -> None:
    """Until /proc/vmstat nr_writeback is 0: every page under writeback (a swapfile's are
    written asynchronously) has been written. Polls the kernel's counter with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/vmstat") as f:
            if any(line == "nr_writeback 0" for line in f.read().splitlines()):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("pages still under writeback")
        select.select([], [], [], 0.001)


def describe(view: View) -> str:
    flags, mc, ls = view
    return f"pagemap={' '.join(flags)} mincore={mc}" + (f" lseek={ls}" if ls else "")


@dataclass
class Runner:
    """Applies ops, tracking what each process maps (a Checker), and observes."""

    def __post_init__(self) -> None:
        self.state = Checker()
        self.order: list[str] = []

    def run(self, ops: list[Op]) -> list[Observation]:
        out = []
        for op in ops:
            gone = self.state.regions[op.proc].get(op.args[0]) if op.verb in ("munmap", "mremap") \
                else None
            self.state.apply(op)
            self.do(op, gone)
            if op.verb in ("spawn", "fork"):
                self.order.append(op.args[0] if op.verb == "fork" else op.proc)
            out.append(self.observe())
        return out

    def observe(self) -> Observation:
        obs: Observation = {}
        for p in self.order:
            for r, reg in sorted(self.state.regions[p].items()):
                obs[(p, r)] = (flag_strings(self.words(p, r, reg)), self.mincore(p, r, reg),
                               self.lseek(p, r, reg) if reg.seekable else None)
        return obs

    def do(self, op: Op, gone: Region | None) -> None:
        """Run op; gone is the region a munmap removes or an mremap resizes, as it was."""
    def words(self, p: str, r: str, reg: Region) -> np.ndarray: ...
    def mincore(self, p: str, r: str, reg: Region) -> str: ...
    def lseek(self, p: str, r: str, reg: Region) -> str: ...


class RealRunner(Runner):
    """Helper processes (pinned to CPU 0: MADV_PAGEOUT drains that CPU's LRU batches)."""

    def __init__(self, procs: ProcSet, ops: list[Op]) -> None:
        super().__post_init__()
        self.procs = procs
        self.p: dict[str, Proc] = {}
        c = Checker()
        c.valid(ops)
        self.forks = c.forks
        a, b = socket.socketpair()
        self.ends = {name: s for name, s in zip(sorted(c.forks), (a, b), strict=False)}
        self.spare = [s for s in (a, b) if s not in self.ends.values()]

    def close(self) -> None:
        for s in [*self.ends.values(), *self.spare]:
            s.close()

    def do(self, op: Op, gone: Region | None) -> None:
        p, a = op.proc, op.args
        if op.verb == "spawn":
            self.p[p] = self.procs.start(children=self.forks[p], cpu=0,
                                         fds={"peer": self.ends[p].fileno()})
            return
        h = self.p[p]
        if op.verb == "fork":
            self.p[a[0]] = self.procs.fork(h)
        elif op.verb == "mmap":
            r, n, kind = a[:3]
            if kind == "sysv":
                h.call("shmat", name=r, pages=n, addr=region_addr(r))
                return
            if kind in ("hugetlb", "hugetlb-shared"):
                h.mmap(r, n, shared=kind == "hugetlb-shared", addr=region_addr(r), hugetlb=True)
                return
            kw = {"memfd": a[3], "offset": a[4]} if kind == "memfd" else {}
            h.mmap(r, n, shared=kind != "anon", addr=region_addr(r), **kw)
        elif op.verb == "memfd":
            h.call("memfd", name=a[0], pages=a[1])
        elif op.verb == "pwrite":
            h.call("pwrite", name=a[0], pages=list(a[1]), tag=7)
        elif op.verb == "punch":
            h.call("punch", name=a[0], page=a[1], npages=a[2])
        elif op.verb == "send":
            h.call("send_fd", memfd=a[0], sock="peer")
            self.p[a[1]].call("recv_fd", memfd=a[0], sock="peer")
        elif op.verb in ("write", "read"):
            h.call(op.verb, name=a[0], pages=list(a[1]), **({"tag": 9} if op.verb == "write"
                                                            else {}))
        elif op.verb == "munmap":
            h.call("munmap", name=a[0])
        elif op.verb == "mprotect":
            h.call("mprotect", name=a[0], page=a[1], npages=a[2], prot=PROT[a[3]])
        elif op.verb == "mremap":
            h.call("mremap", name=a[0], pages=a[1])
        elif op.verb == "writeback":
            wait_writeback()
        else:
            h.call("madvise", name=a[0], page=a[1], npages=a[2], advice=ADVICE[op.verb])

    @staticmethod
    def vma_at(pid: int, addr: int) -> tuple[int, int]:
        """The VMA holding addr (a region mprotect split is several: any one names the
        object, whose extents are asked)."""
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                a, b = (int(x, 16) for x in line.split()[0].split("-"))
                if a <= addr < b:
                    return a, b
        raise LookupError(f"pid {pid} maps nothing at {addr:#x}")

    def words(self, p: str, r: str, reg: Region) -> np.ndarray:
        start = region_addr(r)
        raw = pagemap.read_pagemap(self.p[p].pid, start, start + reg.npages * PAGE)
        return np.frombuffer(raw, dtype="<u8")

    def mincore(self, p: str, r: str, reg: Region) -> str:
        return "".join(str(v & 1) for v in self.p[p].call("mincore", name=r)["vec"])

    def lseek(self, p: str, r: str, reg: Region) -> str:
        start = region_addr(r)
        with MapFile.open(self.p[p].pid, *self.vma_at(self.p[p].pid, start)) as obj:
            size = os.fstat(obj.fd).st_size
            return extents_mask(obj.lseek, reg.offset, reg.npages, size)


class ModelRunner(Runner):
    """The model's linux-6.18 profile; an observer task holds the map_files fds it opens.
    thp: the machine's transparent_hugepage/enabled, which the tests set (conftest.thp)."""

    def __init__(self, swap: bool, swap_sync: bool = False, thp: str = "madvise",
                 hugepages: int = 0, shmem_folio_pages: int = 1) -> None:
        super().__post_init__()
        self.m = Model("linux-6.18", swap=swap, swap_sync=swap_sync, thp=thp,
                       hugepages=hugepages, shmem_folio_pages=shmem_folio_pages)
        self.pid: dict[str, int] = {}
        self.fd: dict[tuple[str, str], int] = {}
        self.observer = self.m.spawn("observer")

    def do(self, op: Op, gone: Region | None) -> None:
        m, p, a = self.m, op.proc, op.args
        if op.verb == "spawn":
            self.pid[p] = m.spawn(p)
            return
        pid = self.pid[p]
        if op.verb == "fork":
            self.pid[a[0]] = m.fork(pid, a[0])
            for (q, name), fd in list(self.fd.items()):
                if q == p:
                    self.fd[(a[0], name)] = fd
        elif op.verb == "mmap":
            r, n, kind = a[:3]
            if kind in ("hugetlb", "hugetlb-shared"):
                m.mmap(pid, n * PAGE, shared=kind == "hugetlb-shared", addr=region_addr(r),
                       hugetlb=True)
                return
            if kind == "sysv":  # IPC_PRIVATE, removed at once as the helper does
                seg = m.shmget(0, n * PAGE)
                m.shmat(pid, seg, addr=region_addr(r))
                m.shm_rmid(seg)
                return
            fd = self.fd[(p, a[3])] if kind == "memfd" else None
            m.mmap(pid, n * PAGE, shared=kind != "anon", fd=fd,
                   offset=a[4] * PAGE if kind == "memfd" else 0, addr=region_addr(r))
        elif op.verb == "memfd":
            self.fd[(p, a[0])] = m.memfd_create(pid, a[0], a[1] * PAGE)
        elif op.verb == "pwrite":
            for q in a[1]:
                m.pwrite(pid, self.fd[(p, a[0])], q * PAGE, PAGE)
        elif op.verb == "punch":
            m.fallocate(pid, self.fd[(p, a[0])], a[1] * PAGE, a[2] * PAGE, punch=True)
        elif op.verb == "send":
            self.fd[(a[1], a[0])] = m.send_fd(pid, self.fd[(p, a[0])], self.pid[a[1]])
        elif op.verb in ("write", "read"):
            base = region_addr(a[0])
            for q in a[1]:
                (m.write if op.verb == "write" else m.read)(pid, base + q * PAGE, PAGE)
        elif op.verb == "munmap":
            assert gone is not None
            m.munmap(pid, region_addr(a[0]), gone.npages * PAGE)
        elif op.verb == "mprotect":
            m.mprotect(pid, region_addr(a[0]) + a[1] * PAGE, a[2] * PAGE, PROT[a[3]])
        elif op.verb == "mremap":
            assert gone is not None
            m.mremap(pid, region_addr(a[0]), gone.npages * PAGE, new_length=a[1] * PAGE,
                     may_move=False)
        elif op.verb == "writeback":
            pass
        else:
            m.madvise(pid, region_addr(a[0]) + a[1] * PAGE, a[2] * PAGE, ADVICE[op.verb])

    def words(self, p: str, r: str, reg: Region) -> np.ndarray:
        return self.m.pagemap(self.pid[p], region_addr(r), reg.npages * PAGE)

    def mincore(self, p: str, r: str, reg: Region) -> str:
        return "".join(str(v & 1) for v in self.m.mincore(self.pid[p], region_addr(r),
                                                          reg.npages * PAGE))

    def lseek(self, p: str, r: str, reg: Region) -> str:
        fd = self.m.open_map_files(self.observer, self.pid[p], region_addr(r))
        try:
            size = self.m.object_at(self.pid[p], region_addr(r)).size
            return extents_mask(lambda off, wh: self._lseek(fd, off, wh), reg.offset,
                                reg.npages, size)
        finally:
            self.m.close(self.observer, fd)

    def _lseek(self, fd: int, offset: int, whence: int) -> int:
        try:
            return self.m.lseek(self.observer, fd, offset, whence)
        except ModelError as e:
            raise OSError(getattr(errno, e.errno_name, errno.EIO), str(e)) from None
