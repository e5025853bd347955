"""A stopped thread's registers through ptrace: general, XSAVE, TLS slots, signal mask.

x86_64 only (arch/x86/kernel/ptrace.c). The thread must be in a ptrace-stop (frozen by
dumper.linux.freeze). What the dump records follows compel's compel_get_task_regs: a thread
stopped inside an interrupted syscall is recorded so that the restored thread re-executes
it (restore.md §5.9, Fix A), and -ERESTART_RESTARTBLOCK becomes -EINTR as CRIU does.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from functools import cache

from dumper.linux import libc
from dumper.state import Fpu, ThreadRegs

PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_GET_THREAD_AREA = 25
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_GETSIGMASK = 0x420A
NT_X86_XSTATE = 0x202  # include/uapi/linux/elf.h
GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_ENTRIES = 12, 3  # arch/x86/include/asm/segment.h

# include/linux/errno.h: the kernel-internal restart codes a stopped syscall may hold.
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
EINTR = 4

# struct user_regs_struct (arch/x86/include/asm/user_64.h), in order.
GPREGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
          "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds",
          "es", "fs", "gs")
_GPREGS = struct.Struct(f"<{len(GPREGS)}Q")
XSTATE_MAX = 16 << 10  # larger than any XSAVE area a CPU has today

# XSAVE components CRIU records (arch/x86/include/asm/fpu/types.h enum xfeature), with the
# image field and its word size.
XFEATURES = {2: ("ymmh_space", 4), 3: ("bndreg_state", 8), 4: ("bndcsr_state", 8),
             5: ("opmask_reg", 8), 6: ("zmm_upper", 8), 7: ("hi16_zmm", 8), 9: ("pkru", 4)}


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@cache
def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """CPUID(leaf, subleaf) -> (eax, ebx, ecx, edx), run as a few bytes of machine code in an
    executable page of our own (Python has no cpuid; compel asks the CPU the same way)."""
    code = bytes.fromhex(
        "53"          # push rbx
        "4989d0"      # mov r8, rdx
        "89f8"        # mov eax, edi
        "89f1"        # mov ecx, esi
        "0fa2"        # cpuid
        "418900"      # mov [r8], eax
        "41895804"    # mov [r8+4], ebx
        "41894808"    # mov [r8+8], ecx
        "4189500c"    # mov [r8+12], edx
        "5b"          # pop rbx
        "c3")         # ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(addr)
    out = (ctypes.c_uint32 * 4)()
    fn(leaf, subleaf, ctypes.addressof(out))
    result = tuple(out)
    del fn
    return result  # type: ignore[return-value]  # the page stays mapped: it is one page


@cache
def xfeature_layout(feature: int) -> tuple[int, int]:
    """(offset, size) of an XSAVE component in the standard format: CPUID.(0xD, feature)
    EBX and EAX (Intel SDM vol. 1 §13.2; the kernel's setup_xstate_cache)."""
    eax, ebx, _, _ = cpuid(0xD, feature)
    return ebx, eax


def _ptrace_buf(request: int, tid: int, addr: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    libc.ptrace(request, tid, addr, ctypes.addressof(buf))
    return buf.raw


def get_gpregs(tid: int) -> dict[str, int]:
    """PTRACE_GETREGS -> arch_ptrace -> copy_regset_to_user(REGSET_GENERAL)."""
    return dict(zip(GPREGS, _GPREGS.unpack(_ptrace_buf(PTRACE_GETREGS, tid, 0, _GPREGS.size)),
                    strict=True))


def get_xstate(tid: int) -> bytes:
    """PTRACE_GETREGSET NT_X86_XSTATE -> xstateregs_get: the standard-format XSAVE area
    (the kernel trims iov_len to the area's size)."""
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = libc.IoVec(ctypes.addressof(buf), XSTATE_MAX)
    libc.ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def split_xstate(area: bytes) -> Fpu:
    """The legacy area, XSTATE_BV, XCR0 (the kernel stores it at 464, in sw_reserved:
    arch/x86/kernel/fpu/xstate.c USER_XSTATE_XCR0_WORD) and each enabled component."""
    xcr0 = int.from_bytes(area[464:472], "little")
    fpu = Fpu(legacy=area[:512], xstate_bv=int.from_bytes(area[512:520], "little"), xcr0=xcr0)
    for feature in XFEATURES:
        if xcr0 & (1 << feature):
            off, size = xfeature_layout(feature)
            if off + size <= len(area):
                fpu.components[feature] = area[off : off + size]
    return fpu


def get_tls(tid: int) -> list[bytes]:
    """PTRACE_GET_THREAD_AREA of each TLS GDT slot (arch/x86/kernel/tls.c do_get_thread_area)."""
    return [_ptrace_buf(PTRACE_GET_THREAD_AREA, tid, GDT_ENTRY_TLS_MIN + i, 16)
            for i in range(GDT_ENTRY_TLS_ENTRIES)]


def get_sigmask(tid: int) -> int:
    """PTRACE_GETSIGMASK -> ptrace_request: the thread's blocked set (64 bits)."""
    buf = ctypes.c_uint64()
    libc.ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(buf))
    return buf.value


def restart_fixup(regs: dict[str, int]) -> tuple[dict[str, int], str]:
    """The registers a restore resumes with, as compel_get_task_regs records them: a syscall
    stopped with -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND re-executes (ax = nr, ip back
    over the 2-byte syscall instruction); -ERESTART_RESTARTBLOCK returns -EINTR, since the
    restart block (the remaining sleep) is kernel state no image holds."""
    out = dict(regs)
    if _s64(regs["orig_ax"]) < 0:
        return out, ""
    ax = _s64(regs["ax"])
    if ax in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
        out["ax"] = regs["orig_ax"]
        out["ip"] = regs["ip"] - 2
        return out, f"syscall {regs['orig_ax']} re-executed ({ax})"
    if ax == -ERESTART_RESTARTBLOCK:
        out["ax"] = (-EINTR) & ((1 << 64) - 1)
        return out, f"syscall {regs['orig_ax']} returns -EINTR (was -ERESTART_RESTARTBLOCK)"
    return out, ""


def thread_regs(tid: int) -> ThreadRegs:
    """Everything register-like of one stopped thread, the restart fix-up applied."""
    regs, how = restart_fixup(get_gpregs(tid))
    try:
        fpu = split_xstate(get_xstate(tid))
    except OSError:  # no XSAVE on this CPU: the FXSAVE area alone (PTRACE_GETFPREGS)
        fpu = Fpu(legacy=_ptrace_buf(PTRACE_GETFPREGS, tid, 0, 512), xstate_bv=0, xcr0=0)
    return ThreadRegs(gpregs=regs, fpu=fpu, tls=get_tls(tid), sigmask=get_sigmask(tid),
                      restarted=how)
