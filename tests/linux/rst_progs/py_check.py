"""A self-checking Python program for restore tests: a bytearray with a known pattern, a
dict, a generator half consumed, a SIGUSR1 handler and SIGTRAP ignored (the kernel's
ignored set must come back whole: SigIgn); it sleeps in time.sleep (a
clock_nanosleep a dump interrupts) until SIGUSR1, then checks everything and prints PASS."""

import hashlib
import os
import signal
import sys
import time


def ignored() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("SigIgn:"))


got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
signal.signal(signal.SIGTRAP, signal.SIG_IGN)  # a restore's injected calls must not reset it
sig_ign = ignored()
data = bytearray(os.urandom(1 << 20)) * 4
digest = hashlib.sha256(data).hexdigest()
table = {i: str(i * i) for i in range(50000)}
gen = (i * 3 for i in range(100))
first = [next(gen) for _ in range(10)]
pid = os.getpid()
print("READY", flush=True)
ticks = 0
while not got:
    time.sleep(0.05)
    ticks += 1
fails = []
if hashlib.sha256(data).hexdigest() != digest:
    fails.append("bytearray changed")
if any(table[i] != str(i * i) for i in range(50000)):
    fails.append("dict changed")
if next(gen) != 30:
    fails.append("generator lost its place")
if ignored() != sig_ign:
    fails.append(f"ignored signals {ignored()}, were {sig_ign}")
if os.getpid() != pid:
    fails.append(f"pid {os.getpid()}, was {pid}")
for f in fails:
    print("FAIL", f, flush=True)
print("FAIL" if fails else "PASS", ticks, flush=True)
sys.exit(1 if fails else 0)
