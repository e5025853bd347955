"""The non-memory state of an image set read back for a restore: core-TID, ids, fs, fdinfo,
files, pipes-data and mm-PID's extras as dumper.state's TaskState — criustate's inverse, for
dumper's sets and CRIU 4.2's alike (the same images, criu/cr-restore.c reads them).

Portable: a restore target gets plain data, never a protobuf message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dumper.images import codec
from dumper.images import flags as F
from dumper.images import magic as M
from dumper.images.errors import ImageError
from dumper.images.reader import ImageSet
from dumper.linux.regs import GPREGS
from dumper.restore_fdstate import Shared, fd_state
from dumper.state import (
    ALIVE,
    DEAD,
    STOPPED,
    Creds,
    Fpu,
    TaskState,
    ThreadRegs,
    ThreadState,
)

STATES = {F.TASK_ALIVE: ALIVE, F.TASK_DEAD: DEAD, F.TASK_ZOMBIE: DEAD, F.TASK_STOPPED: STOPPED}
XSAVE_FIELDS = {2: ("ymmh_space", "I"), 3: ("bndreg_state", "Q"), 4: ("bndcsr_state", "Q"),
                5: ("opmask_reg", "Q"), 6: ("zmm_upper", "Q"), 7: ("hi16_zmm", "Q"),
                9: ("pkru", "I")}


@dataclass
class SetState:
    """Every task's TaskState, plus what the set shares: pipe data by pipe inode, and the
    size/mode/build-id recorded for each referenced regular file."""

    tasks: dict[int, TaskState]
    pipes: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    files: dict[str, tuple[int | None, int, list[int] | None]] = field(default_factory=dict)


def _legacy(fp) -> bytes:
    """struct fxregs_state (512 bytes) from UserX86FpregsEntry."""
    head = struct.pack("<HHHHQQII", fp.cwd, fp.swd, fp.twd, fp.fop, fp.rip, fp.rdp,
                       fp.mxcsr, fp.mxcsr_mask)
    st = struct.pack(f"<{len(fp.st_space)}I", *fp.st_space).ljust(128, b"\0")
    xmm = struct.pack(f"<{len(fp.xmm_space)}I", *fp.xmm_space).ljust(256, b"\0")
    return (head + st + xmm).ljust(512, b"\0")


def fpu_of(fp) -> Fpu:
    fpu = Fpu(legacy=_legacy(fp), xstate_bv=0, xcr0=0)
    if fp.HasField("xsave"):
        x = fp.xsave
        fpu.xstate_bv = x.xstate_bv
        for feature, (name, fmt) in XSAVE_FIELDS.items():
            words = list(getattr(x, name))
            if words:
                fpu.components[feature] = struct.pack(f"<{len(words)}{fmt}", *words)
    return fpu


def _tls(d) -> bytes:
    bits = (d.seg_32bit | d.contents_l << 1 | d.contents_h << 2 | d.read_exec_only << 3
            | d.limit_in_pages << 4 | d.seg_not_present << 5 | d.usable << 6)
    return struct.pack("<IIII", d.entry_number, d.base_addr, d.limit, bits)


def _creds(c) -> Creds:
    def cap(words) -> int:
        w = list(words) + [0, 0]
        return w[0] | w[1] << 32

    return Creds(uids=(c.uid, c.euid, c.suid, c.fsuid), gids=(c.gid, c.egid, c.sgid, c.fsgid),
                 groups=list(c.groups), cap_inh=cap(c.cap_inh), cap_prm=cap(c.cap_prm),
                 cap_eff=cap(c.cap_eff), cap_bnd=cap(c.cap_bnd), cap_amb=cap(c.cap_amb),
                 secbits=c.secbits, no_new_privs=c.no_new_privs)


def thread_of(tid: int, core) -> ThreadState:
    """One thread's core-TID.img entry (criu/cr-restore.c prepare_thread, restore_thread)."""
    t = ThreadState(tid=tid, comm=core.tc.comm if core.HasField("tc") else "")
    if core.HasField("thread_core"):
        tc = core.thread_core
        t.comm = tc.comm or t.comm
        t.robust_list = (tc.futex_rla, tc.futex_rla_len)
        if tc.HasField("sas"):
            t.sas = (tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags)
        t.sched = (tc.sched_policy, tc.sched_prio, tc.sched_nice)
        t.pdeath_sig = tc.pdeath_sig
        if tc.HasField("creds"):
            t.creds = _creds(tc.creds)
        if tc.HasField("rseq_entry") and tc.rseq_entry.rseq_abi_pointer:
            r = tc.rseq_entry
            t.rseq = (r.rseq_abi_pointer, r.rseq_abi_size, r.signature)
        t.pending = [s.siginfo for s in tc.signals_p.signals]
        t.seccomp = tc.seccomp_mode if tc.HasField("seccomp_mode") else (
            core.tc.old_seccomp_mode if core.HasField("tc") else 0)
    if core.HasField("thread_info"):
        ti = core.thread_info
        mask = core.thread_core.blk_sigset if core.HasField("thread_core") and \
            core.thread_core.HasField("blk_sigset") else core.tc.blk_sigset
        t.clear_tid = ti.clear_tid_addr
        t.regs = ThreadRegs(gpregs={k: getattr(ti.gpregs, k) for k in GPREGS},
                            fpu=fpu_of(ti.fpregs), tls=[_tls(d) for d in ti.tls],
                            sigmask=mask)
    return t


def _load(images: ImageSet, name: str, kind: str, need: bool = True):
    path = images.path / name
    if not path.exists():
        if need:
            raise ImageError(str(path), "missing (a restore on Linux needs it)")
        return None
    return codec.load(path, codec.BY_NAME[kind])


def read_state(images: ImageSet) -> SetState:
    """The set's TaskStates, in pstree order; ImageError names a missing or bad image."""
    files = {}
    img = _load(images, M.FILES, "FILES", need=False)
    for fe in img.entries if img else ():
        files[fe.id] = fe
    out = SetState(tasks={})
    for fe in files.values():
        if fe.HasField("reg"):
            out.files[fe.reg.name] = (fe.reg.size if fe.reg.HasField("size") else None,
                                      fe.reg.mode, list(fe.reg.build_id) or None)
    img = _load(images, "pipes-data.img", "PIPES_DATA", need=False)
    for e, data in zip(img.entries, img.extras, strict=True) if img else ():
        out.pipes[e.pipe_id] = (data, e.size)
    shared = Shared(pipes=out.pipes, memfds=images._memfd_by_inode, objects=images.objects)
    img = _load(images, "tty-info.img", "TTY_INFO", need=False)
    for e in img.entries if img else ():
        shared.ttys[e.id] = e
    img = _load(images, "sk-queues.img", "SK_QUEUES", need=False)
    for e, data in zip(img.entries, img.extras, strict=True) if img else ():
        shared.queues.setdefault(e.id_for, []).append(data)
    seccomp = None  # seccomp.img, read once when a thread is in filter mode
    for t in images.tasks.values():
        lead = _single(images, _load(images, M.core(t.pid), "CORE"))
        if lead.tc.task_state in (F.TASK_DEAD, F.TASK_ZOMBIE):
            t.threads = (t.pid,)  # CRIU's pstree entry of a zombie lists no real threads
        cores = {tid: lead if tid == t.pid else _single(images, _load(images, M.core(tid), "CORE"))
                 for tid in t.threads}
        st = TaskState(pid=t.pid, comm=lead.tc.comm, state=STATES.get(lead.tc.task_state, ALIVE),
                       exit_code=lead.tc.exit_code, personality=lead.tc.personality,
                       flags=lead.tc.flags, live=True)
        st.threads = [thread_of(tid, cores[tid]) for tid in t.threads]
        for th in st.threads:
            if th.seccomp == SECCOMP_MODE_FILTER:
                if seccomp is None:
                    seccomp = _load(images, M.SECCOMP, "SECCOMP", need=False) or False
                th.seccomp_filters = _seccomp_chain(seccomp, cores[th.tid], th.tid)
        out.tasks[t.pid] = st
        if st.state == DEAD:
            continue
        tc = lead.tc
        st.sigactions = [(s.sigaction, s.flags, s.restorer, s.mask) for s in tc.sigactions]
        st.rlimits = [(r.cur, r.max) for r in tc.rlimits.rlimits]
        st.child_subreaper = tc.child_subreaper
        if tc.HasField("timers"):
            st.itimers = [(x.isec, x.iusec, x.vsec, x.vusec)
                          for x in (tc.timers.real, tc.timers.virt, tc.timers.prof)]
        if tc.HasField("oom_score_adj"):
            st.oom_score_adj = tc.oom_score_adj
        st.shared_pending = [s.siginfo for s in tc.signals_s.signals]
        mm = _single(images, _load(images, M.mm(t.pid), "MM"))
        st.mm = {k: getattr(mm, k) for k in (
            "mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack",
            "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start",
            "mm_env_end")}
        st.auxv = list(mm.mm_saved_auxv)
        st.exe = t.exe
        if mm.HasField("dumpable"):
            st.dumpable = mm.dumpable
        # fs and fdinfo: CRIU and dumper write both for every live task (an empty fd
        # table is an empty fdinfo); one missing is a damaged set, not "no fds, cwd /"
        e = _single(images, _load(images, M.fs(t.pid), "FS"))
        st.cwd = _reg_name(files, e.cwd_id) or "/"
        st.root = _reg_name(files, e.root_id) or "/"
        st.umask = e.umask if e.HasField("umask") else 0o022
        ids = _single(images, _load(images, M.ids(t.pid), "IDS"))
        st.kobj = {"vm": ids.vm_id, "files": ids.files_id, "fs": ids.fs_id,
                   "sighand": ids.sighand_id}
        fdinfo = _load(images, M.fdinfo(ids.files_id), "FDINFO")
        for off, e in zip(fdinfo.offsets, fdinfo.entries, strict=True):
            st.fds.append(fd_state(fdinfo.path, off, t.pid, e, files, shared))
    return out


SECCOMP_MODE_FILTER = 2


def _seccomp_chain(img, core, tid: int) -> list[tuple[bytes, int]]:
    """A thread's filters in install order: from its core's seccomp_filter along prev
    (criu/seccomp.c prepare_seccomp_filters); [] when the set has no seccomp.img."""
    if not img or not img.entries:
        return []
    filters = img.entries[0].seccomp_filters
    tc = core.thread_core if core.HasField("thread_core") else core.tc
    at = tc.seccomp_filter if tc.HasField("seccomp_filter") else 0
    out: list[tuple[bytes, int]] = []
    while True:
        if at >= len(filters) or len(out) >= len(filters):
            raise ImageError(img.path, f"thread {tid}: seccomp filter index {at} is past "
                             f"its {len(filters)} filters (or the chain loops)", 0)
        f = filters[at]
        if len(f.filter) % 8:
            raise ImageError(img.path, f"thread {tid}: seccomp filter {at} is "
                             f"{len(f.filter)} bytes, not whole BPF instructions", 0)
        out.append((f.filter, f.flags))
        if not f.HasField("prev"):
            return out
        at = f.prev


def _single(images: ImageSet, img):
    if len(img.entries) != 1:
        raise ImageError(img.path, f"holds {len(img.entries)} entries, expected one", 0)
    return img.entries[0]


def _reg_name(files: dict, fid: int) -> str:
    fe = files.get(fid)
    return fe.reg.name if fe is not None and fe.HasField("reg") else ""
