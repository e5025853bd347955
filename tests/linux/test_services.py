"""Real services dumped live (issue 10): PostgreSQL 15 in its default configuration — its
postmaster and background workers share the main shared-memory region (MAP_SHARED|
MAP_ANONYMOUS, "/dev/zero (deleted)") and its 56-byte SysV interlock segment, and their
private memory is COW-shared with the postmaster that forked them.

`dumper dump --pid POSTMASTER --tree --leave-stopped`, then `dumper verify DIR --pid ...` on
the still-stopped tree: nothing lost; resumed, the server answers a query with the data it
had, and the tree's memory did not grow. The server runs as the postgres user in a
temporary directory on a free port and a private socket directory; the test stops it (by
its pid) and removes everything in every outcome.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dumper.images.reader import ImageSet

from .test_faithful import dump_stopped, pss_kb
from .test_live_dump import info, verify

pytestmark = pytest.mark.linux

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _pss_or_none(pid: int) -> int | None:
    """pss_kb, or None for a worker that has exited meanwhile (postgres starts and ends
    some on its own)."""
    try:
        return pss_kb(pid)
    except (ProcessLookupError, FileNotFoundError):  # gone, or going (a zombie's is empty)
        return None


def _no_client_backends(postmaster: int) -> None:
    """Wait (polling /proc, with a deadline) until no backend of a client connection is
    left under the postmaster: one still exiting would die in the middle of the test (its
    cmdline says "[local]")."""
    deadline = time.monotonic() + 30
    while True:
        busy = []
        for pid in _tree(postmaster):
            with contextlib.suppress(OSError):
                if b"[local]" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    busy.append(pid)
        if not busy:
            return
        assert time.monotonic() < deadline, f"client backends {busy} never exited"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(c) for c in f.read().split()]
    return out


@pytest.fixture
def postgres():
    """A PostgreSQL 15 server with a table of 1000 rows; yields (postmaster pid, psql)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed (Debian's postgresql-15; .ci/run installs it)")
    user = pwd.getpwnam("postgres")
    top = Path(tempfile.mkdtemp(prefix="dumper-pg-", dir="/var/tmp"))
    os.chown(top, user.pw_uid, user.pw_gid)
    data, sock = top / "data", top / "sock"
    sock.mkdir()
    os.chown(sock, user.pw_uid, user.pw_gid)
    port = _free_port()

    def as_pg(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                              capture_output=True, text=True, timeout=120, **kw)

    def psql(sql: str) -> str:
        return as_pg(str(PG_BIN / "psql"), "-h", str(sock), "-p", str(port), "-d", "postgres",
                     "-At", "-c", sql).stdout.strip()

    server = None
    try:
        as_pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "--no-sync")
        server = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
             "-p", str(port), "-k", str(sock), "-c", "listen_addresses="],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:  # until it accepts connections
            try:
                psql("select 1")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        psql("create table t as select g, md5(g::text) as h from generate_series(1, 1000) g")
        # runuser forks the postmaster: the tree to dump is runuser's child.
        (postmaster,) = [int(c) for c in Path(f"/proc/{server.pid}/task/{server.pid}/children")
                         .read_text().split()]
        yield postmaster, psql
    finally:
        if server is not None:
            pids = _tree(server.pid)
            for pid in pids:  # resume first: a stopped postmaster would not hear SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[1] if len(pids) > 1 else server.pid, signal.SIGQUIT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                server.wait(30)
        shutil.rmtree(top, ignore_errors=True)


def test_postgresql_dumps_whole_and_runs_on(postgres, tmp_path):
    postmaster, psql = postgres
    before = psql("select count(*), sum(g) from t")
    _no_client_backends(postmaster)  # psql's backend exits on its own after the query
    tree = _tree(postmaster)
    assert len(tree) >= 5  # checkpointer, bgwriter, walwriter, autovacuum, ...
    pss = {p: kb for p in tree if (kb := _pss_or_none(p)) is not None}
    out = tmp_path / "set"
    r = dump_stopped(out, postmaster)
    try:
        assert r.exit_code == 0, r.output
        v = verify(out, postmaster)
        assert v.exit_code == 0, v.output
    finally:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    d = info(out)
    # Every task alive before and after was alive during the dump (postgres starts and ends
    # some workers on its own: those may come or go).
    assert {t["pid"] for t in d["tasks"]} >= {p for p in tree if os.path.exists(f"/proc/{p}")}
    kinds = {(o["kind"], o["size"]) for o in d["objects"]}
    assert ("sysv", 56) in kinds  # the interlock segment, which used to stop the dump
    assert any(k == "shmem-anon" and size >= 128 << 20 for k, size in kinds)  # shared_buffers
    with ImageSet.open(out) as s:
        assert sum(sum(c.nr_pages for c in t.cow) for t in s.tasks.values()) > 0
    assert psql("select count(*), sum(g) from t") == before == "1000|500500"
    # No COW copies made by the dump (over the tasks still there: a worker may come and go).
    now = {p: kb for p in pss if (kb := _pss_or_none(p)) is not None}
    assert sum(now[p] - pss[p] for p in now) < 4096
