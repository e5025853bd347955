"""Seccomp filters come back: dumper dumps each thread's filters as CRIU does
(PTRACE_SECCOMP_GET_FILTER/GET_METADATA into seccomp.img, the thread core's seccomp_filter
naming its chain) and restores them as each thread's last calls, TSYNC where the threads
share them. rst_seccomp_filter.c checks itself after the restore: both filters act in both
threads, /proc shows mode 2 with 2 filters and NoNewPrivs, and one more TSYNC filter still
reaches the other thread (the chain is shared, not copied per thread).
"""

from __future__ import annotations

import pytest

from dumper.images import codec
from dumper.images.errors import ImageError
from dumper.images.proto import criu_images_pb2 as criu
from dumper.restore_state import _seccomp_chain

from .rst_build import build
from .test_linux_restore import CRIU, _passed, cycle
from .test_restore_exec import cycle as any_cycle

TSYNC, LOG = 1, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cprogs"), {"rst_seccomp_filter": ("rst_seccomp_filter",)})


def _need_criu() -> None:
    if not CRIU.exists():
        pytest.skip(f"CRIU 4.2 is not built at {CRIU}")


def _seccomp_img(images) -> list[tuple[bytes, int, int | None]]:
    img = codec.load(images / "seccomp.img")
    return [(f.filter, f.flags, f.prev if f.HasField("prev") else None)
            for f in img.entries[0].seccomp_filters]


def test_dumper_set_keeps_seccomp_filters_and_writes_criu_layout(built, tmp_path):
    res = cycle(built / "rst_seccomp_filter", tmp_path, "dumper")
    _passed(res)
    filters = _seccomp_img(tmp_path / "images")
    # newest first (sysinfo: nr 99, LOG), the oldest (uname: nr 63) last, prev -> newer;
    # both TSYNC: the two threads share one chain, kept on the leader
    assert [(len(f) // 8, flags, prev) for f, flags, prev in filters] == [
        (4, LOG | TSYNC, None), (4, TSYNC, 0)], filters
    assert filters[0][0][12:13] == bytes([99]) and filters[1][0][12:13] == bytes([63])
    root = res["root"]
    cores = {}
    for p in (tmp_path / "images").glob("core-*.img"):
        cores[int(p.stem[5:])] = codec.load(p).entries[0].thread_core
    assert cores[root].seccomp_mode == 2 and cores[root].seccomp_filter == 1, cores[root]
    other = [tc for tid, tc in cores.items() if tid != root]
    assert len(other) == 1 and other[0].seccomp_mode == 0, other  # from the leader's TSYNC


def test_criu_set_keeps_seccomp_filters(built, tmp_path):
    """CRIU 4.2's dump restored by dumper; its seccomp.img is the same as dumper's."""
    _need_criu()
    _passed(cycle(built / "rst_seccomp_filter", tmp_path / "criu", "criu", "--shell-job"))
    _passed(cycle(built / "rst_seccomp_filter", tmp_path / "dumper", "dumper"))
    assert _seccomp_img(tmp_path / "criu" / "images") == _seccomp_img(
        tmp_path / "dumper" / "images")


def test_criu_restores_dumper_seccomp_set(built, tmp_path):
    _need_criu()
    prog = built / "rst_seccomp_filter"
    _passed(any_cycle("criu_cycle.py", prog, tmp_path, "dumper", prog))


def test_a_bad_filter_index_is_an_image_error():
    class Img:
        path = "seccomp.img"
        entries = [criu.SeccompEntry(seccomp_filters=[criu.SeccompFilter(filter=bytes(8),
                                                                         prev=5)])]

    core = criu.CoreEntry()
    core.thread_core.seccomp_filter = 0
    with pytest.raises(ImageError, match="thread 9: seccomp filter index 5 is past its 1"):
        _seccomp_chain(Img, core, 9)
    core.thread_core.seccomp_filter = 0
    Img.entries[0].seccomp_filters[0].ClearField("prev")
    assert _seccomp_chain(Img, core, 9) == [(bytes(8), 0)]
