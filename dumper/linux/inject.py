"""Run system calls inside a stopped thread: the dump's way to ask what only the task can
answer (signal actions, its clear-tid address, sigaltstack, itimers), and the restore's way
to act in a task it rebuilds.

The thread must be ours: seized and in a ptrace-stop (dumper.linux.freeze). A call sets the
registers to the syscall's number and arguments with orig_ax = -1 (compel's infect.c does
the same, so the kernel does no syscall-restart processing on the way back), points ip at a
`syscall` instruction and resumes it with PTRACE_SYSCALL twice: it stops at the syscall's
entry, then at its exit with the result in ax (kernel/entry/common.c syscall_trace_enter /
syscall_exit_work report through ptrace_stop: no signal is sent). The registers are put
back exactly afterwards, and every signal is blocked meanwhile so none is delivered on our
way through user mode. (Single-stepping the instruction, restore.md §1.9, would end in a
forced SIGTRAP, which resets the task's own SIGTRAP handler to SIG_DFL when it is blocked
or ignored: force_sig_info_to_task.)

The gate is a `syscall` instruction already in the task's [vdso]: nothing is written into
its code pages, so a dump leaves the task's memory as it was (planting `syscall; int3` over
a text page, restore.md §1.2, would COW a private copy of that page). Output buffers live in
a scratch page the injector maps at a free address with a page of gap on each side (so the
kernel cannot merge it with a neighbour) and unmaps when done.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from dumper import interrupts
from dumper.host import parse_maps, parse_maps_line
from dumper.kabi import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from dumper.linux import libc, procfs, regs

PTRACE_SYSCALL = 24
PTRACE_SETSIGMASK = 0x420B
MAP_FIXED_NOREPLACE = 0x100000

# arch/x86/entry/syscalls/syscall_64.tbl
SYS = {"mmap": 9, "munmap": 11, "brk": 12, "rt_sigaction": 13, "getitimer": 36, "getpid": 39,
       "sigaltstack": 131, "prctl": 157}
MAX_ERRNO = 4095
ALL_SIGNALS = (1 << 64) - 1  # SIGKILL and SIGSTOP stay deliverable whatever the mask


class InjectError(OSError):
    """An injected call failed, or the thread did not come back from the step."""


def find_gate(pid: int) -> int:
    """The address of a `syscall` instruction (0f 05) in pid's [vdso]; any pair of those
    bytes executes as one, wherever the vdso's own decoding puts it. Searched in our own
    vdso, the same image the kernel maps in every 64-bit task (restore.md §5.3): reading
    the target's would fault its vdso pages in, a change to its page tables."""
    mine = vdso_range(os.getpid())
    target = vdso_range(pid)
    if mine is not None and target is not None and mine[1] - mine[0] == target[1] - target[0]:
        at = ctypes.string_at(mine[0], mine[1] - mine[0]).find(b"\x0f\x05")
        if at >= 0:
            return target[0] + at
    raise InjectError(errno.ENOEXEC, f"pid {pid}: no [vdso] like ours to find a syscall in")


def vdso_range(pid: int) -> tuple[int, int] | None:
    """(start, end) of pid's [vdso], None without one."""
    for line in procfs.task_maps(pid).splitlines():
        if line.endswith(" [vdso]"):  # a text scan: a task may have 30,000 maps lines
            e = parse_maps_line(line)
            return e.start, e.end
    return None


def read_mem(pid: int, addr: int, size: int) -> bytes:
    """pread of /proc/PID/mem (mem_rw -> access_remote_vm): we are its tracer."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def free_gap(pid: int, size: int) -> int:
    """An address with size bytes free and a free page on each side, below the stack: the
    highest such gap under the last mapping below 2^47, as mmap's top-down search would."""
    maps = [e for e in parse_maps(procfs.task_maps(pid)) if e.end <= 1 << 47]
    for lo, hi in zip(reversed(maps[:-1]), reversed(maps[1:]), strict=True):
        if hi.start - lo.end >= size + 2 * PAGE_SIZE:
            return hi.start - PAGE_SIZE - size
    raise InjectError(errno.ENOMEM, f"pid {pid}: no free gap of {size} bytes")


class Injector:
    """Syscalls in one stopped thread tid of process pid."""

    def __init__(self, pid: int, tid: int, gate: int | None = None) -> None:
        self.pid, self.tid = pid, tid
        self.gate = gate if gate is not None else find_gate(pid)

    def _setregs(self, r: dict[str, int]) -> None:
        buf = ctypes.create_string_buffer(regs._GPREGS.pack(*(r[k] for k in regs.GPREGS)))
        libc.ptrace(regs.PTRACE_SETREGS, self.tid, 0, ctypes.addressof(buf))

    def _setsigmask(self, mask: int) -> None:
        buf = ctypes.c_uint64(mask)
        libc.ptrace(PTRACE_SETSIGMASK, self.tid, 8, ctypes.addressof(buf))

    def _to_syscall_stop(self) -> None:
        """PTRACE_SYSCALL, then wait for the next syscall-stop (reported as SIGTRAP)."""
        libc.ptrace(PTRACE_SYSCALL, self.tid, 0, 0)
        while True:
            _, status = os.waitpid(self.tid, libc.WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise InjectError(errno.ESRCH, f"pid {self.pid} tid {self.tid} died in an "
                                  "injected syscall")
            if os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP:
                return
            # Any other stop (no signal but SIGKILL can arrive: all are blocked) is passed
            # without delivering it.
            libc.ptrace(PTRACE_SYSCALL, self.tid, 0, 0)

    def syscall(self, name: str, *args: int) -> int:
        """Run one syscall in the thread; returns its result (a negative errno on failure)."""
        saved = regs.get_gpregs(self.tid)
        mask = regs.get_sigmask(self.tid)
        r = dict(saved)
        r.update(ax=SYS[name], orig_ax=(1 << 64) - 1, ip=self.gate)
        for reg, val in zip(("di", "si", "dx", "r10", "r8", "r9"), args, strict=False):
            r[reg] = val & ((1 << 64) - 1)
        # A SIGINT/SIGTERM waits for the call's exit stop (interrupts.held): raised between
        # PTRACE_SYSCALL and the stop, the thread runs, and every ptrace request of the
        # unwinding (registers back, the scratch page's munmap) fails ESRCH on it.
        with interrupts.held():
            self._setsigmask(ALL_SIGNALS)
            try:
                self._setregs(r)
                self._to_syscall_stop()  # entry
                self._to_syscall_stop()  # exit
                ret = regs.get_gpregs(self.tid)["ax"]
            finally:
                self._setregs(saved)
                self._setsigmask(mask)
        return ret - (1 << 64) if ret >= (1 << 64) - MAX_ERRNO else ret

    def check(self, name: str, *args: int) -> int:
        """syscall(), raising InjectError for a negative errno."""
        ret = self.syscall(name, *args)
        if ret < 0:
            raise InjectError(-ret, f"pid {self.pid} tid {self.tid}: injected {name}: "
                              f"{os.strerror(-ret)}")
        return ret

    @contextmanager
    def scratch(self, size: int = PAGE_SIZE) -> Iterator[int]:
        """A private anonymous RW mapping in the task for the duration; unmapped after."""
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        want = free_gap(self.pid, size)
        addr = self.check("mmap", want, size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        try:
            yield addr
        finally:
            self.check("munmap", addr, size)

    def read(self, addr: int, size: int) -> bytes:
        return read_mem(self.pid, addr, size)


# -- the questions a dump asks by injection ------------------------------------------------

SA = struct.Struct("<QQQQ")  # struct sigaction (kernel): handler, flags, restorer, mask
NSIG = 64
PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_GET_SECUREBITS = 2, 3, 27
PR_GET_CHILD_SUBREAPER, PR_GET_TID_ADDRESS, PR_GET_THP_DISABLE = 37, 40, 42


def sigactions(inj: Injector, buf: int) -> list[tuple[int, int, int, int]]:
    """rt_sigaction(sig, NULL, &old, 8) for signals 1..64 but SIGKILL and SIGSTOP, which
    cannot have one (kernel/signal.c do_sigaction): 62 entries, in the order CRIU's
    sigacts image holds them."""
    out = []
    for sig in range(1, NSIG + 1):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        inj.check("rt_sigaction", sig, 0, buf, 8)
        out.append(SA.unpack(inj.read(buf, SA.size)))
    return out


def tid_address(inj: Injector, buf: int) -> int:
    """prctl(PR_GET_TID_ADDRESS) -> current->clear_child_tid (kernel/sys.c)."""
    inj.check("prctl", PR_GET_TID_ADDRESS, buf)
    return int.from_bytes(inj.read(buf, 8), "little")


def sigaltstack(inj: Injector, buf: int) -> tuple[int, int, int]:
    """sigaltstack(NULL, &old) -> (ss_sp, ss_size, ss_flags) (kernel/signal.c do_sigaltstack)."""
    inj.check("sigaltstack", 0, buf)
    sp, flags, size = struct.unpack("<Qi4xQ", inj.read(buf, 24))  # stack_t
    return sp, size, flags


def itimers(inj: Injector, buf: int) -> list[tuple[int, int, int, int]]:
    """getitimer(REAL, VIRTUAL, PROF): (interval s, us, value s, us) each (kernel/time/itimer.c)."""
    out = []
    for which in range(3):
        inj.check("getitimer", which, buf)
        isec, iusec, vsec, vusec = struct.unpack("<qqqq", inj.read(buf, 32))
        out.append((isec, iusec, vsec, vusec))
    return out


def prctl_value(inj: Injector, option: int, buf: int | None = None) -> int:
    """A prctl that returns its answer (buf None) or stores an int at buf."""
    if buf is None:
        return inj.check("prctl", option)
    inj.check("prctl", option, buf)
    return int.from_bytes(inj.read(buf, 4), "little", signed=True)
