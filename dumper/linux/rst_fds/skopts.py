"""The SOL_SOCKET options a socket's SkOptsEntry holds, set as CRIU's restore_socket_opts
sets them (criu/sockets.c): buffer sizes halved (the kernel doubles what setsockopt gets:
net/core/sock.c sk_setsockopt SO_SNDBUF) and forced, the lock bits, then each option the
image records, the timeouts always."""

from __future__ import annotations

import socket
import struct

SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_NO_CHECK, SO_PASSSEC = 32, 33, 11, 34
SO_BINDTOIFINDEX, SO_BUF_LOCK = 62, 72
_INTS = {"so_priority": socket.SO_PRIORITY, "so_rcvlowat": socket.SO_RCVLOWAT,
         "so_mark": socket.SO_MARK}
_FLAGS = {"so_passcred": socket.SO_PASSCRED, "so_passsec": SO_PASSSEC,
          "so_dontroute": socket.SO_DONTROUTE, "so_no_check": SO_NO_CHECK,
          "so_broadcast": socket.SO_BROADCAST, "so_oobinline": socket.SO_OOBINLINE,
          "so_keepalive": socket.SO_KEEPALIVE}


def big_buffers(s: socket.socket) -> None:
    """Room for whatever the dump found queued (CRIU's restore_prepare_socket)."""
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 0x3FFFFFFF)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 0x3FFFFFFF)


def set_sk_opts(s: socket.socket, o: dict) -> None:
    """Every option o (an SkOptsEntry's set fields) names; what no restore sets yet (a
    socket filter) is a ValueError naming it."""
    if o.get("so_filter"):
        raise ValueError("a socket filter (SO_ATTACH_FILTER) is not restored yet")
    sol = socket.SOL_SOCKET
    if "so_sndbuf" in o:
        s.setsockopt(sol, SO_SNDBUFFORCE, int(o["so_sndbuf"]) // 2)
    if "so_rcvbuf" in o:
        s.setsockopt(sol, SO_RCVBUFFORCE, int(o["so_rcvbuf"]) // 2)
    if "so_buf_lock" in o:
        s.setsockopt(sol, SO_BUF_LOCK, int(o["so_buf_lock"]))
    for name, opt in _INTS.items():
        if name in o:
            s.setsockopt(sol, opt, int(o[name]))
    for name, opt in _FLAGS.items():
        if o.get(name):
            s.setsockopt(sol, opt, 1)
    if "so_linger" in o:
        s.setsockopt(sol, socket.SO_LINGER, struct.pack("=ii", 1, int(o["so_linger"])))
    if o.get("so_bound_dev"):
        s.setsockopt(sol, SO_BINDTOIFINDEX, int(o["so_bound_dev"]))
    s.setsockopt(sol, socket.SO_SNDTIMEO, struct.pack("=qq", o.get("so_snd_tmo_sec", 0),
                                                      o.get("so_snd_tmo_usec", 0)))
    s.setsockopt(sol, socket.SO_RCVTIMEO, struct.pack("=qq", o.get("so_rcv_tmo_sec", 0),
                                                      o.get("so_rcv_tmo_usec", 0)))


SHUTDOWN = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}  # CRIU's sk_shutdown
