"""redis-server through a dump, a kill and dumper's restore, run as a process of its own (a
child subreaper, so the restored server becomes its child and is reaped here):

    python redis_cycle.py REDIS-SERVER WORKDIR {dumper|criu} [CRIU]

It starts the server in WORKDIR on a free port on 127.0.0.1 and ::1 and on a unix socket
(no persistence, no daemon, stdio on a file),
stores keys over a raw RESP connection (strings, a 1 MiB value, a list, a hash, a key with
a TTL), closes it and waits until the server holds no client socket any more, dumps the
tree (`dumper dump --pid PID --tree`, or CRIU 4.2's `criu dump`), SIGKILLs and reaps it,
runs `dumper restore DIR -d`, then connects again and reads every key back, writes one
more, asks again over ::1 and the unix socket, and stops the restored server by its pid
with SIGTERM (redis then shuts down cleanly: exit status 0). Prints one JSON line; kills
and reaps whatever it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
TIMEOUT = 60.0
BIG = bytes(range(256)) * 4096  # 1 MiB


class Resp:
    """A minimal RESP2 client on one TCP connection (redis.io/docs/reference/protocol-spec)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        if host.startswith("/"):
            self.s = socket.socket(socket.AF_UNIX)
            self.s.settimeout(10)
            self.s.connect(host)
        else:
            self.s = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.s.close()

    def __call__(self, *args: bytes | str | int):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.s.sendall(msg)
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _more(self) -> None:
        data = self.s.recv(1 << 20)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"bad RESP line {line[:40]!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sockets(pid: int) -> int:
    """How many sockets pid holds (/proc/PID/fd links "socket:[ino]")."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def wait_for(cond, what: str, deadline: float) -> None:
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def connect(port: int, deadline: float, host: str = "127.0.0.1") -> Resp:
    while True:
        try:
            r = Resp(port, host)
            if r("PING") == "PONG":
                return r
            r.close()
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def store(r: Resp) -> None:
    assert r("SET", "greeting", "hello from before the dump") == "OK"
    assert r("SET", "big", BIG) == "OK"
    assert r("RPUSH", "list", "a", "b", "c") == 3
    assert r("HSET", "hash", "f1", "v1", "f2", "v2") == 2
    assert r("SET", "ttl", "soon", "EX", 3600) == "OK"
    for i in range(100):
        assert r("SET", f"key:{i}", i * i) == "OK"


def check(r: Resp) -> dict:
    """What the restored server answers; every value compared with what was stored."""
    got = {"greeting": r("GET", "greeting"), "list": r("LRANGE", "list", 0, -1),
           "hash": r("HGETALL", "hash"), "dbsize": r("DBSIZE"), "ttl": r("TTL", "ttl")}
    big = r("GET", "big")
    bad = [i for i in range(100) if r("GET", f"key:{i}") != str(i * i).encode()]
    ok = (got["greeting"] == b"hello from before the dump" and big == BIG
          and got["list"] == [b"a", b"b", b"c"] and got["hash"] == [b"f1", b"v1", b"f2", b"v2"]
          and got["dbsize"] == 105 and 0 < got["ttl"] <= 3600 and not bad)
    assert r("SET", "after", "written after the restore") == "OK"
    ok = ok and r("GET", "after") == b"written after the restore"
    return {"ok": ok, "big_md5": hashlib.md5(big or b"").hexdigest(), "bad_keys": bad,
            **{k: repr(v)[:200] for k, v in got.items()}}


def main() -> None:
    redis, work, how, *rest = sys.argv[1:]
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    images, log = work_dir / "images", work_dir / "redis.log"
    unix = work_dir / "redis.sock"
    port = free_port()
    result: dict = {"stage": "start", "ok": False, "log": "", "port": port}
    deadline = time.monotonic() + TIMEOUT
    started: list[int] = []
    try:
        with open(log, "w") as f, open(os.devnull) as null:
            p = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "::1",
                                  "--unixsocket", str(unix), "--save", "", "--appendonly",
                                  "no", "--dir", str(work_dir), "--daemonize", "no"],
                                 stdin=null, stdout=f, stderr=f, start_new_session=True,
                                 cwd=work_dir)
        pid = result["pid"] = p.pid
        started.append(pid)
        wait_for(lambda: "Ready to accept" in log.read_text(errors="replace"),
                 "redis never got ready", deadline)
        listeners = result["listeners"] = sockets(pid)
        r = connect(port, deadline)
        store(r)
        r.close()
        wait_for(lambda: sockets(pid) == listeners, "redis still holds the client's socket",
                 deadline)
        result["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        result["stage"] = "dump"
        if how == "dumper":
            cmd = [sys.executable, "-m", "dumper.cli", "dump", "--pid", str(pid), "--tree",
                   "-o", str(images)]
        else:
            images.mkdir()
            cmd = [rest[0], "dump", "-t", str(pid), "-D", str(images), "--shell-job",
                   "-o", "dump.log"]
        d = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        if d.returncode != 0:
            result["log"] = (d.stderr + d.stdout)[-3000:]
            return
        os.kill(pid, signal.SIGKILL)
        p.wait()
        result["stage"] = "restore"
        res = subprocess.run([sys.executable, "-m", "dumper.cli", "restore", str(images), "-d",
                              *(["--shell-job"] if how == "criu" else [])],
                             capture_output=True, text=True, timeout=TIMEOUT)
        result["log"] = res.stderr[-3000:]
        if res.returncode != 0:
            result["rc"] = res.returncode
            return
        result["stage"] = "check"
        result["restored_threads"] = len(os.listdir(f"/proc/{pid}/task"))
        r = connect(port, deadline)
        result.update(check(r))
        r.close()
        for host in ("::1", str(unix)):  # the other listeners answer too
            r = connect(port, deadline, host)
            result["ok"] = result["ok"] and r("GET", "greeting") == b"hello from before the dump"
            r.close()
        result["stage"] = "stop"
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        started.remove(pid)
        result["status"] = status
        result["ok"] = result["ok"] and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        result["stage"] = "done" if result["ok"] else "stop"
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails with it
        result["log"] += f"\n{type(e).__name__}: {e}"
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.02)
            except ChildProcessError:
                break
        result["redis_log"] = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        print(json.dumps(result))


if __name__ == "__main__":
    main()
