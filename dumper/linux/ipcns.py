"""A task's SysV IPC namespace, read from inside it (CRIU's ipc_ns.c dump_ipc_ns).

/proc/sys/kernel/{shm,msg,sem}* and /proc/sysvipc/* show the reader's own IPC namespace
(ipc/ipc_sysctl.c, ipc/util.c sysvipc_proc_open use current->nsproxy->ipc_ns), so they are
read by a short-lived thread of ours that joins the task's namespace with setns(2) — an
IPC namespace can be joined by one thread of a multi-threaded process (kernel/nsproxy.c
validate_ns, ipcns_install) — and ends there, leaving the rest of the dumper where it was.
"""

from __future__ import annotations

import ctypes
import os
import threading

from dumper.linux.errors import Unsupported
from dumper.state import IpcNamespace

CLONE_NEWIPC = 0x08000000
_libc = ctypes.CDLL(None, use_errno=True)

# IpcVarEntry field -> sysctl, as CRIU's ipc_sysctl_req lists them.
SYSCTLS = {
    "sem_ctls": "kernel/sem", "msg_ctlmax": "kernel/msgmax", "msg_ctlmnb": "kernel/msgmnb",
    "auto_msgmni": "kernel/auto_msgmni", "msg_ctlmni": "kernel/msgmni",
    "shm_ctlmax": "kernel/shmmax", "shm_ctlall": "kernel/shmall",
    "shm_ctlmni": "kernel/shmmni", "shm_rmid_forced": "kernel/shm_rmid_forced",
    "mq_queues_max": "fs/mqueue/queues_max", "mq_msg_max": "fs/mqueue/msg_max",
    "mq_msgsize_max": "fs/mqueue/msgsize_max", "mq_msg_default": "fs/mqueue/msg_default",
    "mq_msgsize_default": "fs/mqueue/msgsize_default", "msg_next_id": "kernel/msg_next_id",
    "sem_next_id": "kernel/sem_next_id", "shm_next_id": "kernel/shm_next_id",
}
OPTIONAL = {"auto_msgmni", "mq_msg_default", "mq_msgsize_default", "msg_next_id",
            "sem_next_id", "shm_next_id"}


def _sysvipc(name: str) -> list[dict[str, int]]:
    """/proc/sysvipc/NAME as rows of its header's columns (ipc/util.c sysvipc_proc_show)."""
    with open(f"/proc/sysvipc/{name}") as f:
        head, *rows = f.read().splitlines()
    keys = head.split()  # perms is printed in octal ("%4o"), the rest in decimal
    return [{k: int(v, 8 if k == "perms" else 10) for k, v in zip(keys, row.split(),
                                                                  strict=False)}
            for row in rows]


def _read_inside() -> tuple[dict[str, object], list[dict[str, int]], int, int]:
    var: dict[str, object] = {}
    for field, path in SYSCTLS.items():
        try:
            with open(f"/proc/sys/{path}") as f:
                words = [int(w) for w in f.read().split()]
        except OSError:
            if field in OPTIONAL:
                continue
            raise
        if field == "sem_ctls":
            var[field] = words
        elif field.endswith("_next_id") and words[0] == -1:
            continue  # the initial -1 cannot be written back (CRIU leaves it out too)
        else:
            var[field] = words[0] if field in ("shm_ctlmax", "shm_ctlall") \
                else words[0] & 0xFFFFFFFF
    return var, _sysvipc("shm"), len(_sysvipc("msg")), len(_sysvipc("sem"))


def read_ipc_namespace(pid: int) -> IpcNamespace:
    """pid's IPC namespace: its sysctls and SysV shm segments. Message queues and semaphore
    sets are not dumped yet: a namespace holding any is refused."""
    path = f"/proc/{pid}/ns/ipc"
    fd = os.open(path, os.O_RDONLY)
    result: list[object] = []

    def inside() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWIPC) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            result.append(_read_inside())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result.append(e)

    try:
        t = threading.Thread(target=inside, name="ipcns")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if isinstance(result[0], BaseException):
        raise result[0]
    var, shm, msgs, sems = result[0]  # type: ignore[misc]
    if msgs or sems:
        raise Unsupported(f"pid {pid}: its IPC namespace holds {msgs} message queues and "
                          f"{sems} semaphore sets: dumper dumps SysV shared memory only yet")
    segments = [dict(key=r["key"] & 0xFFFFFFFF, id=r["shmid"], mode=r["perms"],
                     size=r["size"], uid=r["uid"], gid=r["gid"], cuid=r["cuid"],
                     cgid=r["cgid"]) for r in shm]
    return IpcNamespace(ino=os.stat(path).st_ino, var=var, shm=segments)
