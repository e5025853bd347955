"""Gather a frozen task's non-memory state (dumper.state.TaskState) from the live kernel.

Read from /proc (stat, status, auxv, limits via prlimit, fd, fdinfo, ns), from ptrace
(registers, XSAVE, signal mask, rseq, pending signals) and, for what only the task can
answer, by syscalls injected into its stopped threads (dumper.linux.inject): signal
actions, the clear-tid address, sigaltstack, itimers, securebits, child-subreaper,
pdeath signal and dumpable. restore.md §5.1 lists the same sources.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Collection

from dumper.host import parse_maps
from dumper.linux import buildid, files, inject, libc, procfs, regs
from dumper.linux.errors import ProcError, Unsupported
from dumper.state import ALIVE, DEAD, STOPPED, Creds, TaskState, ThreadState

PTRACE_PEEKSIGINFO = 0x4209
PTRACE_PEEKSIGINFO_SHARED = 1
SIGINFO_SIZE = 128
NS_KINDS = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")
RLIMIT_NLIMITS = 16
AT_VECTOR_SIZE = 44  # CRIU's auxv bound: 2 * (AT_VECTOR_SIZE_ARCH 2 + AT_VECTOR_SIZE_BASE 20)
SYS_prlimit64, SYS_get_robust_list, SYS_kcmp = 302, 274, 312
KCMP = {"vm": 1, "files": 2, "fs": 3, "sighand": 4}  # include/uapi/linux/kcmp.h
KCMP_FILE = 0

# The /proc/PID/stat fields (1-based) MmEntry takes (fs/proc/array.c do_task_stat).
MM_STAT_FIELDS = {"mm_start_code": 26, "mm_end_code": 27, "mm_start_stack": 28,
                  "mm_start_data": 45, "mm_end_data": 46, "mm_start_brk": 47,
                  "mm_arg_start": 48, "mm_arg_end": 49, "mm_env_start": 50,
                  "mm_env_end": 51}
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long


def _sys(nr: int, *args: int) -> int:
    ret = _syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """/proc/PID/stat split into fields, 1-based (index 0 unused), comm kept whole."""
    text = procfs.read_text(pid, "stat") if tid is None else procfs.read_text(
        pid, "task", tid, "stat")
    lpar, rpar = text.index("("), text.rindex(")")
    return ["", text[:lpar].strip(), text[lpar + 1 : rpar], *text[rpar + 2 :].split()]


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def read_creds(status: dict[str, str]) -> Creds:
    """Credentials from /proc/PID/status (fs/proc/array.c task_cred, render_cap_t)."""
    uids = tuple(int(x) for x in status["Uid"].split())
    gids = tuple(int(x) for x in status["Gid"].split())
    return Creds(uids=uids, gids=gids,  # type: ignore[arg-type]
                 groups=[int(g) for g in status.get("Groups", "").split()],
                 cap_inh=int(status["CapInh"], 16), cap_prm=int(status["CapPrm"], 16),
                 cap_eff=int(status["CapEff"], 16), cap_bnd=int(status["CapBnd"], 16),
                 cap_amb=int(status.get("CapAmb", "0"), 16),
                 no_new_privs=int(status.get("NoNewPrivs", "0")))


def rlimits(pid: int) -> list[tuple[int, int]]:
    """prlimit64(pid, r, NULL, &old) for every resource (kernel/sys.c do_prlimit); for a task
    of another uid that needs CAP_SYS_RESOURCE (check_prlimit_permission), which root lacks
    here (restore.md §8.3), so /proc/PID/limits answers instead."""
    out = []
    buf = (ctypes.c_uint64 * 2)()
    for r in range(RLIMIT_NLIMITS):
        try:
            _sys(SYS_prlimit64, pid, r, 0, ctypes.addressof(buf))
        except PermissionError:
            return proc_limits(pid)
        out.append((buf[0], buf[1]))
    return out


RLIM_INFINITY = (1 << 64) - 1


def proc_limits(pid: int) -> list[tuple[int, int]]:
    """(soft, hard) per resource from /proc/PID/limits (fs/proc/base.c proc_pid_limits: one
    row per resource in RLIMIT_ order, "%-25s %-20s %-20s", "unlimited" for RLIM_INFINITY)."""
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]

    def value(text: str) -> int:
        text = text.strip()
        return RLIM_INFINITY if text == "unlimited" else int(text)

    out = [(value(row[26:47]), value(row[47:68])) for row in rows[:RLIMIT_NLIMITS]]
    if len(out) != RLIMIT_NLIMITS:
        raise OSError(errno.EIO, f"/proc/{pid}/limits: {len(out)} rows, expected "
                      f"{RLIMIT_NLIMITS}")
    return out


def robust_list(tid: int) -> tuple[int, int]:
    """get_robust_list(tid, &head, &len) (kernel/futex/syscalls.c): no injection needed."""
    head, size = ctypes.c_uint64(), ctypes.c_uint64()
    _sys(SYS_get_robust_list, tid, ctypes.addressof(head), ctypes.addressof(size))
    return head.value, size.value


def rseq_config(tid: int) -> tuple[int, int, int] | None:
    """PTRACE_GET_RSEQ_CONFIGURATION: (pointer, size, signature), None if unregistered."""
    conf = ctypes.create_string_buffer(24)
    try:
        libc.ptrace(libc.PTRACE_GET_RSEQ_CONFIGURATION, tid, len(conf), ctypes.addressof(conf))
    except OSError:
        return None
    ptr, size, sig = struct.unpack("<QII", conf.raw[:16])
    return (ptr, size, sig) if ptr else None


PTRACE_SECCOMP_GET_FILTER, PTRACE_SECCOMP_GET_METADATA = 0x420C, 0x420D
SECCOMP_MODE_FILTER, BPF_MAXINSNS = 2, 4096


def seccomp_filters(tid: int) -> list[tuple[bytes, int]]:
    """The thread's filters, oldest first (kernel/seccomp.c get_seccomp_filter: index 0
    is the first installed; ENOENT past the last): each the classic BPF program as
    installed (8 bytes an instruction) and its flags (seccomp_get_metadata: LOG)."""
    out = []
    buf = ctypes.create_string_buffer(8 * BPF_MAXINSNS)
    meta = ctypes.create_string_buffer(16)
    for i in range(BPF_MAXINSNS):
        try:
            n = libc.ptrace(PTRACE_SECCOMP_GET_FILTER, tid, i, ctypes.addressof(buf))
        except OSError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        struct.pack_into("<QQ", meta, 0, i, 0)
        libc.ptrace(PTRACE_SECCOMP_GET_METADATA, tid, 16, ctypes.addressof(meta))
        out.append((buf.raw[: 8 * n], struct.unpack_from("<Q", meta, 8)[0]))
    return out


def pending_signals(tid: int, shared: bool) -> list[bytes]:
    """The queued siginfos, private or shared, by PTRACE_PEEKSIGINFO (kernel/ptrace.c
    ptrace_peek_siginfo); they stay queued."""
    out: list[bytes] = []
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * 32)
    while True:
        args = struct.pack("<QII", len(out), PTRACE_PEEKSIGINFO_SHARED if shared else 0, 32)
        a = ctypes.create_string_buffer(args)
        n = libc.ptrace(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(a), ctypes.addressof(buf))
        if n <= 0:
            return out
        out += [buf.raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(n)]


def sched(tid: int) -> tuple[int, int, int]:
    """(policy, rt priority, nice) of a thread (sched_getscheduler/getparam, getpriority)."""
    policy = os.sched_getscheduler(tid) & ~0x40000000  # SCHED_RESET_ON_FORK
    prio = os.sched_getparam(tid).sched_priority
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    return policy, prio, nice


def ns_inodes(pid: int) -> dict[str, int]:
    out = {}
    for kind in NS_KINDS:
        try:
            out[kind] = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
        except OSError:
            continue  # a kernel without that namespace kind
    return out


def kcmp(pid1: int, pid2: int, what: str) -> bool:
    """Whether two tasks share their mm/files/fs/sighand (kernel/kcmp.c)."""
    return _sys(SYS_kcmp, pid1, pid2, KCMP[what], 0, 0) == 0


def _readlink(pid: int, name: str) -> str:
    path = f"/proc/{pid}/{name}"
    try:
        return os.readlink(path)
    except OSError as e:
        raise ProcError.from_os(pid, path, e) from None


def _read_int(pid: int, name: str) -> int | None:
    try:
        return int(procfs.read_text(pid, name).split()[0])
    except (ProcError, ValueError, IndexError):
        return None


def zombie_state(pid: int) -> TaskState:
    """A zombie keeps only its pid, ids and exit code (stat field 52, the wait status as
    do_task_stat prints exit_code), as CRIU's dump_one_zombie records it."""
    f = stat_fields(pid)
    return TaskState(pid=pid, state=DEAD, exit_code=int(f[52]), comm=f[2],
                     threads=[ThreadState(tid=pid, comm=f[2])], live=True)


def thread_state(pid: int, tid: int, inj: inject.Injector, buf: int) -> ThreadState:
    status = parse_status(procfs.read_text(pid, "task", tid, "status"))
    t = ThreadState(tid=tid, comm=stat_fields(pid, tid)[2], regs=regs.thread_regs(tid))
    t.creds = read_creds(status)
    t.creds.secbits = inject.prctl_value(inj, inject.PR_GET_SECUREBITS)
    t.clear_tid = inject.tid_address(inj, buf)
    t.sas = inject.sigaltstack(inj, buf)
    t.pdeath_sig = inject.prctl_value(inj, inject.PR_GET_PDEATHSIG, buf)
    t.robust_list = robust_list(tid)
    t.rseq = rseq_config(tid)
    t.sched = sched(tid)
    t.pending = pending_signals(tid, shared=False)
    t.seccomp = int(status.get("Seccomp", "0"))
    if t.seccomp == SECCOMP_MODE_FILTER:
        t.seccomp_filters = seccomp_filters(tid)
    return t


def task_state(pid: int, tids: list[int], leave_out: Collection[str] = (),
               stopped: bool = False) -> TaskState:
    """Everything but memory of a frozen, live task whose threads tids are all seized;
    stopped: it was group-stopped before the freeze (/proc shows every tracee as 't')."""
    f = stat_fields(pid)
    if f[3] in ("Z", "X"):
        if tids == [pid]:
            return zombie_state(pid)
        raise Unsupported(f"pid {pid}: its leader thread has exited (pthread_exit) while "
                          f"threads {tids[1:]} run on: dumper cannot dump such a task yet")
    status = parse_status(procfs.read_text(pid, "status"))
    st = TaskState(pid=pid, comm=f[2], flags=int(f[9]), live=True,
                   state=STOPPED if stopped or f[3] == "T" else ALIVE)
    st.personality = int(procfs.read_text(pid, "personality"), 16)
    st.mm = {k: int(f[i]) for k, i in MM_STAT_FIELDS.items()}
    with open(f"/proc/{pid}/auxv", "rb") as auxv:
        raw = auxv.read()
    st.auxv = list(struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8]))
    while len(st.auxv) >= 2 and st.auxv[-2] == 0:  # the AT_NULL terminator
        del st.auxv[-2:]
    # CRIU reads at most AT_VECTOR_SIZE words and refuses an image with more (prepare_mm)
    st.auxv = st.auxv[:AT_VECTOR_SIZE]
    st.exe = _readlink(pid, "exe")
    st.cwd, st.root = _readlink(pid, "cwd"), _readlink(pid, "root")
    st.umask = int(status.get("Umask", "0022"), 8)
    st.thp_disabled = status.get("THP_enabled", "1") == "0"
    st.loginuid = _read_int(pid, "loginuid")
    st.oom_score_adj = _read_int(pid, "oom_score_adj")
    st.rlimits = rlimits(pid)
    st.ns = ns_inodes(pid)
    st.fds = files.collect_fds(pid, leave_out)
    st.shared_pending = pending_signals(pid, shared=True)
    st.vmflags = procfs.read_vmflags(pid)
    st.vdso = vdso_image(pid)
    for path in {st.exe, *(e.path for e in _file_maps(pid))}:
        real = f"/proc/{pid}/root{path}"  # through the task's root: its mount namespace
        try:
            s = os.stat(real)
        except OSError:
            continue
        st.files_stat[path] = (s.st_size, s.st_mode, buildid.build_id(real))
    inj = inject.Injector(pid, pid)
    with inj.scratch() as buf:
        st.sigactions = inject.sigactions(inj, buf)
        st.itimers = inject.itimers(inj, buf)
        st.child_subreaper = bool(inject.prctl_value(inj, inject.PR_GET_CHILD_SUBREAPER, buf))
        st.dumpable = inject.prctl_value(inj, inject.PR_GET_DUMPABLE)
        st.mm["mm_brk"] = inj.check("brk", 0)  # mm->brk, which /proc does not show
        for tid in tids:
            tinj = inj if tid == pid else inject.Injector(pid, tid, inj.gate)
            st.threads.append(thread_state(pid, tid, tinj, buf))
    return st


def vdso_image(pid: int) -> tuple[int, bytes] | None:
    """(start, bytes) of pid's [vdso], the bytes read from our own: the kernel maps the same
    image (vdso_image_64) into every 64-bit task (restore.md §5.3), and reading the task's
    would fault in pages it never touched. A vdso of another size (a 32-bit task) is left
    to the memory dump."""
    theirs, mine = inject.vdso_range(pid), inject.vdso_range(os.getpid())
    if theirs is None or mine is None or theirs[1] - theirs[0] != mine[1] - mine[0]:
        return None
    return theirs[0], ctypes.string_at(mine[0], mine[1] - mine[0])


def _file_maps(pid: int):
    return [e for e in parse_maps(procfs.task_maps(pid)) if e.path.startswith("/")]


def assign_descriptions(states: list[TaskState]) -> None:
    """Number the open file descriptions: fds that share one (dup, or inherited over fork)
    get the same desc, found by kcmp(KCMP_FILE) (kernel/kcmp.c: the same struct file) among
    the fds on the same inode, as CRIU's files.img holds one entry per description."""
    seen: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # (dev, ino) -> pid, fd, desc
    next_desc = 1
    for st in states:
        for fd in st.fds:
            for pid, other, desc in seen.get((fd.dev, fd.ino), ()):
                try:
                    if _sys(SYS_kcmp, st.pid, pid, KCMP_FILE, fd.fd, other) == 0:
                        fd.desc = desc
                        break
                except OSError:
                    continue
            else:
                fd.desc = next_desc
                next_desc += 1
                seen.setdefault((fd.dev, fd.ino), []).append((st.pid, fd.fd, fd.desc))


def check_unix_peers(states: list[TaskState], leave_out: Collection[str]) -> None:
    """A connected unix socket whose peer is not in the tree cannot be restored (the other
    end is gone): refused, or left out with --leave-out socket / any."""
    inodes = {fd.ino for st in states for fd in st.fds if fd.kind == "socket"}
    for st in states:
        keep = []
        for fd in st.fds:
            peer = fd.sock.get("peer") if fd.kind == "socket" else None
            if peer and peer not in inodes:
                if not {"socket", "any"} & set(leave_out):
                    raise Unsupported(f"pid {st.pid}: fd {fd.fd} is a unix socket ({fd.path}) "
                                      f"whose peer, socket {peer}, is outside the dumped tree "
                                      "(leave it out with --leave-out socket)")
                continue
            keep.append(fd)
        st.fds = keep


def assign_kobj_ids(states: list[TaskState]) -> None:
    """vm/files/fs/sighand ids: equal for tasks that share the object (kcmp), as CRIU's
    kid_generate keys them; zombies have none."""
    seen: dict[str, list[tuple[int, int]]] = {k: [] for k in KCMP}  # (pid, id) per kind
    next_id = 1
    for st in states:
        if st.state == DEAD:
            continue
        for kind in KCMP:
            for other, oid in seen[kind]:
                try:
                    if kcmp(st.pid, other, kind):
                        st.kobj[kind] = oid
                        break
                except OSError as e:
                    if e.errno != errno.ESRCH:
                        raise
            else:
                st.kobj[kind] = next_id
                seen[kind].append((st.pid, next_id))
                next_id += 1
