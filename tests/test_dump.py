"""The dump pipeline on the model: what it stores, what it stores once, and that a restore
gives every task back every byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumper.dump import DumpError, dump
from dumper.images.reader import ImageSet
from dumper.kabi import MADV_GUARD_INSTALL, PAGE_SIZE
from dumper.model import PROFILES, Model
from dumper.model.host import ModelHost, ModelTarget
from dumper.restore import restore
from dumper.scenarios.format import parse
from dumper.scenarios.randgen import random_program
from dumper.scenarios.run import dump_restore_verify
from dumper.verify import verify

P = PAGE_SIZE


def roundtrip(m: Model, root: int, tmp_path, strategy="auto", **kw):
    out = tmp_path / f"set-{strategy}"
    summary = dump(ModelHost(m), root, str(out), strategy, profile=m.profile.name, **kw)
    images = ImageSet.open(out)
    target = ModelTarget(Model(m.profile))
    rs = restore(images, target)
    return summary, images, target, rs, verify(images, target)


def test_cow_shared_private_pages_are_stored_once_and_restored_shared(tmp_path):
    """CRIU stores COW-shared pages once per process (its issue #2386); we store them once and
    the restore re-establishes the sharing: the restored child maps the parent's frames."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 64 * P)
    m.write(a, r, 64 * P)
    b = m.fork(a, "B")
    c = m.fork(a, "C")
    m.write(b, r, 4 * P)  # B breaks COW on 4 pages
    summary, images, target, rs, report = roundtrip(m, a, tmp_path)
    assert report.ok, report.line()
    assert summary.private_pages == 64 + 4
    assert summary.cow_pages == 60 + 64
    assert images.tasks[b].present_pages == 4
    assert sum(cr.nr_pages for cr in images.tasks[c].cow) == 64
    assert rs.pages_shared == 60 + 64
    k = target.model.k
    frames_b = target.model.pagemap(b, r, 64 * P) & np.uint64((1 << 55) - 1)
    frames_a = target.model.pagemap(a, r, 64 * P) & np.uint64((1 << 55) - 1)
    assert (frames_a[4:] == frames_b[4:]).all() and (frames_a[:4] != frames_b[:4]).all()
    assert k.frames.allocated == 64 + 4  # not 3 x 64: sharing restored
    images.close()


def test_shared_object_is_dumped_once_for_all_sharers(tmp_path):
    m = Model("linux-6.18")
    a = m.spawn("A")
    fd = m.memfd_create(a, "buf", 16 * P)
    m.pwrite(a, fd, 0, 16 * P)
    ra = m.mmap(a, 16 * P, shared=True, fd=fd)
    b = m.fork(a, "B")
    m.mmap(b, 8 * P, shared=True, fd=fd, offset=8 * P)  # a second mapping, at an offset
    m.read(a, ra, P)
    summary, images, target, _, report = roundtrip(m, a, tmp_path)
    assert report.ok
    assert summary.shared_objects == 1 and summary.shared_pages == 16
    (obj,) = images.objects.values()
    assert obj.kind == "memfd" and obj.name == "buf" and obj.size == 16 * P
    images.close()


def test_auto_skips_the_zero_page_and_markers_but_keeps_migration_entries(tmp_path):
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 8 * P)
    m.write(a, r, 4 * P)
    m.read(a, r + 4 * P, 2 * P)  # zero page
    m.madvise(a, r + 6 * P, P, MADV_GUARD_INSTALL)
    m.migrate(a, r, 2 * P, finish=False)
    summary, images, _, _, report = roundtrip(m, a, tmp_path)
    assert report.ok
    assert summary.private_pages == 4
    assert [(g.vaddr, g.nr_pages, g.kind) for g in images.tasks[a].guards] == [
        (r + 6 * P, 1, "guard")]
    images.close()
    naive = roundtrip(m, a, tmp_path, "pagemap")
    assert naive[0].private_pages == 7  # the zero pages and the guard page too
    assert not naive[0].unreadable  # a marker holds no data: read as zeros, as on Linux
    assert naive[4].ok  # zeros for zeros, and the guard restored: nothing lost
    naive[1].close()


class FaultyHost(ModelHost):
    """The model, but the private page at bad_addr and the object page at bad_offset cannot
    be read (as a VM_IO page, or an I/O error of the object's backing store)."""

    def __init__(self, model: Model, bad_addr: int, bad_offset: int) -> None:
        super().__init__(model)
        self.bad_addr, self.bad_offset = bad_addr, bad_offset

    def read_memory(self, pid: int, start: int, end: int) -> bytes:
        if start <= self.bad_addr < end:
            raise OSError(5, "Input/output error")
        return super().read_memory(pid, start, end)

    def open_object(self, pid: int, start: int, end: int):
        h = super().open_object(pid, start, end)
        read, bad = h.pread, self.bad_offset

        def pread(offset: int, length: int) -> bytes:
            if offset <= bad < offset + length:
                raise OSError(5, "Input/output error")
            return read(offset, length)

        h.pread = pread
        return h


def test_a_page_that_cannot_be_read_is_recorded_not_zeroed(tmp_path):
    """A dump never stores a page it could not read as if it were zeros: it records it in
    unreadable.img (pid/object, address, why), the summary names it, and a verify of the
    restore counts it lost."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 8 * P)
    m.write(a, r, 8 * P)
    fd = m.memfd_create(a, "buf", 4 * P)
    m.pwrite(a, fd, 0, 4 * P)
    m.mmap(a, 4 * P, shared=True, fd=fd)
    out = tmp_path / "set"
    summary = dump(FaultyHost(m, r + 3 * P, 2 * P), a, str(out), profile=m.profile.name)
    shmid = next(iter(ImageSet.open(out).objects))
    assert [(u.pid, u.vaddr, u.nr_pages, u.reason, u.shmid) for u in summary.unreadable] == [
        (0, 2 * P, 1, "Input/output error", shmid), (a, r + 3 * P, 1, "Input/output error",
                                                      None)]
    assert "2 pages UNREADABLE, not saved" in summary.line()
    assert summary.private_pages == 7 and summary.shared_pages == 3
    from click.testing import CliRunner

    from dumper.cli import main

    shown = CliRunner().invoke(main, ["inspect", "info", str(out)])
    assert shown.exit_code == 0, shown.output
    assert f"UNREADABLE at dump time, not saved: pid {a} {r + 3 * P:#x}+1 pages " \
        "(Input/output error)" in shown.output
    with ImageSet.open(out) as images:
        assert images.unreadable == summary.unreadable
        assert [(r_.vaddr, r_.nr_pages) for r_ in images.tasks[a].pagemap
                if r <= r_.vaddr < r + 8 * P] == [(r, 3), (r + 4 * P, 4)]
        assert images.read_page(a, r + 3 * P).data is None
        report = verify(images, restore_into_model(images, m))
    assert sorted((p.pid, p.addr, p.shmid) for p in report.lost) == sorted(
        [(a, r + 3 * P, None), (a, next(v.start for v in images.tasks[a].vmas
                                        if v.obj == shmid) + 2 * P, shmid)])


def restore_into_model(images: ImageSet, m: Model) -> ModelTarget:
    target = ModelTarget(Model(m.profile))
    restore(images, target)
    return target


def test_zstd_pages_roundtrip(tmp_path):
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 256 * P, shared=True)
    m.write(a, r, 256 * P)
    summary, images, _, _, report = roundtrip(m, a, tmp_path, compress="zstd", level=5)
    assert report.ok
    info = next(iter(images.pages.values()))
    assert images.meta.compression == "zstd"
    assert summary.bytes_written < 256 * P // 4
    assert info.raw_size >= info.stored_size or info.nr_pages == 0
    images.close()


def test_verify_names_lost_pages(tmp_path):
    """A pagemap dump of scenario 1 loses B's shared pages: the report names pid, address,
    object and offset, and counts each object page once."""
    m = Model("linux-6.18")
    a = m.spawn("A")
    r = m.mmap(a, 4 * P, shared=True)
    m.write(a, r, 4 * P)
    b = m.fork(a, "B")
    m.munmap(a, r, 4 * P)
    c = m.fork(b, "C")  # a second mapper of the same object: still 4 losses, not 8
    summary, images, _, _, report = roundtrip(m, a, tmp_path, "pagemap")
    assert not report.ok
    assert report.shared_lost == 4 and report.private_lost == 0
    lost = sorted(report.lost, key=lambda x: x.offset)
    assert [x.offset for x in lost] == [0, P, 2 * P, 3 * P]
    assert {x.pid for x in lost} <= {b, c}
    assert all(x.addr == r + x.offset for x in lost)
    assert "object" in lost[0].describe()
    images.close()


def test_dump_refuses_an_unknown_strategy(tmp_path):
    m = Model()
    a = m.spawn("A")
    with pytest.raises(DumpError, match="unknown strategy"):
        dump(ModelHost(m), a, str(tmp_path / "x"), "psychic")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), profile=st.sampled_from(sorted(PROFILES)))
def test_object_based_strategies_never_lose(seed, profile):
    """For random operation programs on random trees, auto, lseek and all lose nothing under
    any profile, and no strategy's selection changes page state."""
    import random

    sc = parse(random_program(random.Random(seed), 12, f"seed-{seed}"), f"seed-{seed}.scn")
    for strategy in ("auto", "lseek", "all", "pagemap", "mincore-or"):
        o = dump_restore_verify(sc, profile, strategy, lenient=True)
        assert o.selection_unchanged, (strategy, sc.text)
        if strategy in ("auto", "lseek", "all"):
            assert o.lost == 0, (strategy, [p.describe() for p in o.lost_pages[:4]], sc.text)
