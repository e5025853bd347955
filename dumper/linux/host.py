"""LinuxHost: the Host protocol (dumper/host.py) answered by the running kernel."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import numpy as np

from dumper.buffers import BufferPool
from dumper.host import MapEntry, TaskInfo, parse_maps
from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PM_PFRAME_MASK, PM_PRESENT, PROT_READ
from dumper.linux import (
    check,
    freeze,
    ipcns,
    libc,
    memread,
    pagemap,
    procfs,
    regs,
    taskstate,
    truth,
)
from dumper.linux.digestcache import DigestCache
from dumper.linux.errors import ProcError, UnreadableMemory, Unsupported
from dumper.linux.mapfiles import MapFile
from dumper.state import DEAD


class LinuxHost:
    """The real kernel through /proc, ptrace, /proc/PID/mem, PAGEMAP_SCAN and map_files.

    Shared memory is read through map_files fds and private memory through /proc/PID/mem
    of the pages pagemap says hold data, so asking never changes the target's page tables
    nor its copy-on-write sharing (kernel.md sections 6, 9 and 10)."""

    kind = "linux"
    truth_algo = truth.TRUTH_ALGO

    def __init__(self, leave_stopped: bool = False, digest_while_reading: bool = True) -> None:
        self.leave_stopped = leave_stopped
        # While frozen, digest what read_memory and the objects' pread return, in a thread
        # beside the caller, for the truth() that dump.py asks for afterwards
        # (digestcache). Pointless, and a core's worth of work, if no truth() follows.
        self.digest_while_reading = digest_while_reading
        self._has_scan: bool | None = None
        self._show_pfn: bool | None = None
        self._zero_pfn: int | None | bool = False  # False: not asked yet
        self._cache: DigestCache | None = None  # while frozen (freeze())
        self._freezer: freeze.Freezer | None = None  # while frozen: who was group-stopped
        self._buffers = BufferPool()

    # -- the tree ------------------------------------------------------------------------------
    def tasks(self, root: int) -> list[TaskInfo]:
        """The tree under root, pre-order; the root's ppid is 0, as the root of a set has
        no parent in it (ModelHost does the same)."""
        tree = procfs.discover_tree(root)
        return [replace(tree[0], ppid=0), *tree[1:]]

    def maps(self, pid: int) -> str:
        return procfs.task_maps(pid)

    def exe(self, pid: int) -> str:
        """The binary mm->exe_file names (/proc/PID/exe, proc_exe_link); "" when it has none."""
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return ""

    def gate_area(self, pid: int) -> bool:
        """Whether maps shows the x86_64 vsyscall page (get_gate_vma; not with vsyscall=none)."""
        return procfs.GATE_AREA in procfs.read_maps(pid)

    def smaps(self, pid: int) -> list[procfs.Smaps]:
        return procfs.read_smaps(pid)

    def vmas(self, pid: int) -> list[tuple[MapEntry, procfs.Smaps, str]]:
        """(maps entry, smaps, kind) per VMA; kinds hugetlb, device and special cannot be
        dumped and shared-file is referenced, not copied (procfs.vma_kind)."""
        return procfs.read_vmas(pid)

    # -- page tables ---------------------------------------------------------------------------
    def pagemap(self, pid: int, start: int, end: int) -> bytes:
        return pagemap.read_pagemap(pid, start, end)

    def has_pagemap_scan(self) -> bool:
        if self._has_scan is None:
            self._has_scan = pagemap.has_pagemap_scan()
        return self._has_scan

    def pagemap_scan(
        self, pid: int, start: int, end: int, anyof: int, return_mask: int
    ) -> list[tuple[int, int, int]] | None:
        if not self.has_pagemap_scan():
            return None
        return pagemap.pagemap_scan(pid, start, end, anyof=anyof, return_mask=return_mask)

    def show_pfn(self) -> bool:
        """Measured, not inferred from capabilities: does our own pagemap show a frame?"""
        if self._show_pfn is None:
            self._show_pfn = check.check_pfn().ok
        return self._show_pfn

    def zero_pfn(self) -> int | None:
        """The shared zero page's PFN, found as CRIU's kerndat_get_zero_page does: read-fault
        a private anonymous page of our own (do_anonymous_page maps the zero page for a read)
        and read its PFN from our pagemap. None when PFNs are hidden from us."""
        if self._zero_pfn is False:
            self._zero_pfn = None
            if self.show_pfn():
                addr = libc.mmap(PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
                try:
                    ctypes.c_char.from_address(addr).value  # noqa: B018 - the read fault
                    word = int.from_bytes(pagemap.read_pagemap(os.getpid(), addr,
                                                               addr + PAGE_SIZE), "little")
                finally:
                    libc.munmap(addr, PAGE_SIZE)
                if word & PM_PRESENT and word & PM_PFRAME_MASK:
                    self._zero_pfn = word & PM_PFRAME_MASK
        return self._zero_pfn  # type: ignore[return-value]

    # -- shared objects ------------------------------------------------------------------------
    def open_object(self, pid: int, start: int, end: int) -> MapFile:
        obj = MapFile.open(pid, start, end)
        obj.pool = self._buffers
        if self._cache is not None:
            st = os.fstat(obj.fd)
            obj.on_read = partial(self._cache.add_object, (st.st_dev, st.st_ino))
        return obj

    def mincore(self, pid: int, start: int, end: int) -> bytes:
        """mincore of a shared mapping of pid, asked on our own mapping of its object.

        mincore has no pid argument; for a private range only code running in the target
        (a parasite) could ask, so that is refused with Unsupported."""
        vma = self._vma(pid, start, end)
        if not vma.shared or not vma.path.startswith("/"):
            raise Unsupported(
                f"pid {pid}: mincore of {start:#x}-{end:#x} ({vma.perms} {vma.path or 'anon'}):"
                " only shared mappings can be asked from outside the task (mincore works on"
                " the caller's mm)"
            )
        with MapFile.open(pid, vma.start, vma.end) as obj:
            return obj.mincore(vma.pgoff + (start - vma.start), end - start)

    def _vma(self, pid: int, start: int, end: int) -> MapEntry:
        for e in parse_maps(self.maps(pid)):
            if e.start <= start < e.end:
                if end > e.end:
                    raise Unsupported(f"pid {pid}: {start:#x}-{end:#x} spans more than one "
                                      f"mapping (the first ends at {e.end:#x})")
                return e
        raise ProcError(pid, f"/proc/{pid}/maps", 0, f"no mapping contains {start:#x}")

    # -- private memory ------------------------------------------------------------------------
    def read_memory_partial(self, pid: int, start: int, end: int
                            ) -> tuple[bytes, list[tuple[int, int]]]:
        """The bytes of [start, end) and the page ranges that could not be read (zeros).

        Pages that pagemap shows as neither present nor swapped are zeros and are not read:
        reading them would install PTEs (zero page / page cache) in the target."""
        buf = bytearray(end - start)
        bad = self.read_memory_into(pid, start, buf)
        return bytes(buf), bad

    def read_memory_into(self, pid: int, start: int, buf: bytearray | memoryview
                         ) -> list[tuple[int, int]]:
        """read_memory_partial into a caller's (reused) buffer: [start, start + len(buf))."""
        end = start + len(buf)
        if start % 4096 or end % 4096:
            raise ValueError(f"read_memory: {start:#x}-{end:#x} is not page aligned")
        words = self.pagemap(pid, start, end)
        return memread.read_range_into(pid, start, words, self.show_pfn(), buf)

    def read_memory(self, pid: int, start: int, end: int) -> bytes:
        """The bytes of [start, end); UnreadableMemory (an OSError, EFAULT) if a page that
        holds data cannot be read. Returns a view of the buffer it read into (no copy; from
        the pool, page aligned, reused only once the caller and whoever it handed the view
        to have dropped it). While frozen, its pages are digested beside the caller for
        truth() (digestcache).

        Read in line, not ahead in a thread: the pages writer already writes in a thread of
        its own (dumper.images.pages), which is where the overlap pays."""
        if start % 4096 or end % 4096:
            raise ValueError(f"read_memory: {start:#x}-{end:#x} is not page aligned")
        buf = self._buffers.get(end - start)  # warm, aligned memory; see dumper.buffers
        words = self.pagemap(pid, start, end)
        bad = memread.read_range_into(pid, start, words, self.show_pfn(), buf)
        if self._cache is not None:
            self._cache.add_private(pid, start, words, buf, bad)
        if bad:
            raise UnreadableMemory(pid, bad)
        return memoryview(buf)  # type: ignore[return-value]

    def rseq_areas(self, pid: int) -> list[tuple[int, int]]:
        """(address, size) of each thread's registered struct rseq, by
        PTRACE_GET_RSEQ_CONFIGURATION (kernel/ptrace.c ptrace_get_rseq_configuration: the
        threads must be ptrace-stopped, i.e. frozen). The kernel rewrites these fields on its
        own — rseq_update_cpu_node_id on every return to user space after the thread ran on
        another CPU, and clears rseq_cs — so they change between two looks at a task that
        ran nothing (measured on 6.18: cpu_id 1, then 0, across a freeze and thaw of a task
        blocked in read(2)). A thread without rseq, or not stopped, gives nothing."""
        out = []
        conf = ctypes.create_string_buffer(24)
        for tid in procfs.threads(pid):
            try:
                libc.ptrace(libc.PTRACE_GET_RSEQ_CONFIGURATION, tid, len(conf),
                            ctypes.addressof(conf))
            except OSError:  # not stopped by us, gone, or a kernel without it
                continue
            ptr, size = int.from_bytes(conf.raw[:8], "little"), int.from_bytes(
                conf.raw[8:12], "little")
            if ptr and size:
                out.append((ptr, size))
        return out

    def kernel_areas(self, pid: int) -> list[tuple[int, int]]:
        """rseq_areas, and the struct timespec a thread stopped inside nanosleep(2) or
        clock_nanosleep(2) gets its remaining time in: kernel/time/hrtimer.c
        hrtimer_nanosleep -> do_nanosleep -> nanosleep_copyout writes it each time the sleep
        is interrupted, and a freeze (PTRACE_INTERRUPT) is such a time, so every dump and
        verify of a sleeping task rewrites it (measured: `sleep 300` dumped, then verified,
        differed in one stack page, there). Read from the thread's registers while frozen:
        orig_ax 35 (nanosleep, rem in rsi) or 230 (clock_nanosleep, rem in r10)."""
        out = self.rseq_areas(pid)
        for tid in procfs.threads(pid):
            try:
                r = regs.get_gpregs(tid)
            except OSError:  # not stopped by us, or gone
                continue
            rem = {35: r["si"], 230: r["r10"]}.get(r["orig_ax"], 0)
            if rem:
                out.append((rem, 16))
        return out

    # -- process state -------------------------------------------------------------------------
    def task_states(self, tasks: list[TaskInfo], leave_out: frozenset[str] = frozenset()
                    ) -> tuple[list[taskstate.TaskState], dict[str, int]]:
        """Registers, signal state, credentials, files... of each frozen task
        (dumper.linux.taskstate); zombies as CRIU records them."""
        fz = self._freezer
        stopped = {tr.pid for tr in fz.tracees.values() if tr.was_group_stopped} if fz else set()
        states = [taskstate.task_state(t.pid, procfs.threads(t.pid), leave_out,
                                       stopped=t.pid in stopped) for t in tasks]
        taskstate.check_unix_peers(states, leave_out)
        taskstate.assign_kobj_ids(states)
        taskstate.assign_descriptions(states)
        own = taskstate.ns_inodes(os.getpid())
        seen = {own.get("ipc")}
        for st in states:  # an IPC namespace of the tree's own: its objects, once
            ino = st.ns.get("ipc")
            if st.live and st.state != DEAD and ino not in seen:
                seen.add(ino)
                st.ipcns = ipcns.read_ipc_namespace(st.pid)
        return states, own

    # -- ground truth --------------------------------------------------------------------------
    def truth(self, pid: int) -> list[tuple[int, np.ndarray]]:
        """For every VMA of pid, (start, blake2b-64 digest of each page as the task would read
        it now); see dumper.linux.truth. Never populates the target."""
        buf = self._buffers.get(truth.WINDOW_PAGES * PAGE_SIZE)
        return truth.task_truth(pid, self.show_pfn(), self.zero_pfn(), self._cache, buf)

    # -- freezing ------------------------------------------------------------------------------
    @contextmanager
    def freeze(self, pids: Iterable[int], leave_stopped: bool | None = None
               ) -> Iterator[freeze.Freezer]:
        """Stop these processes (all threads) for the context; thawed on every way out. While
        frozen, pages read are digested beside the reader for truth() (digestcache)."""
        with self._frozen(list(pids), None, leave_stopped) as fz:
            yield fz

    @contextmanager
    def freeze_tree(self, root: int, leave_stopped: bool | None = None
                    ) -> Iterator[list[TaskInfo]]:
        """Freeze the tree under root as it is discovered (no fork can slip between finding
        a process and stopping it); yields the tasks, as tasks(root) would list them (the
        root's ppid 0). Pages read meanwhile are digested for truth(), as under freeze()."""
        with self._frozen([], root, leave_stopped) as fz:
            yield [replace(fz.tree[0], ppid=0), *fz.tree[1:]]

    @contextmanager
    def _frozen(self, pids: list[int], root: int | None, leave_stopped: bool | None
                ) -> Iterator[freeze.Freezer]:
        stop = self.leave_stopped if leave_stopped is None else leave_stopped
        with freeze.frozen(pids, root=root, leave_stopped=stop) as fz:
            cache = DigestCache(self.zero_pfn()) if self.digest_while_reading else None
            outer, self._cache = self._cache, cache
            outer_fz, self._freezer = self._freezer, fz
            try:
                yield fz
            finally:
                self._cache, self._freezer = outer, outer_fz
                if cache is not None:
                    cache.close()  # before the thaw
