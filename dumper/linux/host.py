"""LinuxHost: the Host protocol (dumper/host.py) answered by the running kernel."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from dumper.host import MapEntry, TaskInfo, parse_maps
from dumper.linux import check, freeze, memread, pagemap, procfs
from dumper.linux.errors import ProcError, UnreadableMemory, Unsupported
from dumper.linux.mapfiles import MapFile


class LinuxHost:
    """The real kernel through /proc, ptrace, process_vm_readv, PAGEMAP_SCAN and map_files.

    Shared memory is read through map_files fds and private memory through
    process_vm_readv of the pages pagemap says hold data, so asking never changes the
    target's page tables (kernel.md sections 6 and 9)."""

    kind = "linux"

    def __init__(self, leave_stopped: bool = False) -> None:
        self.leave_stopped = leave_stopped
        self._has_scan: bool | None = None
        self._show_pfn: bool | None = None

    # -- the tree ------------------------------------------------------------------------------
    def tasks(self, root: int) -> list[TaskInfo]:
        return procfs.discover_tree(root)

    def maps(self, pid: int) -> str:
        return procfs.read_maps(pid)

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

    # -- shared objects ------------------------------------------------------------------------
    def open_object(self, pid: int, start: int, end: int) -> MapFile:
        return MapFile.open(pid, start, end)

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
        data, bad = self.read_memory_partial(pid, start, end)
        if bad:
            raise UnreadableMemory(pid, bad)
        return data

    # -- freezing ------------------------------------------------------------------------------
    def freeze(self, pids: Iterable[int], leave_stopped: bool | None = None
               ) -> AbstractContextManager[freeze.Freezer]:
        """Stop these processes (all threads) for the context; thawed on every way out."""
        stop = self.leave_stopped if leave_stopped is None else leave_stopped
        return freeze.frozen(list(pids), leave_stopped=stop)

    @contextmanager
    def freeze_tree(self, root: int, leave_stopped: bool | None = None
                    ) -> Iterator[list[TaskInfo]]:
        """Freeze the tree under root as it is discovered (no fork can slip between finding
        a process and stopping it); yields the tasks, as tasks(root) would list them."""
        stop = self.leave_stopped if leave_stopped is None else leave_stopped
        with freeze.frozen(root=root, leave_stopped=stop) as fz:
            yield fz.tree
