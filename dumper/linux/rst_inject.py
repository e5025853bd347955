"""Syscalls a restore injects into its stopped stubs: dumper.linux.inject's Injector, by
number, with the ptrace event stops a clone3 makes (PTRACE_EVENT_FORK/CLONE between the
call's entry and exit stops: the new task's pid in PTRACE_GETEVENTMSG), and a scratch page
of our own at a fixed address (after the address space is torn down there is no gap search
to make).

Each call runs from its entry stop to its exit stop by PTRACE_SYSCALL, as the dump's
injector does, never by a single step: a step ends in a SIGTRAP forced on the task, and
force_sig_info_to_task resets an ignored SIGTRAP to SIG_DFL, so every call after the
signal actions were restored would undo a dumped SIG_IGN of SIGTRAP (seen: SigIgn lost bit
5 after a restore). The exit stop also comes before the task would return to a gate the
call moved (mremap of the vdso): nothing is fetched there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

from dumper import interrupts
from dumper.linux import inject, libc, regs

PTRACE_TRACEME, PTRACE_SETOPTIONS, PTRACE_GETEVENTMSG = 0, 0x4200, 0x4201
PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE, PTRACE_O_EXITKILL = 0x2, 0x8, 1 << 20
PTRACE_O_SUSPEND_SECCOMP = 1 << 21
PTRACE_EVENT_FORK, PTRACE_EVENT_CLONE = 1, 3
PTRACE_SYSCALL = 24

# arch/x86/entry/syscalls/syscall_64.tbl: the calls a restore makes.
NR = {"read": 0, "close": 3, "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12,
      "ioctl": 16, "userfaultfd": 323,
      "rt_sigaction": 13, "mremap": 25, "madvise": 28, "shmat": 30, "dup2": 33,
      "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
      "setitimer": 38, "getpid": 39, "kill": 62, "fcntl": 72, "chdir": 80, "umask": 95,
      "setpgid": 109, "setsid": 112, "setgroups": 116, "setresuid": 117, "setresgid": 119,
      "setfsuid": 122, "setfsgid": 123, "capset": 126,
      "sigaltstack": 131, "personality": 135, "prctl": 157, "arch_prctl": 158,
      "setrlimit": 160, "chroot": 161, "mount": 165, "set_thread_area": 205,
      "set_tid_address": 218, "unshare": 272,
      "exit_group": 231, "openat": 257, "set_robust_list": 273, "dup3": 292, "rseq": 334,
      "clone3": 435, "close_range": 436,
      "epoll_ctl": 233, "pidfd_getfd": 438, "seccomp": 317}
AT_FDCWD = -100
FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
CLONE_ARGS = struct.Struct("<11Q")  # struct clone_args (include/uapi/linux/sched.h), v2


class RestoreInjector(inject.Injector):
    """An Injector whose calls are named by number and may create tasks."""

    def __init__(self, pid: int, tid: int, gate: int, scratch: int = 0) -> None:
        super().__init__(pid, tid, gate)
        self.scratch_addr = scratch  # a page the restore mapped RW in the task
        self.event_pid = 0  # the task the last call created (clone3), 0 if none

    def call(self, name: str, *args: int) -> int:
        """One syscall; returns its result (a negative errno on failure)."""
        saved = regs.get_gpregs(self.tid)
        mask = regs.get_sigmask(self.tid)
        r = dict(saved)
        r.update(ax=NR[name], orig_ax=(1 << 64) - 1, ip=self.gate)
        padded = (*args, 0, 0, 0, 0, 0, 0)[:6]  # unused arguments are 0 (prctl checks them)
        for reg, val in zip(("di", "si", "dx", "r10", "r8", "r9"), padded, strict=True):
            r[reg] = val & ((1 << 64) - 1)
        self.event_pid = 0
        with interrupts.held():  # as inject.Injector.syscall: no signal mid-call
            self._setsigmask(inject.ALL_SIGNALS)  # SIGKILL and SIGSTOP stay deliverable
            try:
                self._setregs(r)
                self._run_events()
                ret = regs.get_gpregs(self.tid)["ax"]
            finally:
                self._setregs(saved)
                self._setsigmask(mask)
        return ret - (1 << 64) if ret >= (1 << 64) - inject.MAX_ERRNO else ret

    def _run_events(self) -> None:
        """PTRACE_SYSCALL to the call's entry stop, then to its exit stop (syscall-stops:
        SIGTRAP with no event, ptrace_report_syscall_entry/exit; no signal is sent); a
        fork/clone event stop between them records the new task (ptrace_event: status>>8
        == SIGTRAP | event << 8). A fault stop means the gate is no syscall instruction."""
        stops = 0
        libc.ptrace(PTRACE_SYSCALL, self.tid, 0, 0)
        while True:
            _, status = os.waitpid(self.tid, libc.WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise inject.InjectError(errno.ESRCH, f"task {self.pid} thread {self.tid} "
                                         "died in an injected syscall")
            event = status >> 16
            if event in (PTRACE_EVENT_FORK, PTRACE_EVENT_CLONE):
                msg = ctypes.c_ulong()
                libc.ptrace(PTRACE_GETEVENTMSG, self.tid, 0, ctypes.addressof(msg))
                self.event_pid = msg.value
            elif os.WSTOPSIG(status) == signal.SIGTRAP and not event:
                stops += 1
                if stops == 2:
                    return
            elif os.WSTOPSIG(status) in FAULTS:
                ip = regs.get_gpregs(self.tid)["ip"]
                raise inject.InjectError(errno.EFAULT, f"task {self.pid} thread {self.tid}: "
                                         f"signal {os.WSTOPSIG(status)} at {ip:#x} in an "
                                         "injected syscall")
            libc.ptrace(PTRACE_SYSCALL, self.tid, 0, 0)

    def check(self, name: str, *args: int) -> int:  # type: ignore[override]
        ret = self.call(name, *args)
        if ret < 0:
            raise inject.InjectError(-ret, f"task {self.pid} thread {self.tid}: {name}: "
                                     f"{os.strerror(-ret)}")
        return ret

    def put(self, data: bytes, offset: int = 0) -> int:
        """Write data into the scratch page (at offset); its address in the task."""
        write_mem(self.pid, self.scratch_addr + offset, data)
        return self.scratch_addr + offset

    def put_str(self, text: str, offset: int = 0) -> int:
        return self.put(os.fsencode(text) + b"\0", offset)

    def clone3(self, flags: int, exit_signal: int, tid: int) -> int:
        """clone3 with set_tid=[tid]; the new task, stopped (SIGSTOP) and traced by us: its
        pid as we see it (the event message; tid is its pid in its own namespace)."""
        tids = self.put(struct.pack("<i", tid), 512)
        args = self.put(CLONE_ARGS.pack(flags, 0, 0, 0, exit_signal, 0, 0, 0, tids, 1, 0), 256)
        got = self.call("clone3", args, CLONE_ARGS.size)
        if got < 0:
            raise inject.InjectError(-got, f"clone3 of {tid} in task {self.pid}: "
                                     f"{os.strerror(-got)}" + (
                                         " (the pid is taken)" if got == -errno.EEXIST else ""))
        if got != tid or not self.event_pid:
            raise inject.InjectError(errno.EINVAL, f"clone3 in task {self.pid} made {got}, "
                                     f"wanted {tid}")
        wait_stopped(self.event_pid)
        return self.event_pid


def write_mem(pid: int, addr: int, data: bytes) -> None:
    """pwrite to /proc/PID/mem (mem_rw with FOLL_FORCE: PROT_NONE/read-only pages too)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], addr + done)
    finally:
        os.close(fd)


def wait_stopped(tid: int) -> None:
    """Wait for a new traced task's first stop (the SIGSTOP a traced fork starts with)."""
    while True:
        _, status = os.waitpid(tid, libc.WALL)
        if os.WIFSTOPPED(status):
            return
        raise inject.InjectError(errno.ESRCH, f"task {tid} died before its first stop")


def set_options(tid: int) -> None:
    """Trace what the stub forks and clones; kill every stub if the restorer dies; our
    injected calls pass the seccomp filters or strict mode a restore puts in place
    (PTRACE_O_SUSPEND_SECCOMP, inherited by what the stub clones: ptrace_init_task)."""
    libc.ptrace(PTRACE_SETOPTIONS, tid, 0, PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE
                | PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP)
