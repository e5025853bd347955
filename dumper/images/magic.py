"""Magic numbers and file names of an image set (criu.md §3.2-3.3, plus dumper's own).

CRIU's values come from its magic.h; dumper's are four ASCII letters on disk ("DUMP", "DOBJ",
"DTRU", "DCOW", "DGRD", "DUNR"), none of them a CRIU magic, so crit reports them as unknown.
"""

from __future__ import annotations

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
RAW_IMAGE_MAGIC = 0

INVENTORY_MAGIC = 0x58313116
PSTREE_MAGIC = 0x50273030
CORE_MAGIC = 0x55053847
IDS_MAGIC = 0x54432030
MM_MAGIC = 0x57492820
PAGEMAP_MAGIC = 0x56084025  # SHMEM_PAGEMAP_MAGIC too
FILES_MAGIC = 0x56303138
MEMFD_INODE_MAGIC = 0x48453499
FS_MAGIC = 0x51403912
PIPES_DATA_MAGIC = 0x56453709
IPC_VAR_MAGIC = 0x53115007
SK_QUEUES_MAGIC = 0x56264026
TTY_INFO_MAGIC = 0x59453036
IPCNS_SHM_MAGIC = 0x46283044
FDINFO_MAGIC = 0x56213732
SECCOMP_MAGIC = 0x64413049

DUMPER_MAGIC = 0x504D5544  # b"DUMP"
OBJECTS_MAGIC = 0x4A424F44  # b"DOBJ"
TRUTH_MAGIC = 0x55525444  # b"DTRU"
COW_MAGIC = 0x574F4344  # b"DCOW"
GUARDS_MAGIC = 0x44524744  # b"DGRD"
UNREADABLE_MAGIC = 0x524E5544  # b"DUNR"

# Fixed names; per-id names are built by the functions below.
INVENTORY = "inventory.img"
PSTREE = "pstree.img"
FILES = "files.img"
MEMFD = "memfd.img"
DUMPER = "dumper.img"
OBJECTS = "objects.img"
UNREADABLE = "unreadable.img"
SECCOMP = "seccomp.img"


def core(tid: int) -> str:
    return f"core-{tid}.img"


def ids(pid: int) -> str:
    return f"ids-{pid}.img"


def fs(pid: int) -> str:
    return f"fs-{pid}.img"


def fdinfo(files_id: int) -> str:
    return f"fdinfo-{files_id}.img"


def mm(pid: int) -> str:
    return f"mm-{pid}.img"


def pagemap(pid: int) -> str:
    return f"pagemap-{pid}.img"


def pagemap_shmem(shmid: int) -> str:
    return f"pagemap-shmem-{shmid}.img"


def pages(pages_id: int) -> str:
    return f"pages-{pages_id}.img"


def truth(pid: int) -> str:
    return f"truth-{pid}.img"


def cow(pid: int) -> str:
    return f"cow-{pid}.img"


def guards(pid: int) -> str:
    return f"guards-{pid}.img"
