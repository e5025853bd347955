"""CRIU's image magics by value, the names crit gives them (criu/include/magic.h, CRIU 4.2;
where two names share a value, crit's magic.by_val keeps one). For `inspect info FILE`,
which names and counts any CRIU image as `crit info` does without decoding its entries."""

from __future__ import annotations

CRIU_MAGICS: dict[int, str] = {
    0x59423047: "APPARMOR",
    0x49353943: "AUTOFS",
    0x67343323: "BINFMT_MISC",
    0x64324033: "BPFMAP_DATA",
    0x57506142: "BPFMAP_FILE",
    0x59383330: "CGROUP",
    0x55053847: "CORE",
    0x61404013: "CPUINFO",
    0x54023547: "CREDS",
    0x00000002: "CRTOOLS_IMAGES_V1_1",
    0x44523722: "EVENTFD_FILE",
    0x45023858: "EVENTPOLL_FILE",
    0x44433746: "EVENTPOLL_TFD",
    0x59255641: "EXT_FILES",
    0x55096122: "FANOTIFY_FILE",
    0x56506035: "FANOTIFY_MARK",
    0x56213732: "FDINFO",
    0x58364939: "FIFO",
    0x59333054: "FIFO_DATA",
    0x56303138: "FILES",
    0x54323616: "FILE_LOCKS",
    0x51403912: "FS",
    0x52583605: "GHOST_FILE",
    0x54432030: "IDS",
    0x56443851: "INETSK",
    0x48424431: "INOTIFY_FILE",
    0x54562009: "INOTIFY_WD",
    0x58313116: "INVENTORY",
    0x55453737: "IPCNS_MSG",
    0x59573019: "IPCNS_SEM",
    0x46283044: "IPCNS_SHM",
    0x53115007: "IPC_VAR",
    0x57004059: "IRMAP_CACHE",
    0x57464056: "ITIMERS",
    0x57023458: "KDAT",
    0x48453499: "MEMFD_INODE",
    0x57492820: "MM",
    0x55563928: "MNTS",
    0x57373951: "NETDEV",
    0x58005614: "NETLINK_SK",
    0x55933752: "NETNS",
    0x61394011: "NS_FILES",
    0x60454618: "PACKETSK",
    0x56084025: "PAGEMAP",
    0x54435556: "PIDFD",
    0x61157326: "PIDNS",
    0x56513555: "PIPES",
    0x56453709: "PIPES_DATA",
    0x52603957: "POSIX_TIMERS",
    0x50273030: "PSTREE",
    0x50363636: "REG_FILES",
    0x59133954: "REMAP_FPATH",
    0x57113925: "RLIMIT",
    0x64413049: "SECCOMP",
    0x55344201: "SIGACT",
    0x59255647: "SIGNAL",
    0x57323820: "SIGNALFD",
    0x56264026: "SK_QUEUES",
    0x57093306: "STATS",
    0x51465506: "TCP_STREAM",
    0x43114433: "TIMENS",
    0x50493712: "TIMERFD",
    0x59413026: "TTY_DATA",
    0x59433025: "TTY_FILES",
    0x59453036: "TTY_INFO",
    0x57143751: "TUNFILE",
    0x54373943: "UNIXSK",
    0x55474906: "USERNS",
    0x54473203: "UTSNS",
    0x54123737: "VMAS",
}

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
_HEADED = {"PAGEMAP"}  # a head entry crit info does not count (its pagemap handler)


def read_frames(path: str) -> tuple[int, list[bytes]]:
    """An image's magic and its entries' payloads, undecoded (ImageError when malformed)."""
    import struct

    from dumper.images.errors import ImageError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(path, e.strerror or str(e)) from None
    if len(data) < 4:
        raise ImageError(path, "no magic", 0)
    (m,) = struct.unpack_from("<I", data, 0)
    off = 4
    if m in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        if len(data) < 8:
            raise ImageError(path, "truncated magic", 4)
        (m,) = struct.unpack_from("<I", data, 4)
        off = 8
    frames = []
    while off < len(data):
        if off + 4 > len(data):
            raise ImageError(path, "truncated entry length", off)
        (n,) = struct.unpack_from("<I", data, off)
        if off + 4 + n > len(data):
            raise ImageError(path, f"entry length {n} runs past the end of the file", off)
        frames.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    return m, frames


def info(path: str) -> dict[str, object]:
    """crit info: {"magic": NAME, "count": entries} for a CRIU image, or one of dumper's."""
    from dumper.images import codec
    from dumper.images.errors import ImageError

    m, frames = read_frames(path)
    name = CRIU_MAGICS.get(m) or (codec.BY_MAGIC[m].name if m in codec.BY_MAGIC else None)
    if name is None:
        raise ImageError(path, f"unknown magic {m:#010x}", 0)
    headed = name in _HEADED or (m in codec.BY_MAGIC and codec.BY_MAGIC[m].head is not None)
    return {"magic": name, "count": len(frames) - (1 if headed and frames else 0)}
