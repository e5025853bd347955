"""The non-memory state of a task and its threads, as a host reports it while frozen.

Plain data, portable: LinuxHost gathers it from /proc, ptrace and injected syscalls
(dumper.linux.taskstate); ModelHost has none of it and answers with TaskState.minimal.
dumper.images.criustate turns it into CRIU's images (core, ids, fs, fdinfo, files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The task states CRIU records (criu/include/pid.h TASK_ALIVE/TASK_DEAD/TASK_STOPPED).
ALIVE, DEAD, STOPPED = "alive", "dead", "stopped"


@dataclass
class Fpu:
    """The XSAVE area (standard format) split as CRIU's image splits it."""

    legacy: bytes  # the 512-byte FXSAVE area
    xstate_bv: int
    xcr0: int
    components: dict[int, bytes] = field(default_factory=dict)  # xfeature number -> bytes


@dataclass
class ThreadRegs:
    """What ptrace tells of one stopped thread; gpregs already restart-fixed."""

    gpregs: dict[str, int]
    fpu: Fpu
    tls: list[bytes]  # struct user_desc of each TLS GDT slot
    sigmask: int
    restarted: str = ""  # how an interrupted syscall was fixed up, for the log


@dataclass
class Creds:
    """/proc/PID/task/TID/status Uid/Gid/Groups/Cap*/NoNewPrivs, plus securebits."""

    uids: tuple[int, int, int, int]  # real, effective, saved, fs
    gids: tuple[int, int, int, int]
    groups: list[int]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    secbits: int = 0
    no_new_privs: int = 0


@dataclass
class ThreadState:
    tid: int
    comm: str
    regs: ThreadRegs | None = None
    clear_tid: int = 0
    robust_list: tuple[int, int] = (0, 0)  # head, len (get_robust_list)
    rseq: tuple[int, int, int] | None = None  # pointer, size, signature
    sas: tuple[int, int, int] = (0, 0, 2)  # ss_sp, ss_size, ss_flags (SS_DISABLE)
    sched: tuple[int, int, int] = (0, 0, 0)  # policy, rt priority, nice
    pdeath_sig: int = 0
    creds: Creds | None = None
    pending: list[bytes] = field(default_factory=list)  # private queue, siginfo each
    seccomp: int = 0
    # mode 2's filters in install order (oldest first): (classic BPF program, flags)
    seccomp_filters: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass
class FdState:
    """One open descriptor: its number, its FD_CLOEXEC, the open file behind it."""

    fd: int
    kind: str  # "reg", "pipe", ... (dumper.linux.files table keys)
    cloexec: bool
    flags: int  # the open file's f_flags as fdinfo shows them
    pos: int = 0
    path: str = ""  # reg: the path; pipe: "pipe:[ino]"
    ino: int = 0
    dev: int = 0
    size: int | None = None  # regular files only
    build_id: list[int] | None = None  # an ELF regular file's GNU build-id (u32 words)
    mode: int = 0
    data: bytes = b""  # pipe: what its buffer held (read without consuming it)
    desc: int = 0  # its open file description, the same for every fd that shares it
    counter: int = 0  # eventfd: its count; signalfd: its signal mask
    targets: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    # epoll: (tfd, events, data, pos, ino, sdev) of each target, as fdinfo lists them
    sock: dict[str, object] = field(default_factory=dict)  # socket: family, addresses, opts
    timer: dict[str, int] = field(default_factory=dict)  # timerfd: clockid, ticks, times
    pipe_size: int = 0


@dataclass
class IpcNamespace:
    """A SysV IPC namespace of the tree's own: its sysctls (CRIU's IpcVarEntry field ->
    value) and its shared memory segments (key, id, mode, size, uid, gid, cuid, cgid)."""

    ino: int
    var: dict[str, object]
    shm: list[dict[str, int]] = field(default_factory=list)


@dataclass
class TaskState:
    """Everything a restore needs of one task that is not its memory."""

    pid: int
    state: str = ALIVE
    exit_code: int = 0
    comm: str = ""
    personality: int = 0
    flags: int = 0  # task flags (PF_*), as /proc/PID/stat field 9
    threads: list[ThreadState] = field(default_factory=list)
    sigactions: list[tuple[int, int, int, int]] = field(default_factory=list)
    rlimits: list[tuple[int, int]] = field(default_factory=list)
    itimers: list[tuple[int, int, int, int]] = field(default_factory=list)
    shared_pending: list[bytes] = field(default_factory=list)
    umask: int = 0o022
    cwd: str = "/"
    root: str = "/"
    exe: str = ""
    mm: dict[str, int] = field(default_factory=dict)  # MmEntry mm_* fields
    auxv: list[int] = field(default_factory=list)
    dumpable: int | None = None
    thp_disabled: bool | None = None
    loginuid: int | None = None
    oom_score_adj: int | None = None
    child_subreaper: bool = False
    fds: list[FdState] = field(default_factory=list)
    ns: dict[str, int] = field(default_factory=dict)  # namespace kind -> inode
    kobj: dict[str, int] = field(default_factory=dict)  # vm/files/fs/sighand -> shared id
    vmflags: dict[int, list[str]] = field(default_factory=dict)  # VMA start -> smaps VmFlags
    # path -> size, mode, build-id: what identifies the exe and each mapped file
    files_stat: dict[str, tuple[int, int, list[int] | None]] = field(default_factory=dict)
    # The task's [vdso] (start, bytes): CRIU's restore parses the image's vdso ELF, so the
    # whole VMA is stored (should_dump_entire_vma), its pages taken from the kernel's image.
    vdso: tuple[int, bytes] | None = None
    ipcns: IpcNamespace | None = None  # set on the first task of an IPC ns not the dumper's
    live: bool = False  # gathered from a real task (registers and all)

    @classmethod
    def minimal(cls, pid: int, comm: str, threads: list[int] | None = None) -> TaskState:
        """What a host without registers can say: the task and its thread ids."""
        return cls(pid=pid, comm=comm,
                   threads=[ThreadState(tid=t, comm=comm) for t in (threads or [pid])])

    @property
    def tids(self) -> list[int]:
        return [t.tid for t in self.threads]
