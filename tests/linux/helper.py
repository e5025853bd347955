"""A helper process for the Linux tests: runs memory operations on command, then waits.

Run as `python -I -S helper.py CONFIG_JSON`; stdlib only. Commands arrive as JSON lines on
a socket and each gets one JSON reply, so the test always knows the helper is done with a
step before looking at it (no sleeps). Page contents follow page_pattern(), which the test
side recomputes to compare byte for byte.
"""

import ctypes
import json
import os
import socket
import struct
import sys
import threading

PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
HUGE = 2 << 20  # the default huge page size on x86_64


def page_pattern(tag, page):
    """4 KiB that differ for every (tag, page)."""
    return struct.pack("<QQ", tag, page) * (PAGE // 16)


def check(ret, what):
    if ret == -1 or ret is None or ret == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class Helper:
    def __init__(self, chan, spare, fds):
        self.chan = chan
        self.spare = spare  # socket fds kept for children forked later
        self.fds = fds  # name -> fd given by the test (e.g. one end of a socketpair)
        self.regions = {}  # name -> (addr, length)
        self.spans = {}  # name -> (addr, length) to unmap, fences included
        self.memfds = {}  # name -> fd
        self.threads = []
        self.stop = threading.Event()

    # -- operations --------------------------------------------------------------------------
    def op_mmap(self, name, pages, shared=False, memfd=None, offset=0, prot=3, addr=None,
                hugetlb=False):
        """A region; at addr exactly if given (MAP_FIXED_NOREPLACE, no fences: the caller
        keeps regions apart); hugetlb: MAP_HUGETLB."""
        flags = (0x01 if shared else 0x02) | (0x40000 if hugetlb else 0)
        fd = -1
        if memfd is None:
            flags |= 0x20
        else:
            fd = self.memfds[memfd]
        if addr is not None:
            flags |= 0x100000  # MAP_FIXED_NOREPLACE
        if shared or memfd is not None or addr is not None:  # never merges with a neighbour
            addr = check(libc.mmap(addr, pages * PAGE, prot, flags, fd, offset * PAGE), "mmap")
            self.regions[name] = (addr, pages * PAGE)
            self.spans[name] = (addr, pages * PAGE)
            return {"addr": addr}
        # Private anonymous: fence the region with a PROT_NONE page on each side so it never merges
        # with a neighbouring anonymous VMA (smaps and maps then describe only this region).
        total = (pages + 2) * PAGE
        base = check(libc.mmap(None, total, prot, flags, -1, 0), "mmap")
        check(libc.mprotect(base, PAGE, 0), "mprotect")
        check(libc.mprotect(base + total - PAGE, PAGE, 0), "mprotect")
        self.regions[name] = (base + PAGE, pages * PAGE)
        self.spans[name] = (base, total)
        return {"addr": base + PAGE}

    def op_shmat(self, name, pages, addr):
        """A private SysV segment attached at addr and marked IPC_RMID at once, so it goes
        with its last attach (the helper's exit) whatever the test does."""
        shmid = check(libc.shmget(0, pages * PAGE, 0o1600), "shmget")  # IPC_PRIVATE|IPC_CREAT
        try:
            got = check(libc.shmat(shmid, addr, 0), "shmat")
        finally:
            check(libc.shmctl(shmid, 0, None), "shmctl(IPC_RMID)")
        self.regions[name] = (got, pages * PAGE)
        self.spans[name] = (got, pages * PAGE)
        return {"addr": got}

    def op_write(self, name, pages, tag):
        addr, _ = self.regions[name]
        for p in pages:
            ctypes.memmove(addr + p * PAGE, page_pattern(tag, p), PAGE)
        return {}

    def op_read(self, name, pages):
        addr, _ = self.regions[name]
        return {"first": [ctypes.c_ubyte.from_address(addr + p * PAGE).value for p in pages]}

    def op_mincore(self, name):
        """mincore(2) of a region, from inside (it only answers for the caller's mm)."""
        addr, length = self.regions[name]
        vec = ctypes.create_string_buffer(length // PAGE)
        check(libc.mincore(ctypes.c_void_p(addr), length, vec), "mincore")
        return {"vec": list(vec.raw)}

    def op_munmap(self, name):
        del self.regions[name]
        check(libc.munmap(*self.spans.pop(name)), "munmap")
        return {}

    def op_madvise(self, name, page, npages, advice):
        addr, _ = self.regions[name]
        check(libc.madvise(addr + page * PAGE, npages * PAGE, advice), f"madvise({advice})")
        return {}

    def op_mprotect(self, name, page, npages, prot):
        addr, _ = self.regions[name]
        check(libc.mprotect(addr + page * PAGE, npages * PAGE, prot), "mprotect")
        return {}

    def op_mremap(self, name, pages):
        """Grow or shrink a region in place (flags 0: no move)."""
        addr, length = self.regions[name]
        check(libc.mremap(addr, length, pages * PAGE, 0), "mremap")
        self.regions[name] = (addr, pages * PAGE)
        span_addr, span_len = self.spans[name]
        self.spans[name] = (span_addr, span_len - length + pages * PAGE)
        return {}

    def op_memfd(self, name, pages=0, size=None, huge=False):
        """A memfd of `pages` pages, or of exactly `size` bytes; MFD_HUGETLB if huge."""
        fd = os.memfd_create(name, os.MFD_HUGETLB if huge else 0)
        os.ftruncate(fd, pages * PAGE if size is None else size)
        self.memfds[name] = fd
        return {}

    def op_shm(self, name, size, huge=False):
        """A SysV segment of exactly `size` bytes (SHM_HUGETLB if huge), attached and marked
        IPC_RMID at once: it goes when the last attacher does, whatever becomes of the test."""
        flags = 0o1000 | 0o600 | (0o4000 if huge else 0)  # IPC_CREAT, SHM_HUGETLB
        shmid = check(libc.shmget(0, size, flags), "shmget")  # IPC_PRIVATE
        addr = libc.shmat(shmid, None, 0)
        check(libc.shmctl(shmid, 0, None), "shmctl(IPC_RMID)")
        check(addr, "shmat")
        span = -(-size // (HUGE if huge else PAGE)) * (HUGE if huge else PAGE)
        self.regions[name] = (addr, span)
        return {"addr": addr, "shmid": shmid}

    def op_shmdt(self, name):
        addr, _ = self.regions.pop(name)
        check(libc.shmdt(ctypes.c_void_p(addr)), "shmdt")
        return {}

    def op_mmap_huge(self, name, pages, shared=False, memfd=None):
        """A hugetlb mapping of `pages` 4 KiB pages (a multiple of 512): MAP_HUGETLB
        anonymous, or a MFD_HUGETLB memfd's."""
        flags = (0x01 if shared else 0x02) | (0x20 | 0x40000 if memfd is None else 0)
        fd = -1 if memfd is None else self.memfds[memfd]
        addr = check(libc.mmap(None, pages * PAGE, 3, flags, fd, 0), "mmap")
        self.regions[name] = (addr, pages * PAGE)
        self.spans[name] = (addr, pages * PAGE)
        return {"addr": addr}

    def op_write_bytes(self, name, offset, length, tag):
        """length bytes of page_pattern(tag, 0), repeated, at offset into region name."""
        addr, _ = self.regions[name]
        data = (page_pattern(tag, 0) * (length // PAGE + 1))[:length]
        ctypes.memmove(addr + offset, data, length)
        return {}

    def op_open(self, name, path):
        """Open a file (read-write) to map it like a memfd."""
        self.memfds[name] = os.open(path, os.O_RDWR)
        return {}

    def op_pwrite(self, name, pages, tag):
        for p in pages:
            os.pwrite(self.memfds[name], page_pattern(tag, p), p * PAGE)
        return {}

    def op_punch(self, name, page, npages):
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        check(libc.fallocate(self.memfds[name], 0x03, page * PAGE, npages * PAGE), "fallocate")
        return {}

    def op_send_fd(self, memfd, sock):
        with socket.socket(fileno=os.dup(self.fds[sock])) as s:
            socket.send_fds(s, [b"m"], [self.memfds[memfd]])
        return {}

    def op_recv_fd(self, memfd, sock):
        with socket.socket(fileno=os.dup(self.fds[sock])) as s:
            _, fds, _, _ = socket.recv_fds(s, 1, 1)
        self.memfds[memfd] = fds[0]
        return {}

    def op_close_memfd(self, name):
        os.close(self.memfds.pop(name))
        return {}

    def op_fork(self, chan):
        """The child serves channel fd `chan` (one of the spares); both keep the memory."""
        child_sock = chan
        self.spare.remove(chan)
        pid = os.fork()
        if pid == 0:
            os.close(self.chan)
            self.chan = child_sock
            self.threads = []
            self.reply({"ready": os.getpid()})
            self.serve()
            os._exit(0)
        os.close(child_sock)
        return {"pid": pid}

    def op_threads(self, n):
        """n threads that sleep in a blocking wait until the helper exits."""
        for _ in range(n):
            t = threading.Thread(target=self.stop.wait, daemon=True)
            t.start()
            self.threads.append(t)
        return {"tids": [t.native_id for t in self.threads[-n:]]}

    def op_spin(self, name):
        """A thread that increments the u64 at the start of region name forever."""
        addr, _ = self.regions[name]
        counter = ctypes.c_uint64.from_address(addr)

        def spin():
            while not self.stop.is_set():
                counter.value += 1

        t = threading.Thread(target=spin, daemon=True)
        t.start()
        self.threads.append(t)
        return {"tid": t.native_id}

    def op_ping(self):
        return {"pong": os.getpid()}

    def op_exit(self):
        self.reply({})
        os._exit(0)

    # -- the loop ----------------------------------------------------------------------------
    def reply(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(self.chan, data) :]

    def serve(self):
        buf = b""
        while True:
            chunk = os.read(self.chan, 65536)
            if not chunk:
                os._exit(0)  # the test went away: end with it
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                op = cmd.pop("op")
                try:
                    out = getattr(self, "op_" + op)(**cmd)
                except OSError as e:
                    out = {"error": f"{op}: {e}", "errno": e.errno}
                self.reply(out)


def main():
    cfg = json.loads(sys.argv[1])
    if cfg.get("cpu") is not None:
        # One CPU: the LRU batches MADV_PAGEOUT drains (lru_add_drain) are this CPU's.
        os.sched_setaffinity(0, {cfg["cpu"]})
    h = Helper(cfg["chan"], cfg["spare"], cfg["fds"])
    h.reply({"ready": os.getpid()})
    h.serve()


if __name__ == "__main__":
    main()
