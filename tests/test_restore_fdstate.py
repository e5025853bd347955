"""files.img entries read back for a restore (dumper/restore_fdstate.py) give the FdState the
dump wrote them from (criustate.file_entry), kind by kind: the inverse, field for field."""

from __future__ import annotations

import pytest

from dumper.images.criustate import NsIds, fd_type, file_entry
from dumper.images.proto import criu_images_pb2 as criu
from dumper.restore_fdstate import READERS, Shared, fd_state
from dumper.state import FdState

OPTS = dict(so_sndbuf=212992, so_rcvbuf=131072, so_snd_tmo_sec=0, so_snd_tmo_usec=0,
            so_rcv_tmo_sec=0, so_rcv_tmo_usec=0, reuseaddr=True, so_reuseport=False,
            so_priority=0, so_rcvlowat=1, so_dontroute=False, so_no_check=False,
            so_broadcast=False, so_keepalive=True, so_oobinline=0, so_buf_lock=1)

STATES = {
    "unix pair end": FdState(
        fd=5, kind="socket", cloexec=True, flags=0o4002, ino=4242,
        sock=dict(type=1, state=1, backlog=0, name=b"", peer=4243, shutdown=2,
                  opts=dict(OPTS, so_passcred=False, so_passsec=False),
                  queue=[b"abc", b"defg"])),
    "unix listener": FdState(
        fd=6, kind="socket", cloexec=False, flags=0o2, ino=4244,
        sock=dict(type=1, state=10, backlog=9, name=b"listen.sock\0", peer=0,
                  name_dir="/tmp/x", file_perms=(0o140640, 0, 0), queue=[],
                  opts=dict(OPTS, so_passcred=True, so_passsec=False))),
    "udp": FdState(
        fd=7, kind="socket", cloexec=False, flags=0o2, ino=4245,
        sock=dict(family=2, type=2, proto=17, state=1, src_port=5353, src_addr=[16777343],
                  dst_port=53, dst_addr=[16777343], backlog=0, opts=OPTS,
                  ip_opts=dict(ttl=33), tcp_opts={}, shutdown=1)),
    "tcp6 listener": FdState(
        fd=8, kind="socket", cloexec=True, flags=0o4002, ino=4246,
        sock=dict(family=10, type=1, proto=6, state=10, src_port=8080, src_addr=[0, 0, 0, 1 << 24],
                  dst_port=0, dst_addr=[0, 0, 0, 0], backlog=17, opts=OPTS, ip_opts={},
                  tcp_opts=dict(nodelay=True, keepidle=77), v6only=True)),
    "eventfd": FdState(fd=9, kind="eventfd", cloexec=True, flags=0o4002, counter=7),
    "epoll": FdState(fd=10, kind="eventpoll", cloexec=False, flags=0o2,
                     targets=[(3, 0x19, 3, 0, 0x1ab, 9), (60, 0x80000001, 0xdef, 0, 0x1ac, 9)]),
    "signalfd": FdState(fd=11, kind="signalfd", cloexec=False, flags=0o4000, counter=1 << 11),
    "timerfd": FdState(fd=12, kind="timerfd", cloexec=False, flags=0o2,
                       timer=dict(clockid=1, ticks=3, settime_flags=0, vsec=1, vnsec=5,
                                  isec=2, insec=0)),
}


@pytest.mark.parametrize("what", sorted(STATES))
def test_read_back_is_what_was_written(what):
    fd = STATES[what]
    ns = NsIds()
    fe = file_entry(21, fd, ns=ns)
    entry = criu.FdinfoEntry(id=21, flags=int(fd.cloexec), type=fd_type(fd), fd=fd.fd)
    assert entry.type in READERS
    back = fd_state("fdinfo-1.img", 0, 100, entry, {21: fe}, Shared(queues=ns.unix_queues))
    assert (back.fd, back.kind, back.cloexec, back.flags, back.desc) == \
        (fd.fd, fd.kind, fd.cloexec, fd.flags, 21)
    if fd.kind == "socket":
        assert back.ino == fd.ino
        want = {k: v for k, v in fd.sock.items() if v not in ({}, [], 0) or k == "queue"}
        got = {k: v for k, v in back.sock.items() if k in want or v not in ({}, [], 0)}
        assert got == want
    assert (back.counter, back.targets, back.timer) == (fd.counter, fd.targets, fd.timer)
