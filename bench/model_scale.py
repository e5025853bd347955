"""Scale of the model: a 4-process tree mapping 64 GiB, a quarter written, forked, partly
reclaimed; then a full pagemap scan of every task and an lseek walk of the shared object."""

from __future__ import annotations

import resource
import time

from dumper.kabi import PAGE_SIZE, SEEK_DATA, SEEK_HOLE
from dumper.model import Model, ModelError
from dumper.model.observe import pagemap_read, shmem_file_llseek

GiB = 1 << 30


def build(total_gib: int = 64, profile: str = "linux-6.18") -> tuple[Model, list[int], int, int]:
    m = Model(profile)
    root = m.spawn("bench")
    half = total_gib * GiB // 2
    priv = m.mmap(root, half)
    shared = m.mmap(root, half, shared=True)
    quarter = half // 4
    # Write a quarter in 1 GiB-strided runs of 64 MiB, so state has many extents.
    step, run = GiB, 256 * PAGE_SIZE * 64
    for off in range(0, half, step // 4)[: quarter // run]:
        m.write(root, priv + off, run)
        m.write(root, shared + off, run)
    pids = [root] + [m.fork(root, f"child{i}") for i in range(3)]
    # Reclaim an eighth of what was written, in each mapping.
    m.reclaim(root, priv, quarter // 8)
    m.reclaim(root, shared, quarter // 8)
    return m, pids, priv, shared


def scan(m: Model, pids: list[int], shared: int) -> tuple[int, int]:
    words = 0
    for pid in pids:
        for vma in m.k.task(pid).vmas:
            chunk = 64 << 20  # a dumper reads pagemap in windows, as CRIU's pagemap cache does
            for a in range(vma.start, vma.end, chunk):
                b = min(vma.end, a + chunk)
                words += len(pagemap_read(m.k, pid, a, b)) // 8
    obj = m.object_at(pids[0], shared)
    extents = 0
    off = 0
    while True:
        try:
            off = shmem_file_llseek(m.k, obj, off, SEEK_DATA)
        except ModelError:
            break
        end = shmem_file_llseek(m.k, obj, off, SEEK_HOLE)
        extents += 1
        off = end
        if off >= obj.size:
            break
    return words, extents


def main() -> dict:
    t0 = time.perf_counter()
    m, pids, priv, shared = build()
    t1 = time.perf_counter()
    words, extents = scan(m, pids, shared)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "build_s": round(t1 - t0, 2),
        "scan_s": round(t2 - t1, 2),
        "pagemap_words": words,
        "lseek_extents": extents,
        "max_rss_mib": round(rss),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main()))
