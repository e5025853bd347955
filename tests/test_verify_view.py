"""image_view (what a restore from a set gives each page, as digests) reads runs in bulk;
it must agree page for page with resolving every page alone through ImageSet.read_page, the
restore's own lookup — on the golden sets, every library scenario and random programs."""

from __future__ import annotations

import numpy as np
import pytest
from imagesupport import build

from dumper.dump import dump
from dumper.images import golden
from dumper.images.checksums import UNREADABLE_DIGEST
from dumper.images.flags import VMA_AREA_VSYSCALL
from dumper.images.reader import ImageSet
from dumper.kabi import PAGE_SIZE
from dumper.model.host import ModelHost
from dumper.model.kernels import load_profile
from dumper.scenarios.check import library, resolve
from dumper.scenarios.format import parse
from dumper.scenarios.randgen import random_program
from dumper.scenarios.run import build as build_world
from dumper.verify import image_view, page_view


def reference_view(images: ImageSet, pid: int, vma_start: int, npages: int) -> np.ndarray:
    """image_view's specification: every page resolved alone, then the guard runs."""
    t = images.tasks[pid]
    vma = next(v for v in t.vmas if v.start == vma_start)
    out = np.array([page_view(images, pid, vma, vma_start + i * PAGE_SIZE)
                    for i in range(npages)], dtype=np.uint64)
    for g in t.guards:
        a = max(g.vaddr, vma_start)
        b = min(g.vaddr + g.nr_pages * PAGE_SIZE, vma_start + npages * PAGE_SIZE)
        if a < b:
            out[(a - vma_start) // PAGE_SIZE : (b - vma_start) // PAGE_SIZE] = UNREADABLE_DIGEST
    return out


def assert_views_agree(path) -> int:
    checked = 0
    with ImageSet.open(path) as s:
        for t in s.tasks.values():
            for v in t.vmas:
                if v.status & VMA_AREA_VSYSCALL:
                    continue  # the kernel's gate page: verify_live skips it too
                n = (v.end - v.start) // PAGE_SIZE
                got, want = image_view(s, t.pid, v.start, n), reference_view(s, t.pid, v.start, n)
                bad = np.nonzero(got != want)[0]
                assert not len(bad), f"{path}: pid {t.pid} {v.start:#x}: pages {bad[:8]}"
                checked += n
    return checked


@pytest.mark.parametrize("variant", golden.VARIANTS)
def test_golden_sets(tmp_path, variant):
    assert assert_views_agree(build(tmp_path, variant)) > 0


@pytest.mark.parametrize("name", [f.stem for f in library()])
@pytest.mark.parametrize("strategy", ["auto", "pagemap"])
def test_library(tmp_path, name, strategy):
    sc = resolve(name)
    profile = load_profile("linux-6.18")
    world = build_world(sc, profile)
    out = tmp_path / "set"
    dump(ModelHost(world.model), world.pids[sc.dump_root], str(out), strategy,
         profile=profile.name)
    assert assert_views_agree(out) > 0


# Mappings at offsets into their objects, shared and private, with COW across a fork.
OFFSETS = """
    task A
    memfd A f 16
    pwrite A f 0-5,9-12
    mmap A s 8 shared fd=f offset=4
    mmap A p 8 private fd=f offset=8
    mmap A q 4 shared fd=f
    write A p 1,3
    fork A B
    write B s 0
    write B p 2
    dump A
"""


def test_mappings_at_object_offsets(tmp_path):
    sc = parse(OFFSETS, "offsets.scn")
    profile = load_profile("linux-6.18")
    world = build_world(sc, profile)
    out = tmp_path / "set"
    dump(ModelHost(world.model), world.pids[sc.dump_root], str(out), "auto",
         profile=profile.name)
    assert assert_views_agree(out) == 2 * (8 + 8 + 4)


@pytest.mark.parametrize("seed", range(8))
def test_random_programs(tmp_path, seed):
    import random

    sc = parse(random_program(random.Random(seed), 12, f"seed-{seed}"), f"seed-{seed}.scn")
    profile = load_profile("linux-6.18")
    world = build_world(sc, profile, lenient=True)
    out = tmp_path / "set"
    dump(ModelHost(world.model), world.pids[sc.dump_root], str(out), "auto",
         profile=profile.name)
    assert_views_agree(out)
