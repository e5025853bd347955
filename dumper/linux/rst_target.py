"""LinuxTarget: dumper.host.LiveRestoreTarget on the real kernel.

restore() drives it as it drives the model: tasks in fork order (rst_tree), objects and
mappings and pages (rst_mm), then each task's state (rst_threads, rst_files), then finish()
lets the tree go. Every task is a ptrace-stopped stub of ours until then, so a failure at
any step kills them all (abort) and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import signal

from dumper.images import flags as F
from dumper.images.reader import ImageSet
from dumper.images.records import Vma
from dumper.kabi import PAGE_SIZE
from dumper.linux import (
    libc,
    rst_creds,
    rst_mm,
    rst_pidns,
    rst_threads,
    rst_tree,
    rst_vdso,
    rst_write,
)
from dumper.linux.inject import InjectError, read_mem
from dumper.linux.rst_files import FdSet, restore_fds
from dumper.linux.rst_inject import RestoreInjector
from dumper.restore_state import SetState
from dumper.state import DEAD, STOPPED, TaskState


class LinuxTarget:
    """Restore into stub tasks with the dumped pids; see the module docstring."""

    kind = "linux"
    page_views = True  # write_memory and object writes are done with the bytes on return

    def __init__(self, images: ImageSet, states: SetState, shell_job: bool = False,
                 pidns: bool = False) -> None:
        self.images, self.states, self.shell_job = images, states, shell_job
        self.ns = rst_pidns.PidNamespace() if pidns else None  # --pidns
        self.host: dict[int, int] = {}  # the tree's pid -> the task's pid as we see it
        self.created: list[int] = []  # every task and thread, in creation order
        self.inj: dict[int, RestoreInjector] = {}  # pid -> the leader's injector
        self.threads: dict[int, dict[int, RestoreInjector]] = {}
        self.special: dict[int, list[tuple[int, int]]] = {}  # pid -> vdso/vvar ranges
        self.fdset = FdSet([fd for t in states.tasks.values() for fd in t.fds], shell_job)
        self.parked: dict[int, dict[str, tuple[int, int]]] = {}  # an exec'd child's vdso
        self.objects: dict[int, rst_mm.LinuxObject] = {}  # shmid -> object (set_objects)
        self.made: list[rst_mm.LinuxObject] = []  # every object created
        self.mem: dict[int, int] = {}  # pid -> /proc/PID/mem, open while pages go in
        self.uffd: dict[int, int] = {}  # pid -> its userfaultfd, held by us (-1: none)
        self.notes: list[str] = []
        self.scratch = rst_mm.pick_scratch(
            [[(v.start, v.end) for v in t.vmas] for t in images.tasks.values()])
        self._check_sessions()
        rst_creds.check_creds(states)
        ids = [tid for t in images.tasks.values() for tid in t.threads]
        if pidns:
            rst_pidns.check_pids_free(ids)
        else:
            rst_tree.check_pids_free(ids)

    def _check_sessions(self) -> None:
        """A session or group outside the tree is the restorer's only with --shell-job
        (criu's --shell-job: the tree joins the caller's session)."""
        pids = set(self.images.tasks)
        for t in self.images.tasks.values():
            for what, v in (("session", t.sid), ("process group", t.pgid)):
                if v not in pids and not self.shell_job:
                    where = (f"{what} {v} is outside the tree" if v else
                             f"{what}'s leader was outside its pid namespace ({what} 0)")
                    raise rst_mm.MmError(errno.EINVAL, f"task {t.pid}: its {where}; "
                                         "restore it with --shell-job")

    # -- the tree ---------------------------------------------------------------------------
    def create_task(self, pid: int, ppid: int, comm: str) -> None:
        t = self.images.tasks[pid]
        if not ppid:
            if self.ns:  # the root is made inside a new pid namespace (rst_pidns)
                host, inj = self.ns.spawn(pid, self.scratch)  # cleans up after itself
                self.created.append(host)
            else:
                host = rst_tree.spawn_root(pid)
                self.created.append(host)
                inj = rst_mm.teardown(host, self.scratch)
            rst_mm.place_vdso(inj, t.vmas, self.scratch)
        else:
            parent = self.inj[ppid]
            host = parent.clone3(0, signal.SIGCHLD, pid)
            self.created.append(host)
            inj = RestoreInjector(host, host, parent.gate, self.scratch)
            if _special(t.vmas) != _special(self.images.tasks[ppid].vmas):
                # It exec'd: its vdso is elsewhere. Parked out of the way of the parent's
                # VMAs restore() unmaps and its own it maps, placed with its [vdso] (map).
                self.parked[pid] = rst_mm.park_vdso(inj, self.scratch)
        self.host[pid] = host
        self.inj[pid] = inj
        self.special[pid] = _special(t.vmas)
        parent_t = self.images.tasks.get(ppid)
        if t.sid == pid:
            inj.check("setsid")
        elif t.pgid == pid:
            inj.check("setpgid", 0, 0)
        elif parent_t is not None and t.pgid != parent_t.pgid and t.pgid in self.inj:
            inj.check("setpgid", 0, t.pgid)

    # -- memory -----------------------------------------------------------------------------
    def create_object(self, kind: str, size: int, name: str = "", key: int = 0,
                      seals: int = 0, page_size: int = PAGE_SIZE) -> rst_mm.LinuxObject:
        obj = rst_mm.LinuxObject(kind, size, name, key, seals, page_size)
        self.made.append(obj)  # an abort removes what outlives us (a SysV segment)
        return obj

    def set_objects(self, objects: dict[int, rst_mm.LinuxObject]) -> None:
        self.objects = dict(objects)

    def map(self, pid: int, vma: Vma, obj: rst_mm.LinuxObject | None) -> None:
        if vma.status & (F.VMA_AREA_VSYSCALL | F.VMA_AREA_VDSO | F.VMA_AREA_VVAR):
            if pid in self.parked and not vma.status & F.VMA_AREA_VSYSCALL:
                rst_mm.move_vdso(self.inj[pid], self.images.tasks[pid].vmas,
                                 self.parked.pop(pid))
            return  # placed with the stub (place_vdso), or the kernel's fixed [vsyscall]
        rst_mm.map_vma(self.inj[pid], vma, obj, self.states.files)

    def unmap(self, pid: int, start: int, end: int) -> None:
        self.inj[pid].check("munmap", start, end - start)

    def write_memory(self, pid: int, addr: int, data: bytes) -> None:
        for a, b in self.special.get(pid, ()):
            if a <= addr < b:
                # The vdso is this kernel's image, moved to the dumped place: never
                # written; where the stored pages differ, its symbols must match (rst_vdso).
                n = min(len(data), b - addr)
                if read_mem(self.host[pid], addr, n) != data[:n] and self._is_vdso(pid, a):
                    self._check_vdso(pid, a, b)
                if n < len(data):
                    self.write_memory(pid, addr + n, data[n:])
                return
        rst_write.write_task(self.host[pid], addr, data, lambda: self._mem(pid),
                             self.images.tasks[pid].vmas,
                             lambda: self._uffd(pid))

    def _uffd(self, pid: int) -> int:
        fd = self.uffd.get(pid)
        if fd is None:
            fd = self.uffd[pid] = rst_write.open_uffd(self.inj[pid])
        return fd

    def _mem(self, pid: int) -> int:
        fd = self.mem.get(pid)
        if fd is None:
            fd = self.mem[pid] = os.open(f"/proc/{self.host[pid]}/mem", os.O_WRONLY)
        return fd

    def _is_vdso(self, pid: int, start: int) -> bool:
        return any(v.start == start and v.status & F.VMA_AREA_VDSO
                   for v in self.images.tasks[pid].vmas)

    def _check_vdso(self, pid: int, a: int, b: int) -> None:
        """The dumped [vdso] (its stored pages from the start) against ours (rst_vdso)."""
        pages = []
        for at in range(a, b, PAGE_SIZE):
            look = self.images.read_page(pid, at)
            if look.data is None:
                break
            pages.append(look.data)
        rst_vdso.check_vdso(b"".join(pages), read_mem(self.host[pid], a, b - a),
                            f"task {pid}")

    def discard(self, pid: int, start: int, end: int) -> None:
        self.inj[pid].check("madvise", start, end - start, rst_mm.MADV_DONTNEED)

    def install_marker(self, pid: int, start: int, end: int, kind: str) -> None:
        if kind == "poison":
            vma = next((v for v in self.images.tasks[pid].vmas if v.start <= start < v.end), None)
            rst_mm.install_poison(self.inj[pid], vma, start, end)
            return
        if kind != "guard":
            raise rst_mm.MmError(errno.ENOTSUP, f"task {pid}: {kind} markers at {start:#x} "
                                 "are not restored on Linux yet")
        self.inj[pid].check("madvise", start, end - start, rst_mm.MADV_GUARD_INSTALL)

    def remove_marker(self, pid: int, start: int, end: int, kind: str) -> None:
        if kind == "poison":  # MADV_DONTNEED keeps them (measured); UFFDIO_COPY is not tried
            raise rst_mm.MmError(errno.ENOTSUP, f"task {pid}: the poison marker at {start:#x} "
                                 "inherited from its parent is not in its images, and cannot "
                                 "be removed by this restore")
        self.inj[pid].check("madvise", start, end - start, rst_mm.MADV_GUARD_REMOVE)

    def release_objects(self, objs: list[rst_mm.LinuxObject]) -> None:
        for o in objs:
            o.release()
        self._close_mem()

    def _close_mem(self) -> None:
        for fd in [*self.mem.values(), *self.uffd.values()]:
            if fd >= 0:
                os.close(fd)
        self.mem.clear()
        self.uffd.clear()

    # -- state ------------------------------------------------------------------------------
    def set_state(self, pid: int, st: TaskState) -> None:
        inj = self.inj[pid]
        if st.state == DEAD:
            self.threads[pid] = {pid: inj}
            return
        threads = rst_threads.create_threads(inj, st)
        self.created += [i.tid for t, i in threads.items() if t != pid]
        self.threads[pid] = threads
        self.host.update((t, i.tid) for t, i in threads.items())
        restore_fds(inj, st.fds, self.fdset, self.objects)  # before creds: as root
        for t in st.threads:
            rst_threads.thread_setup(threads[t.tid], t)
        self.notes += rst_threads.task_setup(inj, st, self.host)
        rst_threads.queue_pending(threads, st)
        for t in st.threads:  # last: what needs root's privilege is done (rst_creds)
            if t.creds is not None:
                rst_creds.restore_creds(threads[t.tid], t.creds)
        if st.dumpable is not None:  # a change of ids reset it (commit_creds)
            inj.check("prctl", rst_threads.PR_SET_DUMPABLE, st.dumpable)
        for t in st.threads:
            rst_creds.restore_last(threads[t.tid], t)
        # passes a seccomp filter or strict mode: our tracees are PTRACE_O_SUSPEND_SECCOMP
        inj.check("munmap", self.scratch, rst_mm.SCRATCH_SIZE)
        inj.scratch_addr = 0

    def finish(self, stopped: bool) -> None:
        """Registers in, zombies let exit, then every thread detached (with SIGSTOP for a
        stopped tree or a task dumped stopped)."""
        self.fdset.close()
        if self.ns:
            self.ns.start()
        for st in self.states.tasks.values():
            if st.state == DEAD:
                continue
            for t in st.threads:
                rst_threads.set_registers(self.host[st.pid], self.host[t.tid], t)
        for pid, st in self.states.tasks.items():
            if st.state == DEAD:
                inj = self.inj[pid]
                inj.scratch_addr = self.scratch
                rst_threads.exit_registers(inj, st.exit_code, pid)
                libc.ptrace(libc.PTRACE_DETACH, inj.pid, 0, 0)
                _wait_state(inj.pid, ("Z", "X"))  # exited; its parent stub has not reaped it
        for st in self.states.tasks.values():
            if st.state == DEAD:
                continue
            sig = signal.SIGSTOP if stopped or st.state == STOPPED else 0
            for t in st.threads:
                libc.ptrace(libc.PTRACE_DETACH, self.host[t.tid], 0, sig)
        if stopped:  # returned only once stopped: a SIGCONT sent next must find them so
            for st in self.states.tasks.values():
                if st.state != DEAD:
                    _wait_state(self.host[st.pid], ("T",))
        self.created.clear()

    def abort(self) -> None:
        self._close_mem()
        self.fdset.close()
        rst_tree.kill_all(self.created)
        for obj in self.made:
            obj.discard()
        self.created.clear()
        if self.ns:
            self.ns.kill()

    def waited(self) -> int:
        """The task whose exit status is the root's: the root, or the init it is the child
        of in a new pid namespace (init exits with the root's status)."""
        return self.ns.pid if self.ns else self.host[self.images.root]


def _special(vmas: list[Vma]) -> list[tuple[int, int]]:
    """Where the vdso group is: fork keeps it at the parent's place, exec moves it."""
    return [(v.start, v.end) for v in vmas if v.status & (F.VMA_AREA_VDSO | F.VMA_AREA_VVAR)]


def _wait_state(pid: int, states: tuple[str, ...], timeout: float = 5.0) -> None:
    """Until /proc/PID/stat shows one of states (or the task is gone)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in states:
                    return
        except OSError:
            return
        time.sleep(0.002)
    raise InjectError(errno.ETIMEDOUT, f"task {pid} did not reach state {'/'.join(states)}")

