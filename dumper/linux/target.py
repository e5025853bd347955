"""What a live pid is, before a dump tries to seize it: init, a kernel thread, a zombie.

Read from /proc/PID/stat (fs/proc/array.c do_task_stat): field 3 is the state and field 9
the task's flags, where PF_KTHREAD (include/linux/sched.h) marks a kernel thread.
"""

from __future__ import annotations

PF_KTHREAD = 0x00200000  # include/linux/sched.h


def refusal(pid: int) -> str | None:
    """Why pid cannot be dumped as a process tree, or None when it can be tried."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None  # gone or unreadable: the dump itself reports it
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    state, flags = rest[0], int(rest[6])
    if flags & PF_KTHREAD:
        return (f"pid {pid} ({comm}) is a kernel thread: it has no user memory or process "
                "tree to dump")
    if pid == 1:
        return (f"pid 1 ({comm}) is init: freezing it would stop every process of this PID "
                "namespace; dump a process tree under it")
    if state == "Z":
        return (f"pid {pid} ({comm}) is a zombie: it has exited and holds no memory; dump "
                "its parent's tree, or reap it")
    return None
