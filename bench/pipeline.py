"""Dump + restore + verify of the model scale tree (bench.model_scale.build), and lseek
selection cost against the number of extents of an object."""

from __future__ import annotations

import gc
import json
import resource
import shutil
import sys
import tempfile
import time

from bench.model_scale import build
from dumper.dump import dump
from dumper.images.reader import ImageSet
from dumper.kabi import PAGE_SIZE
from dumper.model import Model
from dumper.model.host import ModelHost, ModelTarget
from dumper.restore import restore
from dumper.select import lseek_extents
from dumper.verify import verify


def pipeline(total_gib: int, compress: str | None, threads: int = 0) -> dict:
    """Wall seconds of each phase, and its CPU seconds (all threads: what a loaded machine
    cannot hide)."""
    cpu = [time.process_time()]
    t0 = time.perf_counter()
    m, pids, _, _ = build(total_gib)
    t1 = time.perf_counter()
    cpu.append(time.process_time())
    tmp = tempfile.mkdtemp(prefix="dumper-bench-", dir="/var/tmp")
    try:
        out = f"{tmp}/set"
        s = dump(ModelHost(m), pids[0], out, "auto", profile="linux-6.18", compress=compress,
                 threads=threads)
        t2 = time.perf_counter()
        cpu.append(time.process_time())
        dump_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del m  # the dumped tree is gone before the restore, as after a checkpoint-and-kill
        gc.collect()
        with ImageSet.open(out) as images:
            t3 = time.perf_counter()
            cpu.append(time.process_time())
            target = ModelTarget(Model("linux-6.18"))
            rs = restore(images, target)
            t4 = time.perf_counter()
            cpu.append(time.process_time())
            report = verify(images, target)
            t5 = time.perf_counter()
            cpu.append(time.process_time())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert report.ok, report.line()
    return {
        "gib_mapped": total_gib, "compress": compress or "raw", "zstd_threads": threads,
        "pages_dumped": s.private_pages + s.shared_pages, "cow_pages": s.cow_pages,
        "image_mib": round(s.bytes_written / 2**20), "build_s": round(t1 - t0, 2),
        "dump_s": round(t2 - t1, 2), "open_verify_checksums_s": round(t3 - t2, 2),
        "restore_s": round(t4 - t3, 2), "verify_s": round(t5 - t4, 2),
        "pages_written": rs.pages_written, "pages_shared": rs.pages_shared,
        "dump_max_rss_mib": round(dump_rss / 1024),
        **{f"{k}_cpu_s": round(b - a, 2) for k, a, b in zip(
            ("build", "dump", "open", "restore", "verify"), cpu[:-1], cpu[1:], strict=True)},
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def lseek_cost(npages: int, extents: int) -> dict:
    """One object of npages with `extents` data extents: the lseek walk's calls and lookups."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "obj", npages * PAGE_SIZE)
    stride = npages // extents
    for i in range(extents):
        m.pwrite(a, fd, i * stride * PAGE_SIZE, max(1, stride // 2) * PAGE_SIZE)
    r = m.mmap(a, npages * PAGE_SIZE, shared=True, fd=fd)
    h = ModelHost(m).open_object(a, r, r + npages * PAGE_SIZE)
    before = m.k.counters.snapshot()
    t = time.perf_counter()
    found = lseek_extents(h, npages * PAGE_SIZE)
    dt = time.perf_counter() - t
    cost = m.k.counters.since(before)
    assert len(found) == extents
    return {"pages": npages, "extents": extents, "lseek_calls": cost.syscalls,
            "seconds": round(dt, 4)}


def main() -> dict:
    gib = int(sys.argv[sys.argv.index("--gib") + 1]) if "--gib" in sys.argv else 64
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 0
    res = pipeline(gib, "zstd", threads)
    res["lseek"] = [lseek_cost(p, e) for p, e in
                    ((1 << 16, 16), (1 << 20, 16), (1 << 24, 16), (1 << 20, 1024))]
    return res


if __name__ == "__main__":
    print(json.dumps(main()))

