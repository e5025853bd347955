"""A restored thread's credentials and security state: ids, groups, capabilities (all five
sets), securebits, no_new_privs and seccomp strict mode, as the images' creds hold them.

They go in last, after everything the restore injects that needs root's privilege (maps of
the restorer's objects, fds opened through /proc/RESTORER, PR_SET_MM_MAP, chroot), each
thread by itself (credentials are per thread: kernel/cred.c commit_creds). The order is
the kernel's (security/commoncap.c), as criu/pie/restorer.c restore_creds follows it:

1. SECBIT_NO_SETUID_FIXUP first: changing ids then keeps every capability
   (cap_task_fix_setuid returns early), where a root -> user change would clear the
   permitted, effective and ambient sets (cap_emulate_setxuid).
2. setgroups, setresuid + setfsuid, setresgid + setfsgid (CAP_SETUID/CAP_SETGID still
   effective; setfs*id last, as setres*id sets fs*id to the effective id).
3. capset with the dumped inheritable set while the bounding set is whole (cap_capset:
   the new inheritable set must lie within the old inheritable and bounding sets), then
   PR_CAP_AMBIENT_RAISE for the ambient set (each needs the bit permitted and inheritable,
   and SECBIT_NO_CAP_AMBIENT_RAISE not yet set: criu raises them after the securebits and
   would fail there).
4. PR_CAPBSET_DROP for every bit the dumped bounding set lacks, and PR_SET_SECUREBITS
   with the dumped bits: both need CAP_SETPCAP effective, so before the next step.
5. capset with the dumped effective/permitted/inheritable sets (the ambient set keeps
   what lies within permitted and inheritable, cap_capset).
6. PR_SET_NO_NEW_PRIVS, then the seccomp filters (mode 2: seccomp(SECCOMP_SET_MODE_FILTER)
   each, oldest first, with its flags; TSYNC on a leader whose threads share them, as
   criu/pie/restorer.c restore_seccomp_filter; no_new_privs or CAP_SYS_ADMIN is needed:
   seccomp_prepare_filter) or strict mode (PR_SET_SECCOMP) last of all. Our tracees are
   PTRACE_O_SUSPEND_SECCOMP (rst_inject.set_options), so the scratch page's munmap after
   them passes the filter or strict mode (kernel/seccomp.c __secure_computing); the
   registers go in by ptrace. Filter mode without the filters in the images is refused
   before anything is made.
"""

from __future__ import annotations

import errno
import os
import struct

from dumper.linux import procfs
from dumper.linux.rst_inject import RestoreInjector
from dumper.linux.rst_mm import SCRATCH_SIZE
from dumper.restore_state import SetState
from dumper.state import Creds, ThreadState

PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 22, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 38, 47, 2
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 1, 2
SECCOMP_SET_MODE_FILTER = 1
CAP_V3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set


class CredsError(OSError):
    """Credentials or security state this restore cannot give a thread."""


def _bits(mask: int) -> list[int]:
    return [b for b in range(64) if mask >> b & 1]


def _status(tid: int) -> dict[str, str]:
    lines = procfs.read_text(tid, "status").splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def check_creds(states: SetState) -> None:
    """Before anything is created: every thread's capabilities are ones we hold (a set can
    only shrink: cap_capset, PR_CAPBSET_DROP) and no thread needs seccomp filters."""
    ours = _status(os.getpid())
    prm, bnd = int(ours["CapPrm"], 16), int(ours["CapBnd"], 16)
    for st in states.tasks.values():
        for t in st.threads:
            if t.seccomp == SECCOMP_MODE_FILTER and not t.seccomp_filters:
                raise CredsError(errno.ENOTSUP, f"task {st.pid} thread {t.tid}: seccomp "
                                 "filter mode, but the images hold none of its filters "
                                 "(seccomp.img); nothing was created")
            c = t.creds
            if c is None:
                continue
            for what, want, have in (("permitted", c.cap_prm, prm),
                                     ("bounding", c.cap_bnd, bnd)):
                if want & ~have:
                    raise CredsError(errno.EPERM, f"task {st.pid} thread {t.tid}: its "
                                     f"{what} capabilities {_bits(want & ~have)} are not "
                                     "ours to give (the restorer lacks them); nothing was "
                                     "created")


def restore_creds(inj: RestoreInjector, c: Creds) -> None:
    """Steps 1-5 of the module docstring in the thread inj is in (uses its scratch page)."""
    now = _status(inj.tid)
    cur = {k: int(now[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    cur_ids = (tuple(map(int, now["Uid"].split())), tuple(map(int, now["Gid"].split())),
               sorted(map(int, now.get("Groups", "").split())))
    want = {"CapInh": c.cap_inh, "CapPrm": c.cap_prm, "CapEff": c.cap_eff,
            "CapBnd": c.cap_bnd, "CapAmb": c.cap_amb}
    ids_same = cur_ids == (c.uids, c.gids, sorted(c.groups))
    if ids_same and cur == want and not c.secbits:
        return  # the stub's own (the restorer's): nothing to change
    if not ids_same:
        inj.check("prctl", PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)
        groups = inj.put(struct.pack(f"<{len(c.groups)}I", *c.groups)) if c.groups else 0
        inj.check("setgroups", len(c.groups), groups)
        inj.check("setresuid", *c.uids[:3])
        _set_fs(inj, "setfsuid", c.uids[3])
        inj.check("setresgid", *c.gids[:3])
        _set_fs(inj, "setfsgid", c.gids[3])
    _capset(inj, cur["CapPrm"], cur["CapPrm"], c.cap_inh)
    for cap in _bits(c.cap_amb & ~cur["CapAmb"]):
        inj.check("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
    for cap in _bits(cur["CapBnd"] & ~c.cap_bnd):
        inj.check("prctl", PR_CAPBSET_DROP, cap)
    inj.check("prctl", PR_SET_SECUREBITS, c.secbits)
    _capset(inj, c.cap_eff, c.cap_prm, c.cap_inh)


def restore_last(inj: RestoreInjector, t: ThreadState) -> None:
    """Step 6: the parent-death signal (a change of ids cleared it: commit_creds), then
    no_new_privs and seccomp strict mode, the thread's last injected calls."""
    if t.pdeath_sig:
        inj.check("prctl", PR_SET_PDEATHSIG, t.pdeath_sig)
    if t.creds is not None and t.creds.no_new_privs:
        inj.check("prctl", PR_SET_NO_NEW_PRIVS, 1)
    for i, (prog, flags) in enumerate(t.seccomp_filters if t.seccomp == SECCOMP_MODE_FILTER
                                      else ()):
        ret = inj.call("seccomp", SECCOMP_SET_MODE_FILTER, flags, _fprog(inj, prog))
        if ret != 0:  # TSYNC: > 0 names a thread that could not be synced
            why = os.strerror(-ret) if ret < 0 else f"thread {ret} cannot be synced"
            raise CredsError(errno.EPERM if ret > 0 else -ret, f"task {inj.pid} thread "
                             f"{inj.tid}: seccomp filter {i} ({len(prog) // 8} "
                             f"instructions, flags {flags:#x}): {why}")
    if t.seccomp == SECCOMP_MODE_STRICT:
        inj.check("prctl", PR_SET_SECCOMP, SECCOMP_MODE_STRICT)


def _fprog(inj: RestoreInjector, prog: bytes) -> int:
    """struct sock_fprog {u16 len; struct sock_filter *filter} and the program, in the
    scratch page (a longer program than it holds is an error: BPF_MAXINSNS is 32 KiB)."""
    if 64 + len(prog) > SCRATCH_SIZE:
        raise CredsError(errno.E2BIG, f"task {inj.pid} thread {inj.tid}: a seccomp filter "
                         f"of {len(prog) // 8} instructions does not fit the scratch page")
    code = inj.put(prog, 64)
    return inj.put(struct.pack("<H6xQ", len(prog) // 8, code), 0)

def _capset(inj: RestoreInjector, eff: int, prm: int, inh: int) -> None:
    """capset(2) of this thread (header pid 0), version 3: low words then high words."""
    m = 0xFFFFFFFF
    data = struct.pack("<Ii6I", CAP_V3, 0, eff & m, prm & m, inh & m,
                       eff >> 32, prm >> 32, inh >> 32)
    addr = inj.put(data, 1024)
    ret = inj.call("capset", addr, addr + 8)
    if ret < 0:
        raise CredsError(-ret, f"task {inj.pid} thread {inj.tid}: capset (effective "
                         f"{eff:#x}, permitted {prm:#x}, inheritable {inh:#x}) refused")


def _set_fs(inj: RestoreInjector, name: str, want: int) -> None:
    """setfsuid/setfsgid return the old id, never an error: asked twice, the second call
    (with -1, no change) tells whether the first took (kernel/sys.c __sys_setfsuid)."""
    inj.call(name, want)
    got = inj.call(name, 0xFFFFFFFF)
    if got != want:
        raise CredsError(errno.EPERM, f"task {inj.pid} thread {inj.tid}: {name}({want}) "
                         f"left {got}")
