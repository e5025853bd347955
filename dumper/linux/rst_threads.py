"""A restored task's threads, registers and process state (restore.md §5.1 (h)-(p), §6).

Threads are cloned by the leader (clone3 CLONE_THREAD with set_tid, §6.2); each sets its own
clear-tid address, robust list, rseq, altstack and name by injection in itself. The task
gets its mm fields and auxv (PR_SET_MM_MAP, §5.4, §5.10), signal actions (§5.7), cwd, root,
umask, rlimits (credentials after all that: rst_creds). Registers go in last, when
nothing more is injected: the dumped general registers (already restart-fixed at dump, as
compel_get_task_regs leaves them: §5.9), the XSAVE area (§5.5), the signal mask.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

from dumper.linux import libc, regs
from dumper.linux.rst_inject import AT_FDCWD, RestoreInjector
from dumper.linux.rst_tree import THREAD_FLAGS
from dumper.state import Fpu, TaskState, ThreadState

PR_SET_DUMPABLE, PR_SET_NAME = 4, 15
PR_SET_MM, PR_SET_MM_MAP, PR_SET_CHILD_SUBREAPER = 35, 14, 36
SS_DISABLE = 2
NO_SIGNALS = (signal.SIGKILL, signal.SIGSTOP)
MM_FIELDS = ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_brk",
             "mm_brk", "mm_start_stack", "mm_arg_start", "mm_arg_end", "mm_env_start",
             "mm_env_end")  # struct prctl_mm_map's order (include/uapi/linux/prctl.h)
SYS_prlimit64 = 302
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long


class StateError(OSError):
    """A piece of process state the kernel refused; the message names the task and what."""


def create_threads(inj: RestoreInjector, st: TaskState) -> dict[int, RestoreInjector]:
    """Every thread but the leader, by clone3 CLONE_THREAD set_tid=[tid] in the leader."""
    out = {st.pid: inj}
    for t in st.threads[1:]:
        tid = inj.clone3(THREAD_FLAGS, 0, t.tid)
        out[t.tid] = RestoreInjector(inj.pid, tid, inj.gate, inj.scratch_addr)
    return out


def thread_setup(inj: RestoreInjector, t: ThreadState) -> None:
    """What each thread holds itself: clear-tid, robust list, rseq, altstack, name (its
    credentials, parent-death signal, no_new_privs and seccomp come last: rst_creds)."""
    inj.check("set_tid_address", t.clear_tid)
    if t.robust_list[0]:
        inj.check("set_robust_list", t.robust_list[0], t.robust_list[1])
    if t.rseq is not None:
        ptr, size, sig = t.rseq
        inj.check("rseq", ptr, size, 0, sig)
    if not t.sas[2] & SS_DISABLE and t.sas[1]:
        inj.check("sigaltstack", inj.put(struct.pack("<Qi4xQ", t.sas[0], t.sas[2], t.sas[1])), 0)
    if t.comm:
        inj.check("prctl", PR_SET_NAME, inj.put_str(t.comm[:15]))


def queue_pending(threads: dict[int, RestoreInjector], st: TaskState) -> None:
    """The queued signals, private and shared, re-queued by each thread itself
    (rt_tgsigqueueinfo/rt_sigqueueinfo: from another process a siginfo with si_code >= 0
    is refused, kernel/signal.c do_rt_tgsigqueueinfo). Blocked while we inject, they are
    delivered once the thread runs with its own mask."""
    for t in st.threads:
        inj = threads[t.tid]
        for info in t.pending:
            sig = struct.unpack_from("<i", info)[0]
            inj.check("rt_tgsigqueueinfo", st.pid, t.tid, sig, inj.put(info, 3584))
    for info in st.shared_pending:
        sig = struct.unpack_from("<i", info)[0]
        threads[st.pid].check("rt_sigqueueinfo", st.pid, sig, threads[st.pid].put(info, 3584))


def task_setup(inj: RestoreInjector, st: TaskState, host: dict[int, int]) -> list[str]:
    """The task-wide state; returns notes on what the kernel would not take. host: each
    thread's tid as we see it (another pid namespace's tids are not ours)."""
    notes = []
    set_mm_map(inj, st)
    sa = struct.Struct("<QQQQ")
    sigs = [s for s in range(1, 65) if s not in NO_SIGNALS]
    for sig, act in zip(sigs, st.sigactions, strict=False):
        inj.check("rt_sigaction", sig, inj.put(sa.pack(*act)), 0, 8)
    inj.check("umask", st.umask)
    if st.personality:
        inj.check("personality", st.personality)
    for which, timer in enumerate(st.itimers):
        if any(timer):  # struct itimerval: it_interval then it_value (kernel/time/itimer.c)
            inj.check("setitimer", which, inj.put(struct.pack("<4q", *timer)), 0)
    if st.oom_score_adj is not None:
        try:
            with open(f"/proc/{inj.pid}/oom_score_adj", "w") as f:
                f.write(str(st.oom_score_adj))
        except OSError as e:
            notes.append(f"task {st.pid}: oom_score_adj {st.oom_score_adj}: {e.strerror}")
    for t in st.threads:
        notes += set_sched(t, host.get(t.tid, t.tid))
    if st.root not in ("", "/"):
        _path_call(inj, "chroot", st.root)
    if st.cwd:
        _path_call(inj, "chdir", st.cwd)
    if st.dumpable is not None:
        inj.check("prctl", PR_SET_DUMPABLE, st.dumpable)
    if st.child_subreaper:
        inj.check("prctl", PR_SET_CHILD_SUBREAPER, 1)
    buf = (ctypes.c_uint64 * 2)()
    for r, (cur, hi) in enumerate(st.rlimits):
        buf[0], buf[1] = cur, hi
        if _syscall(ctypes.c_long(SYS_prlimit64), ctypes.c_long(inj.pid), ctypes.c_long(r),
                    ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_void_p(0)) < 0:
            err = ctypes.get_errno()
            notes.append(f"task {st.pid}: rlimit {r} ({cur}, {hi}) not set: "
                         f"{os.strerror(err)}")
    return notes


def set_sched(t: ThreadState, tid: int) -> list[str]:
    """The thread's policy, RT priority and nice (sched_setscheduler, setpriority), set from
    the restorer (tid: ours for it): no injection needed."""
    policy, prio, nice = t.sched
    try:
        if policy or prio:
            os.sched_setscheduler(tid, policy, os.sched_param(prio))
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as e:
        return [f"thread {t.tid}: scheduling ({policy}, {prio}, nice {nice}): {e.strerror}"]
    return []


def _path_call(inj: RestoreInjector, name: str, path: str) -> None:
    ret = inj.call(name, inj.put_str(path, 1024))
    if ret < 0:
        raise StateError(-ret, f"task {inj.pid}: {name} {path}: {os.strerror(-ret)}")


def set_mm_map(inj: RestoreInjector, st: TaskState) -> None:
    """prctl(PR_SET_MM, PR_SET_MM_MAP) (kernel/sys.c prctl_set_mm_map): code/data/brk/
    stack/args/env bounds, auxv and the exe file, as the dumped mm had them."""
    auxv = list(st.auxv) + [0, 0]  # AT_NULL
    auxv_addr = inj.put(struct.pack(f"<{len(auxv)}Q", *auxv), 2048)
    exe_fd = -1
    if st.exe and not st.exe.endswith(" (deleted)"):
        exe_fd = inj.call("openat", AT_FDCWD & ((1 << 64) - 1), inj.put_str(st.exe, 1024),
                          os.O_RDONLY, 0)
    rets = []
    try:
        for fd in (exe_fd, -1) if exe_fd >= 0 else (-1,):
            m = struct.pack("<11QQII", *(st.mm.get(k, 0) for k in MM_FIELDS), auxv_addr,
                            len(auxv) * 8, fd & 0xFFFFFFFF)
            ret = inj.call("prctl", PR_SET_MM, PR_SET_MM_MAP, inj.put(m, 3072), len(m))
            if ret == 0:
                return
            rets.append(f"exe_fd {fd}: {os.strerror(-ret)}")
        raise StateError(-ret, f"task {st.pid}: PR_SET_MM_MAP (brk {st.mm.get('mm_brk', 0):#x}"
                         f", exe {st.exe}): {'; '.join(rets)}")
    finally:
        if exe_fd >= 0:
            inj.call("close", exe_fd)


def xstate_area(tid: int, fpu: Fpu) -> bytes:
    """The thread's XSAVE area with the dumped state in it: the kernel's own area (its size
    and sw_reserved words: xstateregs_set wants exactly that size) with the legacy region,
    XSTATE_BV and every dumped component written over."""
    area = bytearray(regs.get_xstate(tid))
    area[:464] = fpu.legacy[:464]
    if fpu.xstate_bv or fpu.components:
        area[512:520] = struct.pack("<Q", fpu.xstate_bv)
        for feature, data in fpu.components.items():
            off, size = regs.xfeature_layout(feature)
            area[off : off + min(size, len(data))] = data[:size]
    return bytes(area)


# Syscalls that return -ERESTARTNOHAND when a signal interrupts them (kernel/signal.c
# sigsuspend, sys_pause; fs/select.c): a handler makes them return EINTR, never restart.
NOHAND_SYSCALLS = {7, 23, 34, 130, 270, 271}


def unfix_restart(pid: int, r: dict[str, int]) -> dict[str, int]:
    """The dump recorded an interrupted syscall as re-executed (compel's fix-up: ax = nr,
    ip on the `syscall`). Resuming it that way, a signal that arrives before the thread
    re-enters the call runs its handler and then the call again — sigsuspend sleeps on
    though its signal came. Handing the kernel back the interrupted state instead (ip after
    the instruction, ax = -ERESTARTNOHAND for the calls that use it, else -ERESTARTSYS, and
    orig_ax = nr) lets its own restart logic decide at resume (restore.md §5.9 Fix B:
    arch_do_signal_or_restart re-executes it; handle_signal makes it EINTR under a handler
    as the kernel would have)."""
    out = dict(r)
    nr = r["orig_ax"]
    if nr >= 1 << 63 or r["ax"] != nr:
        out["orig_ax"] = (1 << 64) - 1  # not in a syscall, or its result is decided
        return out
    from dumper.linux.inject import read_mem

    try:
        at_syscall = read_mem(pid, r["ip"], 2) == b"\x0f\x05"
    except OSError:
        at_syscall = False
    if not at_syscall:
        out["orig_ax"] = (1 << 64) - 1
        return out
    code = regs.ERESTARTNOHAND if nr in NOHAND_SYSCALLS else regs.ERESTARTSYS
    out.update(ip=r["ip"] + 2, ax=(-code) & ((1 << 64) - 1))
    return out


def set_registers(pid: int, tid: int, t: ThreadState) -> None:
    """SETREGS (the syscall restart handed back to the kernel: unfix_restart), SETREGSET
    NT_X86_XSTATE, SETSIGMASK."""
    if t.regs is None:
        raise StateError(errno.EINVAL, f"thread {tid}: the images hold no registers")
    r = unfix_restart(pid, t.regs.gpregs)
    buf = ctypes.create_string_buffer(regs._GPREGS.pack(*(r[k] for k in regs.GPREGS)))
    libc.ptrace(regs.PTRACE_SETREGS, tid, 0, ctypes.addressof(buf))
    data = xstate_area(tid, t.regs.fpu)
    area = ctypes.create_string_buffer(data, len(data))
    iov = libc.IoVec(ctypes.addressof(area), len(data))
    libc.ptrace(regs.PTRACE_SETREGSET, tid, regs.NT_X86_XSTATE, ctypes.addressof(iov))
    mask = ctypes.c_uint64(t.regs.sigmask)
    libc.ptrace(0x420B, tid, 8, ctypes.addressof(mask))  # PTRACE_SETSIGMASK


def exit_registers(inj: RestoreInjector, exit_code: int, pid: int) -> None:
    """A zombie's last registers: the gate with exit_group(status) or, if it was killed by a
    signal, kill(pid, sig) (pid: its own, as it sees it) with that signal at SIG_DFL (the
    wait status as stat shows it)."""
    r = regs.get_gpregs(inj.tid)
    sig = exit_code & 0x7F
    if sig:
        inj.check("rt_sigaction", sig, inj.put(bytes(32)), 0, 8)
        r.update(ax=62, di=pid, si=sig)
    else:
        r.update(ax=231, di=(exit_code >> 8) & 0xFF)
    r.update(orig_ax=(1 << 64) - 1, ip=inj.gate)
    inj._setsigmask(0)
    inj._setregs(r)
