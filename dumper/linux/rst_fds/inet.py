"""IPv4/IPv6 sockets (CRIU's sk-inet.c open_inet_sk), made here and handed over: socket()
with the dumped family, type and protocol, IPV6_V6ONLY, SO_REUSEADDR and SO_REUSEPORT on
while it binds (the dumped socket's port may still be settling), bind to the source
address and port, listen(backlog) for a listener, connect to the destination for a
connected datagram socket; then the IP, socket and TCP options, the shutdown, and
SO_REUSEADDR/SO_REUSEPORT as dumped (CRIU's post_open_inet_sk). A connected TCP socket
needs TCP repair (its sequence numbers and queues): not restored.
"""

from __future__ import annotations

import errno
import socket
import struct

from dumper.linux.rst_fds.common import FdSet, FileError
from dumper.linux.rst_fds.skopts import SHUTDOWN, set_sk_opts
from dumper.state import FdState

TCP_LISTEN = 10
IP_FREEBIND, IP_PKTINFO, IPV6_FREEBIND = 15, 8, 78
_IP = {"freebind": IP_FREEBIND, "pktinfo": IP_PKTINFO, "tos": socket.IP_TOS,
       "ttl": socket.IP_TTL}
_IP6 = {"freebind": IPV6_FREEBIND, "pktinfo": socket.IPV6_RECVPKTINFO}
_TCP = {"nodelay": socket.TCP_NODELAY, "cork": socket.TCP_CORK,
        "keepcnt": socket.TCP_KEEPCNT, "keepidle": socket.TCP_KEEPIDLE,
        "keepintvl": socket.TCP_KEEPINTVL}


def address(family: int, words) -> str:
    """CRIU's src_addr/dst_addr: the address bytes memcpy'd into u32 words."""
    raw = struct.pack(f"={len(words)}I", *words)
    return socket.inet_ntop(family, raw[: 4 if family == socket.AF_INET else 16])


def _sockaddr(family: int, words, port: int) -> tuple:
    host = address(family, words or [0] * (1 if family == socket.AF_INET else 4))
    return (host, port) if family == socket.AF_INET else (host, port, 0, 0)


def open_fd(fs: FdSet, fd: FdState, where: str) -> int:
    sk = fd.sock
    family, stype, proto = int(sk["family"]), int(sk["type"]), int(sk.get("proto", 0))
    what = f"{socket.AddressFamily(family).name} {socket.SocketKind(stype).name} socket"
    if proto == socket.IPPROTO_TCP and sk.get("dst_port"):
        raise FileError(errno.ENOTSUP, f"{where}: a connected TCP socket (port "
                        f"{sk.get('src_port')} -> {sk.get('dst_port')}) cannot be restored "
                        "yet (it needs TCP repair)")
    s = socket.socket(family, stype, proto)
    try:
        _setup(s, sk, family, proto)
    except (OSError, ValueError) as e:
        s.close()
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        port = sk.get("src_port")
        raise FileError(getattr(e, "errno", None) or errno.EINVAL,
                        f"{where}: {what}{f' on port {port}' if port else ''}: {msg}") from None
    fs.socks[fd.ino] = s
    return fs.keep(fd, s.fileno())


def _setup(s: socket.socket, sk: dict, family: int, proto: int) -> None:
    sol = socket.SOL_SOCKET
    if sk.get("v6only"):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(sol, socket.SO_REUSEADDR, 1)
    s.setsockopt(sol, socket.SO_REUSEPORT, 1)
    if sk.get("src_port"):
        s.bind(_sockaddr(family, sk.get("src_addr"), int(sk["src_port"])))
    if int(sk.get("state", 0)) == TCP_LISTEN:
        if proto != socket.IPPROTO_TCP:
            raise ValueError(f"listening, but protocol {proto}")
        s.listen(int(sk.get("backlog", 0)))
    if sk.get("dst_port"):
        s.connect(_sockaddr(family, sk.get("dst_addr"), int(sk["dst_port"])))
    level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
    for name, opt in (_IP6 if family == socket.AF_INET6 else _IP).items():
        if name in sk.get("ip_opts", {}):
            s.setsockopt(level, opt, int(sk["ip_opts"][name]))
    opts = dict(sk.get("opts", {}))
    set_sk_opts(s, opts)
    if proto == socket.IPPROTO_TCP:
        for name, opt in _TCP.items():
            if name in sk.get("tcp_opts", {}):
                s.setsockopt(socket.IPPROTO_TCP, opt, int(sk["tcp_opts"][name]))
    how = SHUTDOWN.get(int(sk.get("shutdown", 0)))
    if how is not None:
        try:
            s.shutdown(how)
        except OSError as e:  # an unconnected one: the bits are set all the same
            if e.errno != errno.ENOTCONN:  # (net/ipv4/af_inet.c inet_shutdown)
                raise
    s.setsockopt(sol, socket.SO_REUSEADDR, int(bool(opts.get("reuseaddr"))))
    s.setsockopt(sol, socket.SO_REUSEPORT, int(bool(opts.get("so_reuseport"))))
