"""A Python parent whose child execs a C program (RST_EXEC_CHILD, rst_exec_child.c): the
parent keeps a bytearray and a SIGUSR1 handler, sleeps in time.sleep until SIGUSR1, then
passes it to the child, checks its exit status and its own data, and prints PASS."""

import fcntl
import hashlib
import os
import signal
import sys
import time

# One stdout for both tasks, reopened per task by a restore: appending, neither overwrites.
fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_APPEND)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
data = bytearray(os.urandom(1 << 20)) * 2
digest = hashlib.sha256(data).hexdigest()
exe = os.readlink("/proc/self/exe")
child = os.environ["RST_EXEC_CHILD"]
r, w = os.pipe()
os.set_inheritable(w, True)
pid = os.fork()
if pid == 0:
    os.close(r)
    os.execv(child, [child, str(w), "alone"])
os.close(w)
ready = os.read(r, 1)
os.close(r)
print("READY", flush=True)
while not got:
    time.sleep(0.05)
fails = []
if not ready:
    fails.append("the child never got ready")
os.kill(pid, signal.SIGUSR1)
_, status = os.waitpid(pid, 0)
if status != 0:
    fails.append(f"child {pid}: wait status {status:#x}")
if hashlib.sha256(data).hexdigest() != digest:
    fails.append("bytearray changed")
if os.readlink("/proc/self/exe") != exe:
    fails.append(f"exe {os.readlink('/proc/self/exe')}, was {exe}")
for f in fails:
    print("FAIL", f, flush=True)
print("FAIL" if fails else "PASS", flush=True)
sys.exit(1 if fails else 0)
