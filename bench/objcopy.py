"""How to copy a shared object's pages into a pages image with the fewest copies: 1 GiB of a
written memfd (tmpfs, as every shmem object is) into a new file on the disk, each method in
turn, repeats interleaved, medians and bests. The stored checksum needs the bytes in user
space once; which methods hash is said in their names.

    python -m bench.objcopy [--repeats 3] [--direct] [--dir /var/tmp]

--direct: the file is O_DIRECT and fsynced (the durable dump's way). copy_file_range(2) is
tried and reported when the kernel refuses it (tmpfs to ext4 is EXDEV: cross-filesystem).
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import statistics
import time

import xxhash

from dumper.kabi import MADV_POPULATE_READ

SIZE = 1 << 30
CHUNK = 8 << 20
F_SETPIPE_SZ = 1031


def pread_hash_write(src: int, fd: int, buf: mmap.mmap) -> None:
    h, mv = xxhash.xxh3_128(), memoryview(buf)
    for off in range(0, SIZE, CHUNK):
        os.preadv(src, [mv], off)
        h.update(mv)
        os.write(fd, mv)


def sendfile(src: int, fd: int, buf: mmap.mmap) -> None:
    for off in range(0, SIZE, CHUNK):
        n = 0
        while n < CHUNK:
            n += os.sendfile(fd, src, off + n, CHUNK - n)


def sendfile_hash_back(src: int, fd: int, buf: mmap.mmap) -> None:
    h, back = xxhash.xxh3_128(), os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        for off in range(0, SIZE, CHUNK):
            n = 0
            while n < CHUNK:
                n += os.sendfile(fd, src, off + n, CHUNK - n)
            os.preadv(back, [memoryview(buf)], off)  # the file's bytes, as stored
            h.update(buf)
    finally:
        os.close(back)


def copy_file_range(src: int, fd: int, buf: mmap.mmap) -> None:
    for off in range(0, SIZE, CHUNK):
        n = 0
        while n < CHUNK:
            n += os.copy_file_range(src, fd, CHUNK - n, off + n)


def splice_1mib_pipe(src: int, fd: int, buf: mmap.mmap) -> None:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        off = 0
        while off < SIZE:
            k = os.splice(src, w, min(1 << 20, SIZE - off), offset_src=off)
            off += k
            while k:
                k -= os.splice(r, fd, k)
    finally:
        os.close(r)
        os.close(w)


def mmap_populate_hash_write(src: int, fd: int, buf: mmap.mmap) -> None:
    h = xxhash.xxh3_128()
    m = mmap.mmap(src, SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    mv = memoryview(m)
    try:
        for off in range(0, SIZE, CHUNK):
            m.madvise(MADV_POPULATE_READ, off, CHUNK)
            h.update(mv[off : off + CHUNK])
            os.write(fd, mv[off : off + CHUNK])
    finally:
        mv.release()
        m.close()


METHODS = [pread_hash_write, sendfile, sendfile_hash_back, copy_file_range, splice_1mib_pipe,
           mmap_populate_hash_write]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.objcopy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--direct", action="store_true")
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    src = os.memfd_create("bench-objcopy")
    os.ftruncate(src, SIZE)
    with mmap.mmap(src, SIZE) as m:
        m.write(b"\x5a" * SIZE)
    buf = mmap.mmap(-1, CHUNK)
    buf.write(bytes(CHUNK))
    path = os.path.join(a.dir, f"bench-objcopy-{os.getpid()}")
    times: dict[str, list[float]] = {f.__name__: [] for f in METHODS}
    refused: dict[str, str] = {}
    try:
        for _ in range(a.repeats):
            for f in METHODS:
                if f.__name__ in refused:
                    continue
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if a.direct else 0)
                fd = os.open(path, flags, 0o600)
                t = time.perf_counter()
                try:
                    f(src, fd, buf)
                    if a.direct:
                        os.fsync(fd)
                    times[f.__name__].append(time.perf_counter() - t)
                except OSError as e:
                    refused[f.__name__] = os.strerror(e.errno or 0)
                finally:
                    os.close(fd)
                    os.unlink(path)
    finally:
        os.close(src)
    for name, v in times.items():
        if name in refused:
            print(f"{name:26s} refused: {refused[name]}")
        elif v:
            print(f"{name:26s} median {statistics.median(v):.3f} s  best {min(v):.3f} s  "
                  f"{[round(x, 2) for x in v]}")


if __name__ == "__main__":
    main()
