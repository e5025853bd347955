"""Sockets (CRIU's sk-inet.c, sk-unix.c, sockets.c): listening TCP sockets, IPv4 and IPv6
(bound address and port, backlog, SOL_SOCKET options), UDP sockets (bound and peer
addresses, options; none with datagrams queued), listening unix stream sockets
(name, backlog, options, the socket file's mode), and connected unix sockets whose peer is
in the tree (socketpairs: their queued data, peeked). Connected TCP and every other socket
kind are refused: their in-flight state is not dumped.

The socket is asked through a descriptor of our own on it (pidfd_getfd, kernel/pid.c:
the same struct file), with getsockname/getsockopt; the backlog, which no getsockopt
returns, from sock_diag (net/ipv4/inet_diag.c: a listener's idiag_wqueue is
sk_max_ack_backlog), as CRIU's collect_sockets does.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct

from dumper.linux.errors import Unsupported
from dumper.linux.files.common import base_state
from dumper.state import FdState

SYS_pidfd_getfd = 438
SIOCGSKNS = 0x894C  # include/uapi/linux/sockios.h: an fd on the socket's network namespace
SO_BUF_LOCK = 72
TCP_LISTEN = 10
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR = 1, 0x300, 3, 2
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def pidfd_getfd(pid: int, fd: int) -> int:
    """Our own descriptor on pid's fd (pidfd_getfd(2); ptrace access needed)."""
    pidfd = os.pidfd_open(pid)
    try:
        ret = _syscall(ctypes.c_long(SYS_pidfd_getfd), ctypes.c_int(pidfd), ctypes.c_int(fd),
                       ctypes.c_uint(0))
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return ret
    finally:
        os.close(pidfd)


def _diag(req: bytes) -> list[bytes]:
    """One sock_diag dump request; the payload of each reply message."""
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                      NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(msg, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
                    return out
                out.append(data[off + 16 : off + length])
                off += (length + 3) & ~3


def listen_backlog(family: int, ino: int) -> tuple[int, int] | None:
    """(connections not yet accepted, backlog) of the listening TCP socket with inode ino,
    by an inet_diag dump of the listeners (struct inet_diag_req_v2 -> inet_diag_msg: a
    listener's idiag_rqueue is sk_ack_backlog, its idiag_wqueue sk_max_ack_backlog)."""
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + bytes(48)
    for m in _diag(req):
        # inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid, inode
        rqueue, wqueue, _, inode = struct.unpack_from("=IIII", m, 4 + 48 + 4)
        if inode == ino:
            return rqueue, wqueue
    return None


UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 0, 2, 4, 6
SO_PEEK_OFF = 42


def unix_diag(ino: int) -> tuple[int, dict[int, bytes]] | None:
    """The state and unix_diag attributes (name, peer, queue lengths, shutdown) of socket
    ino, in any state (net/unix/diag.c sk_diag_fill)."""
    show = 0x01 | 0x04 | 0x10  # UDIAG_SHOW_NAME | PEER | RQLEN
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, show,
                      0xFFFFFFFF, 0xFFFFFFFF)
    for m in _diag(req):
        if struct.unpack_from("=I", m, 4)[0] != ino:
            continue
        attrs, off = {}, 16
        while off + 4 <= len(m):
            alen, atype = struct.unpack_from("=HH", m, off)
            attrs[atype] = m[off + 4 : off + alen]
            off += max(4, (alen + 3) & ~3)
        return m[2], attrs  # unix_diag_msg.udiag_state
    return None


def peek_queue(pid: int, fd: int, s: socket.socket, stype: int) -> list[bytes]:
    """What waits in the socket's receive queue, read with MSG_PEEK and SO_PEEK_OFF stepping
    through it (as CRIU's dump_sk_queue; the offset is put back as it was), one item per
    datagram (a stream gives its bytes). File descriptors in flight (SCM_RIGHTS) are
    refused: the peek would install them here, and they are not dumped."""
    old = _opt(s, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    out: list[bytes] = []
    try:
        while True:
            try:
                data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(253 * 4),
                                            socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for i in range(0, len(cdata) - len(cdata) % 4, 4):
                        os.close(int.from_bytes(cdata[i : i + 4], "little"))
                    raise Unsupported(f"pid {pid}: fd {fd}: a unix socket with file "
                                      "descriptors in flight (SCM_RIGHTS): not dumped yet")
            if not data and stype == socket.SOCK_STREAM:
                return out
            out.append(data)
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)


def _unix_connected(pid: int, fd: int, s: socket.socket, st: os.stat_result
                    ) -> dict[str, object]:
    """A connected (or unconnected) unix socket: its peer's inode, which the image set must
    hold too, its name, shutdown state, options and queued data."""
    diag = unix_diag(st.st_ino)
    if diag is None:
        raise Unsupported(f"pid {pid}: fd {fd}: unix_diag does not know socket {st.st_ino}")
    state, attrs = diag
    peer = int.from_bytes(attrs.get(UNIX_DIAG_PEER, b"\0\0\0\0")[:4], "little")
    shutdown = attrs.get(UNIX_DIAG_SHUTDOWN, b"\0")[0]
    # CRIU records udiag_wqueue as the backlog of a socket that does not listen
    _, wqueue = struct.unpack("=II", attrs.get(UNIX_DIAG_RQLEN, bytes(8))[:8])
    opts = sk_opts(s)
    opts.update(so_passcred=bool(_opt(s, socket.SO_PASSCRED)),
                so_passsec=bool(_opt(s, 34)))  # SO_PASSSEC
    name = sockname(s.fileno())
    out: dict[str, object] = dict(type=int(s.type), state=state,
                                  backlog=wqueue, name=name, opts=opts, peer=peer,
                                  queue=peek_queue(pid, fd, s, s.type))
    out.update(path_fields(pid, name))
    if shutdown:
        out["shutdown"] = shutdown
    return out


def unix_queue(ino: int) -> tuple[int, int] | None:
    """(connections queued, backlog) of the listening unix socket ino, by unix_diag
    (net/unix/diag.c sk_diag_show_rqlen: a listener's rqueue is sk_ack_backlog and its
    wqueue sk_max_ack_backlog)."""
    show_rqlen, attr_rqlen = 0x10, 4  # UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, ino, show_rqlen,
                      0xFFFFFFFF, 0xFFFFFFFF)
    for m in _diag(req):
        if struct.unpack_from("=I", m, 4)[0] != ino:
            continue
        off = 16  # struct unix_diag_msg
        while off + 4 <= len(m):
            alen, atype = struct.unpack_from("=HH", m, off)
            if atype == attr_rqlen:
                return struct.unpack_from("=II", m, off + 4)
            off += max(4, (alen + 3) & ~3)
    return None


def _opt(s: socket.socket, name: int) -> int:
    return s.getsockopt(socket.SOL_SOCKET, name)


def _timeval(s: socket.socket, name: int) -> tuple[int, int]:
    return struct.unpack("=qq", s.getsockopt(socket.SOL_SOCKET, name, 16))


def sk_opts(s: socket.socket) -> dict[str, object]:
    """The SOL_SOCKET options CRIU's dump_socket_opts records."""
    snd, rcv = _timeval(s, socket.SO_SNDTIMEO), _timeval(s, socket.SO_RCVTIMEO)
    onoff, linger = struct.unpack("=ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    out: dict[str, object] = dict(
        so_sndbuf=_opt(s, socket.SO_SNDBUF), so_rcvbuf=_opt(s, socket.SO_RCVBUF),
        so_snd_tmo_sec=snd[0], so_snd_tmo_usec=snd[1],
        so_rcv_tmo_sec=rcv[0], so_rcv_tmo_usec=rcv[1],
        reuseaddr=bool(_opt(s, socket.SO_REUSEADDR)),
        so_reuseport=bool(_opt(s, socket.SO_REUSEPORT)),
        so_priority=_opt(s, socket.SO_PRIORITY), so_rcvlowat=_opt(s, socket.SO_RCVLOWAT),
        so_dontroute=bool(_opt(s, socket.SO_DONTROUTE)),
        so_no_check=bool(_opt(s, 11)),  # SO_NO_CHECK
        so_broadcast=bool(_opt(s, socket.SO_BROADCAST)),
        so_keepalive=bool(_opt(s, socket.SO_KEEPALIVE)),
        so_oobinline=_opt(s, socket.SO_OOBINLINE))
    with contextlib.suppress(OSError):  # SO_BUF_LOCK is 5.14+
        out["so_buf_lock"] = _opt(s, SO_BUF_LOCK)
    mark = _opt(s, socket.SO_MARK)
    if mark:
        out["so_mark"] = mark
    if onoff:
        out["so_linger"] = linger
    return out


def net_ns_inode(s: socket.socket) -> int:
    """The inode of the socket's own network namespace (sock_ioctl SIOCGSKNS)."""
    fd = fcntl.ioctl(s.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def ip_opts(s: socket.socket, family: int) -> dict[str, object]:
    """CRIU's dump_ip_opts: set ones only."""
    if family == socket.AF_INET6:
        vals = dict(freebind=s.getsockopt(socket.IPPROTO_IPV6, 78),  # IPV6_FREEBIND
                    pktinfo=s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO))
    else:
        vals = dict(freebind=s.getsockopt(socket.IPPROTO_IP, 15),  # IP_FREEBIND
                    pktinfo=s.getsockopt(socket.IPPROTO_IP, 8),  # IP_PKTINFO
                    tos=s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
                    ttl=s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL))
    return {k: (bool(v) if k in ("freebind", "pktinfo") else v) for k, v in vals.items() if v}


def tcp_opts(s: socket.socket) -> dict[str, object]:
    """CRIU's dump_tcp_opts: set ones only."""
    vals = dict(nodelay=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                cork=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK),
                keepcnt=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                keepidle=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                keepintvl=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL))
    return {k: (bool(v) if k in ("nodelay", "cork") else v) for k, v in vals.items() if v}


INET_DIAG_SHUTDOWN = 8


def udp_diag(family: int, ino: int) -> tuple[int, int, int] | None:
    """(state, receive queue bytes, shutdown bits) of UDP socket ino, by an inet_diag dump
    of every state (net/ipv4/udp_diag.c; inet_diag_msg idiag_state, idiag_rqueue =
    sk_rmem_alloc; the INET_DIAG_SHUTDOWN attribute inet_diag_msg_attrs_fill always adds)."""
    req = struct.pack("=BBBBI", family, socket.IPPROTO_UDP, 0, 0, 0xFFFFFFFF) + bytes(48)
    for m in _diag(req):
        rqueue, _, _, inode = struct.unpack_from("=IIII", m, 4 + 48 + 4)
        if inode != ino:
            continue
        shutdown, off = 0, 72  # struct inet_diag_msg, then rtattrs
        while off + 4 <= len(m):
            alen, atype = struct.unpack_from("=HH", m, off)
            if atype == INET_DIAG_SHUTDOWN:
                shutdown = m[off + 4]
            off += max(4, (alen + 3) & ~3)
        return m[1], rqueue, shutdown
    return None


def _udp(pid: int, fd: int, s: socket.socket, st: os.stat_result) -> dict[str, object]:
    """A UDP socket (CRIU's dump_one_inet_fd): bound address and port, the peer of a
    connected one, options. Datagrams waiting to be read are refused, not dropped as CRIU
    drops them (can_dump_inet_sk: "Read queue is dropped"): their senders are not dumped."""
    family = s.family
    diag = udp_diag(family, st.st_ino)
    if diag is None:
        raise Unsupported(f"pid {pid}: fd {fd}: sock_diag does not know UDP socket "
                          f"{st.st_ino} (another network namespace?)")
    state, rqueue, shutdown = diag
    if rqueue:
        raise Unsupported(f"pid {pid}: fd {fd}: a UDP socket with {rqueue} bytes of datagrams "
                          "queued: those are not dumped (leave it out with --leave-out socket)")
    if s.getsockopt(socket.IPPROTO_UDP, 1):  # UDP_CORK: its pending datagram is not dumped
        raise Unsupported(f"pid {pid}: fd {fd}: a corked UDP socket is not dumped")
    host, port = s.getsockname()[:2]
    try:
        dst, dport = s.getpeername()[:2]
    except OSError:  # ENOTCONN
        dst, dport = ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0
    out: dict[str, object] = dict(
        family=int(family), type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, state=state,
        src_port=port, src_addr=_addr_words(family, host), dst_port=dport,
        dst_addr=_addr_words(family, dst), backlog=0, opts=sk_opts(s),
        ip_opts=ip_opts(s, family), netns=net_ns_inode(s))
    if family == socket.AF_INET6:
        out["v6only"] = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    if shutdown:
        out["shutdown"] = shutdown
    return out


def _addr_words(family: int, host: str) -> list[int]:
    raw = socket.inet_pton(family, host)
    return list(struct.unpack(f"={len(raw) // 4}I", raw))


def _unix(pid: int, fd: int, s: socket.socket, st: os.stat_result) -> dict[str, object]:
    """A listening unix socket: its name, backlog, options, the socket file's perms."""
    queue = unix_queue(st.st_ino)
    if queue is None:
        raise Unsupported(f"pid {pid}: fd {fd}: unix_diag does not know socket {st.st_ino}")
    if queue[0]:
        raise Unsupported(f"pid {pid}: fd {fd}: listening unix socket with {queue[0]} "
                          "connections not yet accepted: those are not dumped")
    raw = sockname(s.fileno())
    opts = sk_opts(s)
    opts.update(so_passcred=bool(_opt(s, socket.SO_PASSCRED)),
                so_passsec=bool(_opt(s, 34)))  # SO_PASSSEC
    out: dict[str, object] = dict(type=int(s.type), state=TCP_LISTEN, backlog=queue[1],
                                  name=raw, opts=opts)
    out.update(path_fields(pid, raw))
    return out


def path_fields(pid: int, raw: bytes) -> dict[str, object]:
    """What a name in the file system needs besides itself: the directory a relative one
    was bound from (CRIU's name_dir: the cwd it has now), the socket file's mode and owner,
    or that it is gone (deleted)."""
    out: dict[str, object] = {}
    if raw and not raw.startswith(b"\0"):
        path = raw.rstrip(b"\0")
        if not path.startswith(b"/"):  # bound relative to the cwd it had: CRIU's name_dir
            out["name_dir"] = os.readlink(f"/proc/{pid}/cwd")
        try:
            f = os.stat(os.path.join(f"/proc/{pid}/cwd".encode(), path))
            out["file_perms"] = (f.st_mode, f.st_uid, f.st_gid)
        except OSError:
            out["deleted"] = True
    return out


def sockname(fd: int) -> bytes:
    """getsockname(2)'s sun_path bytes, as long as the kernel says (a path keeps the NUL it
    was bound with; an abstract name starts with one): CRIU's UnixSkEntry.name."""
    buf = ctypes.create_string_buffer(110)
    size = ctypes.c_uint32(110)
    if _libc.getsockname(fd, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockname: {os.strerror(err)}")
    return buf.raw[2 : size.value]  # after sun_family


def collect(pid: int, fd: int, link: str, st: os.stat_result, info: dict[str, str]) -> FdState:
    out = base_state(fd, "socket", link, st, info)
    s = socket.socket(fileno=pidfd_getfd(pid, fd))
    try:
        listening = bool(_opt(s, socket.SO_ACCEPTCONN))
        family, stype = s.family, s.type
        if family == socket.AF_UNIX:
            out.sock = _unix(pid, fd, s, st) if listening else _unix_connected(pid, fd, s, st)
            out.sock["netns"] = net_ns_inode(s)
            return out
        if family in (socket.AF_INET, socket.AF_INET6) and stype == socket.SOCK_DGRAM \
                and s.proto == socket.IPPROTO_UDP:
            out.sock = _udp(pid, fd, s, st)
            return out
        if family not in (socket.AF_INET, socket.AF_INET6) or stype != socket.SOCK_STREAM \
                or not listening:
            what = "listening" if listening else "not listening"
            raise Unsupported(
                f"pid {pid}: fd {fd} is a socket ({link}), {socket.AddressFamily(family).name}"
                f" {socket.SocketKind(stype).name}, {what}: dumper dumps listening TCP "
                "and UDP sockets only yet (leave it out with --leave-out socket)")
        host, port = s.getsockname()[:2]
        queue = listen_backlog(family, st.st_ino)
        if queue is None:
            raise Unsupported(f"pid {pid}: fd {fd}: sock_diag does not know listening socket "
                              f"{st.st_ino} (another network namespace?)")
        pending, backlog = queue
        if pending:  # CRIU's can_dump_inet_sk refuses them too
            raise Unsupported(f"pid {pid}: fd {fd}: listening TCP socket (port {port}) with "
                              f"{pending} connections not yet accepted: those are not dumped")
        out.sock = dict(family=int(family), type=int(stype), proto=socket.IPPROTO_TCP,
                        state=TCP_LISTEN, src_port=port, src_addr=_addr_words(family, host),
                        backlog=backlog, opts=sk_opts(s), ip_opts=ip_opts(s, family),
                        tcp_opts=tcp_opts(s), netns=net_ns_inode(s))
        if family == socket.AF_INET6:
            out.sock["v6only"] = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    finally:
        s.close()
    return out
