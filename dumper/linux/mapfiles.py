"""/proc/PID/map_files: the shared object behind a mapping, read without touching the target.

Opening needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the initial user namespace
(fs/proc/base.c proc_map_files_get_link); the fd is a new struct file on the mapping's inode,
so lseek and pread on it never create PTEs in the target (kernel.md section 6).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from dumper.buffers import BufferPool
from dumper.host import ObjectStat
from dumper.kabi import MAP_SHARED, PAGE_SIZE, PROT_READ, SEEK_DATA, SEEK_HOLE
from dumper.linux import libc
from dumper.linux.errors import ProcError

READ_CHUNK = 8 << 20


def map_files_path(pid: int, start: int, end: int) -> str:
    return f"/proc/{pid}/map_files/{start:x}-{end:x}"


class MapFile:
    """An open map_files entry; satisfies dumper.host.ObjectHandle."""

    def __init__(self, pid: int, start: int, end: int, fd: int) -> None:
        self.pid, self.start, self.end, self.fd = pid, start, end, fd
        self.path = map_files_path(pid, start, end)
        # Told (offset, bytes) of every pread: LinuxHost digests them beside the dump.
        self.on_read: Callable[[int, bytes], None] | None = None
        # Where big reads go (LinuxHost's pool: warm, page-aligned memory), if anywhere.
        self.pool: BufferPool | None = None

    @classmethod
    def open(cls, pid: int, start: int, end: int) -> MapFile:
        """open(2) -> proc_map_files_get_link; EPERM without CAP_CHECKPOINT_RESTORE/SYS_ADMIN,
        ENOENT for a mapping without a file (private anonymous) or a pid that is gone."""
        path = map_files_path(pid, start, end)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            detail = ""
            if e.errno == errno.ENOENT and os.path.exists(f"/proc/{pid}"):
                detail = "no file-backed mapping with exactly that range"
            raise ProcError.from_os(pid, path, e, detail) from None
        return cls(pid, start, end, fd)

    def __enter__(self) -> MapFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def stat(self) -> ObjectStat:
        """fstat(2) -> shmem_getattr: (dev, ino) identify the object across processes; and
        fstatfs(2): shmem only on tmpfs (TMPFS_MAGIC: MAP_SHARED|MAP_ANONYMOUS, memfd, SysV
        and tmpfs files all live on shmem mounts; a hugetlbfs memfd or an ext4 file do not).

        Measured: st_dev is makedev() of the maps line's major:minor and st_ino its inode,
        the same from every process that maps the object (memfd passed by SCM_RIGHTS too)."""
        st = os.fstat(self.fd)
        fs = libc.fstatfs_type(self.fd) if stat.S_ISREG(st.st_mode) else 0
        # hugetlbfs (MAP_HUGETLB, MFD_HUGETLB, SHM_HUGETLB): st_blksize is the huge page size
        # (hugetlbfs_getattr via generic_fillattr: i_blkbits = huge_page_shift).
        huge = st.st_blksize if fs == libc.HUGETLBFS_MAGIC else 0
        return ObjectStat(dev=st.st_dev, ino=st.st_ino, size=st.st_size,
                          shmem=fs == libc.TMPFS_MAGIC, huge_page_size=huge)

    def lseek(self, offset: int, whence: int) -> int:
        """lseek(2) -> mm/shmem.c shmem_file_llseek (mapping_seek_hole_data for DATA/HOLE).

        Swapped-out pages are data and are not swapped in; ENXIO past the last data/i_size."""
        return os.lseek(self.fd, offset, whence)

    def data_extents(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """The [start, end) byte extents holding data, by alternating SEEK_DATA/SEEK_HOLE."""
        size = os.fstat(self.fd).st_size
        end = size if end is None else min(end, size)
        out: list[tuple[int, int]] = []
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data at or after pos
                    break
                raise
            if data >= end:
                break
            try:
                hole = os.lseek(self.fd, data, SEEK_HOLE)
            except OSError as e:  # the object shrank under us: the rest is gone
                if e.errno == errno.ENXIO:
                    break
                raise
            out.append((data, min(hole, end)))
            pos = hole
        return out

    def pread(self, offset: int, length: int) -> bytes:
        """pread(2) -> shmem_file_read_iter (SGP_READ): holes read as zeros without being
        allocated; swapped pages are swapped into the page cache, not into the target.

        Returns a view of the buffer read into: a pooled one for big reads (warm, aligned
        memory), a new one otherwise. Past the end of the file it holds zeros, as the last
        page of an object whose size is no multiple of the page size reads through a
        mapping (a SysV segment of 56 bytes is one page: 56 bytes of data, then zeros);
        short only where a whole page lies past the end."""
        big = self.pool is not None and length >= self.pool.MIN_POOLED
        buf = self.pool.get(length) if big else bytearray(length)  # type: ignore[union-attr]
        got = self.readinto(offset, buf)
        end = min(length, -(-got // PAGE_SIZE) * PAGE_SIZE)
        memoryview(buf)[got:end] = bytes(end - got)
        data = memoryview(buf)[:end]
        if self.on_read is not None:
            self.on_read(offset, data)
        return data  # type: ignore[return-value]

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill buf from offset with as few preadv calls as the kernel allows; returns the
        byte count (short only at end of file)."""
        view = memoryview(buf)
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done : done + READ_CHUNK]], offset + done)
            if n == 0:
                break
            done += n
        return done

    def mincore(self, offset: int, length: int) -> bytes:
        """Residency of [offset, offset+length) of the object, one byte per page.

        mincore(2) only answers for the caller's own mm, so map the object here (PROT_READ,
        MAP_SHARED; nothing is faulted in) and ask about that mapping: do_mincore ->
        mincore_pte_range -> __mincore_unmapped_range -> mincore_page on the object's page
        cache (swap cache counts as resident). can_do_mincore wants us to own the inode or be
        able to open it for writing (root: inode_owner_or_capable via CAP_FOWNER); otherwise
        the kernel answers all 1s."""
        if offset % PAGE_SIZE:
            raise ValueError(f"mincore offset {offset:#x} is not page aligned")
        if length <= 0:
            return b""
        addr = libc.mmap(length, PROT_READ, MAP_SHARED, self.fd, offset)
        try:
            return libc.mincore(addr, length)
        finally:
            libc.munmap(addr, length)
