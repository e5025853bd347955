"""TaskState (dumper.state) as CRIU 4.2's images: core-TID, ids-PID, fs-PID, fdinfo-ID,
files.img entries, pipes-data.img — the fields and layouts CRIU's own dump writes
(criu/cr-dump.c dump_task_core_all / dump_one_zombie, criu/arch/x86/crtools.c
save_task_regs, criu/files-reg.c, criu/pipes.c)."""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Callable

from dumper.images import flags as F
from dumper.images.proto import criu_images_pb2 as criu
from dumper.kabi import MAP_GROWSDOWN, MAP_LOCKED, MAP_NORESERVE
from dumper.state import ALIVE, DEAD, STOPPED, Creds, FdState, Fpu, TaskState, ThreadState

TASK_STATE = {ALIVE: 1, DEAD: 2, STOPPED: 3}  # criu/include/pid.h
FD_CLOEXEC = 1
FD_TYPE = {"reg": criu.REG, "pipe": criu.PIPE, "eventfd": criu.EVENTFD,
           "eventpoll": criu.EVENTPOLL, "memfd": criu.MEMFD, "socket": criu.INETSK,
           "signalfd": criu.SIGNALFD, "timerfd": criu.TIMERFD, "tty": criu.TTY}


def fd_type(fd: FdState) -> int:
    """The fdinfo type: sockets are INETSK or UNIXSK by family."""
    if fd.kind == "socket" and "name" in fd.sock:
        return criu.UNIXSK
    return FD_TYPE[fd.kind]
XSAVE_FIELDS = {2: ("ymmh_space", "I"), 3: ("bndreg_state", "Q"), 4: ("bndcsr_state", "Q"),
                5: ("opmask_reg", "Q"), 6: ("zmm_upper", "Q"), 7: ("hi16_zmm", "Q"),
                9: ("pkru", "I")}


def _words(data: bytes, fmt: str) -> list[int]:
    size = struct.calcsize(fmt)
    return list(struct.unpack(f"<{len(data) // size}{fmt}", data))


def _caps(v: int) -> list[int]:
    """A 64-bit capability set as CRIU's two u32 words (low first)."""
    return [v & 0xFFFFFFFF, v >> 32]


def fpregs_entry(fpu: Fpu) -> criu.UserX86FpregsEntry:
    """The FXSAVE area's fields (struct fxregs_state) and the XSAVE components."""
    cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask = struct.unpack_from("<HHHHQQII",
                                                                         fpu.legacy)
    e = criu.UserX86FpregsEntry(cwd=cwd, swd=swd, twd=twd, fop=fop, rip=rip, rdp=rdp,
                                mxcsr=mxcsr, mxcsr_mask=mxcsr_mask,
                                st_space=_words(fpu.legacy[32:160], "I"),
                                xmm_space=_words(fpu.legacy[160:416], "I"))
    if fpu.xcr0:
        x = criu.UserX86XsaveEntry(xstate_bv=fpu.xstate_bv)
        for feature, data in fpu.components.items():
            name, fmt = XSAVE_FIELDS[feature]
            getattr(x, name).extend(_words(data, fmt))
        e.xsave.CopyFrom(x)
    return e


def user_desc(raw: bytes) -> criu.UserDescT:
    """struct user_desc (asm/ldt.h): entry_number, base_addr, limit, then the flag bits."""
    num, base, limit, bits = struct.unpack("<IIII", raw)
    return criu.UserDescT(entry_number=num, base_addr=base, limit=limit,
                          seg_32bit=bool(bits & 1), contents_h=bool(bits & 4),
                          contents_l=bool(bits & 2), read_exec_only=bool(bits & 8),
                          limit_in_pages=bool(bits & 16), seg_not_present=bool(bits & 32),
                          usable=bool(bits & 64))


def creds_entry(c: Creds) -> criu.CredsEntry:
    return criu.CredsEntry(
        uid=c.uids[0], euid=c.uids[1], suid=c.uids[2], fsuid=c.uids[3],
        gid=c.gids[0], egid=c.gids[1], sgid=c.gids[2], fsgid=c.gids[3],
        cap_inh=_caps(c.cap_inh), cap_prm=_caps(c.cap_prm), cap_eff=_caps(c.cap_eff),
        cap_bnd=_caps(c.cap_bnd), cap_amb=_caps(c.cap_amb), secbits=c.secbits,
        groups=c.groups, no_new_privs=c.no_new_privs)


def thread_core(t: ThreadState) -> criu.ThreadCoreEntry:
    tc = criu.ThreadCoreEntry(futex_rla=t.robust_list[0], futex_rla_len=t.robust_list[1],
                              comm=t.comm)
    if t.regs is None:
        return tc
    policy, prio, nice = t.sched
    tc.sched_nice, tc.sched_policy = nice, policy
    if prio:
        tc.sched_prio = prio
    tc.blk_sigset = t.regs.sigmask
    tc.sas.CopyFrom(criu.ThreadSasEntry(ss_sp=t.sas[0], ss_size=t.sas[1], ss_flags=t.sas[2]))
    if t.pdeath_sig:
        tc.pdeath_sig = t.pdeath_sig
    tc.signals_p.CopyFrom(criu.SignalQueueEntry(
        signals=[criu.SiginfoEntry(siginfo=s) for s in t.pending]))
    if t.creds is not None:
        tc.creds.CopyFrom(creds_entry(t.creds))
    tc.seccomp_mode = t.seccomp
    if t.rseq is not None:
        tc.rseq_entry.CopyFrom(criu.RseqEntry(rseq_abi_pointer=t.rseq[0],
                                              rseq_abi_size=t.rseq[1], signature=t.rseq[2]))
    return tc


def thread_info(t: ThreadState) -> criu.ThreadInfoX86:
    assert t.regs is not None
    gp = criu.UserX86RegsEntry(mode=criu.NATIVE, **t.regs.gpregs)
    return criu.ThreadInfoX86(clear_tid_addr=t.clear_tid, gpregs=gp,
                              fpregs=fpregs_entry(t.regs.fpu),
                              tls=[user_desc(d) for d in t.regs.tls])


def task_core(st: TaskState) -> criu.TaskCoreEntry:
    leader = st.threads[0]
    tc = criu.TaskCoreEntry(task_state=TASK_STATE[st.state], exit_code=st.exit_code,
                            personality=st.personality, flags=st.flags,
                            blk_sigset=leader.regs.sigmask if leader.regs else 0, comm=st.comm)
    if st.state == DEAD or not st.live:
        return tc
    tc.timers.CopyFrom(criu.TaskTimersEntry(
        real=_itimer(st.itimers[0]),
        virt=_itimer(st.itimers[1]), prof=_itimer(st.itimers[2])))
    tc.rlimits.CopyFrom(criu.TaskRlimitsEntry(
        rlimits=[criu.RlimitEntry(cur=c, max=m) for c, m in st.rlimits]))
    tc.signals_s.CopyFrom(criu.SignalQueueEntry(
        signals=[criu.SiginfoEntry(siginfo=s) for s in st.shared_pending]))
    if st.loginuid is not None:
        tc.loginuid = st.loginuid & 0xFFFFFFFF
    if st.oom_score_adj is not None:
        tc.oom_score_adj = st.oom_score_adj
    tc.sigactions.extend(criu.SaEntry(sigaction=h, flags=f, restorer=r, mask=m,
                                      compat_sigaction=False) for h, f, r, m in st.sigactions)
    tc.child_subreaper = st.child_subreaper
    if st.state == STOPPED:
        tc.stop_signo = signal.SIGSTOP
    return tc


def _itimer(t: tuple[int, int, int, int]) -> criu.ItimerEntry:
    return criu.ItimerEntry(isec=t[0], iusec=t[1], vsec=t[2], vusec=t[3])


def core_entries(st: TaskState, mtype: int) -> dict[int, criu.CoreEntry]:
    """core-TID.img of every thread: the leader's carries tc (task-wide state); a zombie's
    is tc alone (dump_one_zombie: core_entry_alloc(0, 1))."""
    out = {}
    for i, t in enumerate(st.threads):
        core = criu.CoreEntry(mtype=mtype)
        if st.state == DEAD:
            core.tc.CopyFrom(task_core(st))
            out[t.tid] = core
            continue
        if t.regs is not None:
            core.thread_info.CopyFrom(thread_info(t))
        core.thread_core.CopyFrom(thread_core(t))
        if i == 0:
            core.tc.CopyFrom(task_core(st))
        out[t.tid] = core
    return out


class NsIds:
    """Ids that must agree across the set: namespace inode -> image id, and open file
    description -> files.img id (fds a fork inherited share one description)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], int] = {}
        self.files: dict[object, int] = {}  # open file description -> files.img id
        self.fdinfo_written: set[int] = set()
        self.pipes_data: dict[int, tuple[bytes, int]] = {}  # pipe inode -> bytes, capacity
        self.unix_queues: dict[int, list[bytes]] = {}  # unix socket file id -> queued data
        self.ttys: dict[int, criu.TtyInfoEntry] = {}  # pty index -> tty-info entry
        self.seccomp: list[criu.SeccompFilter] = []  # seccomp.img's filters, all threads

    def get(self, kind: str, ino: int) -> int:
        return self.ids.setdefault((kind, ino), len(self.ids) + 1)

    def entry(self, ns: dict[str, int], kobj: dict[str, int]) -> criu.TaskKobjIdsEntry:
        e = criu.TaskKobjIdsEntry(vm_id=kobj.get("vm", 0), files_id=kobj.get("files", 0),
                                  fs_id=kobj.get("fs", 0), sighand_id=kobj.get("sighand", 0))
        for kind, ino in ns.items():
            setattr(e, f"{kind}_ns_id", self.get(kind, ino))
        return e


def reg_file(fid: int, path: str, flags: int, pos: int = 0, size: int | None = None,
             mode: int = 0, build_id: list[int] | None = None) -> criu.FileEntry:
    r = criu.RegFileEntry(id=fid, flags=flags, pos=pos, fown=_fown(), name=path,
                          build_id=build_id or ())
    if size is not None:
        r.size = size
    if mode:
        r.mode = mode
    return criu.FileEntry(type=criu.REG, id=fid, reg=r)


def _fown() -> criu.FownEntry:
    return criu.FownEntry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def termios_entry(t: dict) -> criu.TermiosEntry:
    """struct termios as CRIU's termios_copy stores it: the flags, and the c_cc bytes
    memcpy'd into the u32 words (19 words, the bytes in the first five)."""
    cc = bytes(t["c_cc"]) + bytes(19 * 4 - len(t["c_cc"]))
    return criu.TermiosEntry(c_iflag=t["c_iflag"], c_oflag=t["c_oflag"], c_cflag=t["c_cflag"],
                             c_lflag=t["c_lflag"], c_line=t["c_line"], c_ispeed=0, c_ospeed=0,
                             c_cc=struct.unpack("<19I", cc))


def tty_info(fd: FdState) -> criu.TtyInfoEntry:
    """tty-info.img's entry of a pty slave (CRIU's dump_tty_info; its id is CRIU's
    tty_gen_id, index << 1 for a slave)."""
    t = fd.sock
    rows, cols, xpix, ypix = t["winsize"]
    return criu.TtyInfoEntry(
        id=t["index"] << 1, type=criu.TtyInfoEntry.PTY, locked=False,
        exclusive=t["exclusive"], packet_mode=False, sid=t["sid"], pgrp=t["pgrp"],
        rdev=t["rdev"] & 0xFFFFFFFF, termios=termios_entry(t["termios"]),
        termios_locked=termios_entry(t["termios_locked"]),
        winsize=criu.WinsizeEntry(ws_row=rows, ws_col=cols, ws_xpixel=xpix, ws_ypixel=ypix),
        pty=criu.TtyPtyEntry(index=t["index"]), dev=t["dev"] & 0xFFFFFFFF, uid=t["uid"],
        gid=t["gid"])


def append_only(flags: int) -> bool:
    """O_WRONLY|O_APPEND, a log file: its size is not a check of the file (CRIU's
    files-reg.c should_check_size records none for it)."""
    return flags & os.O_ACCMODE == os.O_WRONLY and bool(flags & os.O_APPEND)


def file_entry(fid: int, fd: FdState, memfd_inode: int | None = None,
               ns: NsIds | None = None, regf_id: int = 0) -> criu.FileEntry:
    """The files.img entry of one open file (its description, shared by dup'ed fds)."""
    if fd.kind == "reg":
        size = None if append_only(fd.flags) else fd.size  # a log grows: no size to check
        return reg_file(fid, fd.path, fd.flags, fd.pos, size, fd.mode, fd.build_id)
    if fd.kind == "pipe":
        return criu.FileEntry(type=criu.PIPE, id=fid, pipe=criu.PipeEntry(
            id=fid, pipe_id=fd.ino & 0xFFFFFFFF, flags=fd.flags, fown=_fown()))
    if fd.kind == "memfd":
        if memfd_inode is None:
            raise ValueError(f"fd {fd.fd} ({fd.path}): a memfd no task maps: its contents are "
                             "not dumped yet (leave it out with --leave-out memfd)")
        return criu.FileEntry(type=criu.MEMFD, id=fid, memfd=criu.MemfdFileEntry(
            id=fid, flags=fd.flags, pos=fd.pos, fown=_fown(), inode_id=memfd_inode))
    if fd.kind == "socket" and "name" in fd.sock:  # AF_UNIX
        sk = dict(fd.sock)
        netns = sk.pop("netns", None)
        if netns is not None and ns is not None:
            sk["ns_id"] = ns.get("net", int(netns))  # type: ignore[arg-type]
        opts = criu.SkOptsEntry(**sk.pop("opts"))  # type: ignore[arg-type]
        perms = sk.pop("file_perms", None)
        queue = sk.pop("queue", [])
        if ns is not None:
            ns.unix_queues[fid] = queue  # type: ignore[assignment]
        sk.setdefault("peer", 0)
        u = criu.UnixSkEntry(id=fid, ino=fd.ino & 0xFFFFFFFF, flags=fd.flags, uflags=0,
                             fown=_fown(), opts=opts, **sk)
        if perms is not None:
            u.file_perms.CopyFrom(criu.FilePermsEntry(mode=perms[0], uid=perms[1],
                                                      gid=perms[2]))
        return criu.FileEntry(type=criu.UNIXSK, id=fid, usk=u)
    if fd.kind == "socket":
        sk = dict(fd.sock)
        netns = sk.pop("netns", None)
        if netns is not None and ns is not None:
            sk["ns_id"] = ns.get("net", int(netns))  # type: ignore[arg-type]
        sk["ip_opts"] = criu.IpOptsEntry(**sk.pop("ip_opts", {}))  # type: ignore[arg-type]
        sk["tcp_opts"] = criu.TcpOptsEntry(**sk.pop("tcp_opts", {}))  # type: ignore[arg-type]
        opts = criu.SkOptsEntry(**sk.pop("opts"))  # type: ignore[arg-type]
        src = sk.pop("src_addr")
        dst = sk.pop("dst_addr", [0] * len(src))  # type: ignore[arg-type]
        return criu.FileEntry(type=criu.INETSK, id=fid, isk=criu.InetSkEntry(
            id=fid, ino=fd.ino & 0xFFFFFFFF, dst_port=sk.pop("dst_port", 0), flags=fd.flags,
            fown=_fown(), opts=opts, src_addr=src, dst_addr=dst, **sk))
    if fd.kind == "tty":
        return criu.FileEntry(type=criu.TTY, id=fid, tty=criu.TtyFileEntry(
            id=fid, tty_info_id=fd.sock["index"] << 1, flags=fd.flags, fown=_fown(),
            regf_id=regf_id))
    if fd.kind == "signalfd":
        return criu.FileEntry(type=criu.SIGNALFD, id=fid, sgfd=criu.SignalfdEntry(
            id=fid, flags=fd.flags, fown=_fown(), sigmask=fd.counter))
    if fd.kind == "timerfd":
        return criu.FileEntry(type=criu.TIMERFD, id=fid, tfd=criu.TimerfdEntry(
            id=fid, flags=fd.flags, fown=_fown(), **fd.timer))
    if fd.kind == "eventfd":
        return criu.FileEntry(type=criu.EVENTFD, id=fid, efd=criu.EventfdFileEntry(
            id=fid, flags=fd.flags, fown=_fown(), counter=fd.counter))
    if fd.kind == "eventpoll":
        tfds = [criu.EventpollTfdEntry(id=fid, tfd=t, events=ev, data=data, pos=pos,
                                       inode=ino, dev=dev)
                for t, ev, data, pos, ino, dev in fd.targets]
        return criu.FileEntry(type=criu.EVENTPOLL, id=fid, epfd=criu.EventpollFileEntry(
            id=fid, flags=fd.flags, fown=_fown(), tfd=tfds))
    raise ValueError(f"fd {fd.fd}: no image for kind {fd.kind!r}")


def fdinfo_entries(st: TaskState, file_id: Callable[[FdState], int]
                   ) -> list[criu.FdinfoEntry]:
    return [criu.FdinfoEntry(id=file_id(fd), flags=FD_CLOEXEC if fd.cloexec else 0,
                             type=fd_type(fd), fd=fd.fd) for fd in st.fds]


def umask_of(st: TaskState) -> int:
    return st.umask & 0o777



def own_ids(ns: NsIds, own_ns: dict[str, int], states) -> criu.TaskKobjIdsEntry:
    """The inventory's root_ids: the dumper's own namespaces (CRIU writes its own ids
    there; a task whose namespace id differs from these is restored into a new one) and
    vm/files/fs/sighand ids no task of the set uses."""
    top = max((i for s in states for i in s.kobj.values()), default=0)
    kobj = {k: top + 1 + i for i, k in enumerate(("vm", "files", "fs", "sighand"))}
    return ns.entry(own_ns, kobj)


# Special mappings CRIU marks by name (criu/proc_parse.c handle_vma).
_SPECIAL_STATUS = {"[vdso]": F.VMA_AREA_VDSO, "[vvar]": F.VMA_AREA_VVAR,
                   "[vvar_vclock]": F.VMA_AREA_VVAR, "[heap]": F.VMA_AREA_HEAP}
# smaps VmFlags -> madvise bits CRIU keeps in VmaEntry.madv (1 << MADV_x).
MADV_BITS = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15, "wf": 18}


def criu_vmas(maps, vmas, vmflags: dict[int, list[str]]):
    """The VMAs as CRIU's parse_smaps records them: [vdso], [vvar] (with [vvar_vclock]
    merged in, one VMA as CRIU 4.2 writes it), [heap] marked; MAP_GROWSDOWN, MAP_LOCKED,
    MAP_NORESERVE from VmFlags gd/lo/nr; madvise bits from VmFlags."""
    from dataclasses import replace

    out = []
    for e, v in zip(maps, vmas, strict=True):
        flags_ = vmflags.get(e.start, [])
        flags = v.flags
        flags |= MAP_GROWSDOWN if "gd" in flags_ else 0
        flags |= MAP_LOCKED if "lo" in flags_ else 0
        flags |= MAP_NORESERVE if "nr" in flags_ else 0
        madv = v.madv
        for name, bit in MADV_BITS.items():
            if name in flags_:
                madv |= 1 << bit
        status = v.status
        extra = _SPECIAL_STATUS.get(e.path)
        if extra is not None:
            status = F.VMA_AREA_REGULAR | F.VMA_ANON_PRIVATE | extra
        if (flags, madv, status) != (v.flags, v.madv, v.status):  # replace() is slow
            v = replace(v, flags=flags, madv=madv, status=status)
        if e.path == "[vvar_vclock]" and out and out[-1].status & F.VMA_AREA_VVAR \
                and out[-1].end == v.start:
            out[-1] = replace(out[-1], end=v.end)
            continue
        out.append(v)
    return out


def write_ipc_namespace(writer, ns: NsIds, ipc) -> None:
    """ipcns-var-NSID.img and ipcns-shm-NSID.img of an IPC namespace the tree has of its
    own (CRIU's dump_ipc_ns); each segment's pages are its pagemap-shmem-ID.img, written
    once with the memory (in_pagemaps), so a segment no task attaches cannot be dumped."""
    nsid = ns.get("ipc", ipc.ino)
    var = dict(ipc.var)
    sem = var.pop("sem_ctls", [])
    writer.add_image(f"ipcns-var-{nsid}.img", "IPC_VAR",
                     [criu.IpcVarEntry(sem_ctls=sem, **var)])
    segs = []
    for s in ipc.shm:
        if not writer.has_object(s["id"], "sysv"):
            raise ValueError(f"SysV shm segment {s['id']} (key {s['key']:#x}) of IPC "
                             f"namespace {ipc.ino}: no task of the tree attaches it, and "
                             "dumper dumps a segment's pages through its mappings")
        desc = criu.IpcDescEntry(key=s["key"], uid=s["uid"], gid=s["gid"], cuid=s["cuid"],
                                 cgid=s["cgid"], mode=s["mode"], id=s["id"])
        segs.append(criu.IpcShmEntry(desc=desc, size=s["size"], in_pagemaps=True))
    writer.add_image(f"ipcns-shm-{nsid}.img", "IPCNS_SHM", segs)


def write_tty_info(writer, ns: NsIds) -> None:
    if ns.ttys:
        writer.add_image("tty-info.img", "TTY_INFO", list(ns.ttys.values()))


def write_sk_queues(writer, ns: NsIds) -> None:
    """sk-queues.img: each unix socket's queued packets (stream bytes), for the socket whose
    receive queue holds them (id_for), bytes after each entry."""
    items = [(fid, data) for fid, q in ns.unix_queues.items() for data in q]
    if items:
        writer.add_image("sk-queues.img", "SK_QUEUES",
                         [criu.SkPacketEntry(id_for=fid, length=len(d)) for fid, d in items],
                         [d for _, d in items])


def write_pipes_data(writer, ns: NsIds) -> None:
    """pipes-data.img: each pipe's buffered bytes once, whichever fds name it (pipes.c
    dump_one_pipe_data: an entry, then the bytes)."""
    full = {ino: d for ino, d in ns.pipes_data.items() if d[0]}
    if full:
        writer.add_image("pipes-data.img", "PIPES_DATA",
                         [criu.PipeDataEntry(pipe_id=ino & 0xFFFFFFFF, bytes=len(data),
                                             size=size) for ino, (data, size) in full.items()],
                         [data for data, _ in full.values()])


SECCOMP_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 2, 1


def seccomp_chains(st: TaskState, cores: dict[int, criu.CoreEntry], ns: NsIds) -> None:
    """Each thread's filters into ns.seccomp, as criu/seccomp.c lays them out: newest
    first, each later (older) entry's prev naming the one before it, the thread core's
    seccomp_filter naming the oldest (installed first; restore follows prev). Threads whose
    chains are all the same (TSYNC made them, or identical ones) keep one chain, on the
    leader, flagged TSYNC; the others' mode is 0 (try_use_tsync: they get it from the
    leader's SECCOMP_FILTER_FLAG_TSYNC)."""
    lead = st.threads[0]
    shared = all(t.seccomp == SECCOMP_MODE_FILTER and t.seccomp_filters == lead.seccomp_filters
                 for t in st.threads)
    for t in st.threads:
        if t.seccomp != SECCOMP_MODE_FILTER or not t.seccomp_filters or t.tid not in cores:
            continue
        tc = cores[t.tid].thread_core
        if shared and t is not lead:
            tc.seccomp_mode = 0
            continue
        first = len(ns.seccomp)
        for prog, flags in reversed(t.seccomp_filters):
            f = criu.SeccompFilter(filter=prog, flags=flags | (
                SECCOMP_FILTER_FLAG_TSYNC if shared else 0))
            if len(ns.seccomp) > first:
                f.prev = len(ns.seccomp) - 1
            ns.seccomp.append(f)
        tc.seccomp_filter = len(ns.seccomp) - 1


def write_seccomp(writer, ns: NsIds) -> None:
    """seccomp.img: one SeccompEntry with every thread's filters (dump_seccomp_filters)."""
    if ns.seccomp:
        writer.add_image("seccomp.img", "SECCOMP",
                         [criu.SeccompEntry(seccomp_filters=ns.seccomp)])


def fd_file_id(writer, ns: NsIds, fd: FdState) -> int:
    key = fd.desc or (fd.kind, fd.dev, fd.ino, fd.flags, fd.pos, fd.path)
    fid = ns.files.get(key)
    if fid is None:
        inode = writer.memfd_inode(fd.ino) if fd.kind == "memfd" else None
        regf = 0
        if fd.kind == "tty":  # its path, as a REG entry; its settings once per terminal
            regf = writer.add_file(lambda i: reg_file(i, fd.path, fd.flags, mode=fd.mode))
            ns.ttys.setdefault(fd.sock["index"], tty_info(fd))
        fid = ns.files[key] = writer.add_file(lambda i: file_entry(i, fd, inode, ns, regf))
    if fd.kind == "pipe":
        ns.pipes_data.setdefault(fd.ino, (fd.data, fd.pipe_size))
    return fid


def task_images(writer, st: TaskState, ns: NsIds, info, maps, vmas, gate=()) -> list[str]:
    """Add one live task to the writer with everything CRIU restores it from: pstree
    threads, core per thread, ids, fs, fdinfo and files, mm extras; gate: the vsyscall VMA
    to record last, as CRIU does. Returns notes."""
    notes = [f"pid {st.pid} tid {t.tid}: {t.regs.restarted}"
             for t in st.threads if t.regs is not None and t.regs.restarted]
    # as /proc shows them: 0 is a session or group whose leader is outside the pid namespace
    common = dict(pgid=info.pgid, sid=info.sid, threads=st.tids,
                  state=TASK_STATE[st.state], cores=core_entries(st, writer.mtype))
    if st.state != DEAD:
        seccomp_chains(st, common["cores"], ns)
    if st.state == DEAD:
        writer.add_task(st.pid, info.ppid, st.comm, [], **common)
        return notes
    writer.reg_stat.update(st.files_stat)
    if st.ipcns is not None:
        write_ipc_namespace(writer, ns, st.ipcns)
    files_id = st.kobj["files"]
    if files_id not in ns.fdinfo_written:
        ns.fdinfo_written.add(files_id)
        writer.add_image(f"fdinfo-{files_id}.img", "FDINFO",
                         fdinfo_entries(st, lambda fd: fd_file_id(writer, ns, fd)))
    cwd = writer.add_file(lambda i: reg_file(i, st.cwd, os.O_RDONLY, mode=_mode(st.cwd)))
    root = writer.add_file(lambda i: reg_file(i, st.root, os.O_RDONLY, mode=_mode(st.root)))
    writer.add_image(f"fs-{st.pid}.img", "FS",
                     [criu.FsEntry(cwd_id=cwd, root_id=root, umask=umask_of(st))])
    extra = criu.MmEntry()
    extra.mm_saved_auxv.extend(st.auxv)
    if st.dumpable is not None:
        extra.dumpable = st.dumpable
    if st.thp_disabled is not None:
        extra.thp_disabled = st.thp_disabled
    writer.add_task(st.pid, info.ppid, st.comm, criu_vmas(maps, vmas, st.vmflags) + list(gate),
                    exe=st.exe, mm=st.mm, ids=ns.entry(st.ns, st.kobj), mm_extra=extra,
                    **common)
    return notes


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0
