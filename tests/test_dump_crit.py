"""Image sets dumped from the scenario library, read back by Debian's crit (3.17)."""

from __future__ import annotations

import json

import pytest
from imagesupport import crit

from dumper.images.reader import ImageSet
from dumper.model.host import ModelHost
from dumper.scenarios.check import resolve
from dumper.scenarios.run import build

pytestmark = pytest.mark.crit

OURS = ("dumper.img", "objects.img", "truth-", "cow-", "guards-", "pages-")


@pytest.fixture(scope="module", params=["1", "5", "8", "12", "14", "15"])
def dumped(request, tmp_path_factory):
    from dumper.dump import dump

    sc = resolve(request.param)
    w = build(sc, "linux-6.18")
    out = tmp_path_factory.mktemp(sc.name) / "set"
    dump(ModelHost(w.model), w.pids[sc.dump_root], str(out), "auto", profile="linux-6.18")
    return out


def test_crit_decodes_every_criu_image(dumped):
    images = ImageSet.open(dumped)
    for f in sorted(dumped.iterdir()):
        if f.name.startswith(OURS):
            continue
        doc = json.loads(crit("decode", "-i", str(f)))
        assert doc["entries"], f.name
        if f.name == "pstree.img":
            assert [(e["pid"], e["ppid"]) for e in doc["entries"]] == [
                (t.pid, t.ppid) for t in images.tasks.values()]
        if f.name.startswith("pagemap-") and not f.name.startswith("pagemap-shmem"):
            pid = int(f.name[len("pagemap-"):-4])
            runs = [(e["vaddr"], e["nr_pages"]) for e in doc["entries"][1:]]
            assert runs == [(r.vaddr, r.nr_pages) for r in images.tasks[pid].pagemap]
        if f.name.startswith("mm-"):
            pid = int(f.name[3:-4])
            vmas = [(v["start"], v["end"]) for v in doc["entries"][0].get("vmas", [])]
            assert vmas == [(v.start, v.end) for v in images.tasks[pid].vmas]
    images.close()


def test_crit_explores_the_tree_and_its_memory(dumped):
    """crit x ps and mems. (crit 3.17's mems raises KeyError 'vmas' for a task whose mm has no
    VMA left, as scenario 1's A after its munmap: such sets are checked with ps only.)"""
    images = ImageSet.open(dumped)
    ps = crit("x", str(dumped), "ps").decode()
    for t in images.tasks.values():
        assert any(line.split()[:1] == [str(t.pid)] and line.split()[-1] == t.comm
                   for line in ps.splitlines()), ps
    if any(not t.vmas for t in images.tasks.values()):
        images.close()
        return
    mems = crit("x", str(dumped), "mems").decode()
    for t in images.tasks.values():
        for v in t.vmas:
            assert f"{v.start:x}-{v.end:x}" in mems
    images.close()
