"""A self-checking Python program (run by the interpreter the tests run under): a bytearray
with a known digest, a float accumulator, a Python signal handler, a worker thread blocked
on a lock, a child process blocked reading a pipe, and a file at an offset. Prints READY,
waits for SIGUSR1, checks, prints PASS or FAIL."""

import hashlib
import os
import signal
import sys
import threading

fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print(f"FAIL [{os.getpid()}] {what}", flush=True)


got = threading.Event()
signal.signal(signal.SIGUSR1, lambda *a: got.set())
data = bytearray(os.urandom(1 << 20))
digest = hashlib.sha256(data).hexdigest()
acc = sum(i * 0.5 for i in range(100000))
gate = threading.Lock()
gate.acquire()
seen = []
worker = threading.Thread(target=lambda: (gate.acquire(), seen.append(threading.get_ident())))
worker.start()
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    msg = os.read(r, 100)
    os._exit(0 if msg == b"go" else 1)
os.close(r)
f = open("py.txt", "w+b")  # noqa: SIM115 - open across the checkpoint
f.write(b"0123456789" * 10)
f.seek(33)
pid = os.getpid()
print("READY", flush=True)
while not got.wait(1):  # a Python signal handler runs between bytecodes of the main thread
    pass
check(hashlib.sha256(data).hexdigest() == digest, "bytearray changed")
check(acc == sum(i * 0.5 for i in range(100000)), "float accumulator changed")
check(f.tell() == 33 and f.read(7) == b"3456789", "file offset lost")
check(os.getpid() == pid, "pid changed")
gate.release()
worker.join(10)
check(seen and not worker.is_alive(), "worker thread did not run on")
os.write(w, b"go")
_, status = os.waitpid(child, 0)
check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}")
print("FAIL" if fails else "PASS", flush=True)
sys.exit(1 if fails else 0)
