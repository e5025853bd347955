"""A self-checking Python program for restore tests: a bytearray with a known pattern, a
dict, a generator half consumed and a SIGUSR1 handler; it sleeps in time.sleep (a
clock_nanosleep a dump interrupts) until SIGUSR1, then checks everything and prints PASS."""

import hashlib
import os
import signal
import sys
import time

got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
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
if os.getpid() != pid:
    fails.append(f"pid {os.getpid()}, was {pid}")
for f in fails:
    print("FAIL", f, flush=True)
print("FAIL" if fails else "PASS", ticks, flush=True)
sys.exit(1 if fails else 0)
