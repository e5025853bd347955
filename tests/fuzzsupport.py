"""Seeded mutation fuzzing of image sets (issue 15): the engine of tests/test_fuzz_images.py
and of the long campaign (`python tests/fuzzsupport.py --count 100000 --jobs 2`).

A mutant is a copy of a base set with one mutation, chosen from (seed, index) alone, so any
finding is replayed by its number. Mutations: bit flips, byte stores, truncation, extension,
a blown-up entry length, a field override appended to an entry (numeric fields set to edge
values, strings to bytes that are not UTF-8, nested and repeated fields included, generic over
the codec's message types), a dropped or repeated entry, two files swapped, a file removed,
dumper.img removed (the set becomes CRIU-like), and special files in place of an image (FIFO,
symlink to /dev/zero or /dev/urandom, a directory, a 64 GiB sparse file). Most mutants of a
dumper set are then "resealed" (dumper.img's manifest recomputed, and for page corruption
the pages checksum too) so that they reach the checks past the checksums.

Each mutant runs through commands in a worker process capped by RLIMIT_AS and a per-command
alarm: `inspect info` always, then one of show, mems, ps, diff, and on model sets verify and
restore --verify. Oracles: exit status 0, 1 or 2 only; no exception but SystemExit (no
traceback); exit 2 prints one `dumper: error:` line; no MemoryError, no alarm; and no
corrupted page accepted: when verify or restore --verify exits 0, the mutant restored into
the model reads exactly the base set's truth, page for page.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

# The code under test: this checkout, or another one (DUMPER_FUZZ_CODE, --code) to compare.
ROOT = Path(os.environ.get("DUMPER_FUZZ_CODE") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

from dumper.images import codec  # noqa: E402
from dumper.images import magic as M  # noqa: E402
from dumper.images.checksums import stored_hash  # noqa: E402

_U32 = struct.Struct("<I")
MEM_CAP = 3 << 30  # RLIMIT_AS of a worker: far above what a golden set needs
ALARM_S = int(os.environ.get("DUMPER_FUZZ_ALARM", "20"))  # seconds per command
EDGE = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x1000, 0xFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        1 << 32, 1 << 40, 1 << 47, (1 << 47) - 4096, 1 << 56, 1 << 63, (1 << 64) - 1,
        (1 << 64) - 4096]
BAD_UTF8 = [b"\xff", b"\xc3", b"a\x80b", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xfe\xfe"]


# -- wire helpers -----------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    return codec._varint(n & ((1 << 64) - 1))  # the codec's own, two's complement for < 0


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


_VARINT_TYPES = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32,
                 FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32,
                 FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
                 FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}


def _leaf_paths(desc, depth: int = 0) -> list[list]:
    """Field paths down to a scalar, through message fields (depth-limited)."""
    out = []
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 3:
                out += [[f, *p] for p in _leaf_paths(f.message_type, depth + 1)]
        else:
            out.append([f])
    return out


def _override(path: list, rng: random.Random, old: int | None) -> bytes:
    """Wire bytes that, appended to an entry, set the field at path (proto2 merge rules:
    the last scalar wins, embedded messages merge, repeated fields gain an element)."""
    f = path[0]
    if len(path) > 1:
        inner = _override(path[1:], rng, None)
        return _tag(f.number, 2) + _varint(len(inner)) + inner
    if f.type in _VARINT_TYPES:
        v = rng.choice(EDGE)
        if old is not None and rng.random() < 0.3:
            v = old + rng.choice([-4096, -1, 1, 4096, 1 << 40])
        if f.type in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
            v = (v << 1) ^ (v >> 63)
        return _tag(f.number, 0) + _varint(v)
    if f.type in (FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
                  FieldDescriptor.TYPE_DOUBLE):
        return _tag(f.number, 1) + struct.pack("<Q", rng.choice(EDGE) & ((1 << 64) - 1))
    if f.type in (FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32,
                  FieldDescriptor.TYPE_FLOAT):
        return _tag(f.number, 5) + struct.pack("<I", rng.choice(EDGE) & 0xFFFFFFFF)
    if f.type == FieldDescriptor.TYPE_STRING:
        data = rng.choice(BAD_UTF8 + [b"", b"x" * 300, "\u00e9".encode()])
        return _tag(f.number, 2) + _varint(len(data)) + data
    data = rng.choice([b"", rng.randbytes(rng.randrange(1, 64)), bytes(16)])
    return _tag(f.number, 2) + _varint(len(data)) + data


_RANGES = {FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
           FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
           FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
           FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
           FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
           FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
           FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
           FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
           FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
           FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1)}


def _leaves(msg, out: list, depth: int = 0) -> list:
    """(message, field, index or None) of every scalar set in msg, repeated elements and
    nested messages included."""
    for f, value in msg.ListFields():
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for sub in (value if f.is_repeated else [value]):
                if depth < 4:
                    _leaves(sub, out, depth + 1)
        elif f.is_repeated:
            out += [(msg, f, i) for i in range(len(value))]
        else:
            out.append((msg, f, None))
    return out


def edit_leaf(msg, rng: random.Random) -> str:
    """Set one existing scalar of msg (a VMA's end, a thread id, a digest...) to an edge
    value its type can hold; returns what was changed, "" when msg holds none."""
    leaves = _leaves(msg, [])
    if not leaves:
        return ""
    parent, f, i = rng.choice(leaves)
    old = getattr(parent, f.name)[i] if i is not None else getattr(parent, f.name)
    if f.type in _RANGES:
        lo, hi = _RANGES[f.type]
        v = rng.choice(EDGE) if rng.random() < 0.6 else old + rng.choice(
            [-4096, -1, 1, 4096, 1 << 20, 1 << 40, -(1 << 40)])
        v = max(lo, min(hi, v if lo == 0 or v < 1 << 63 else v - (1 << 64)))
    elif f.type == FieldDescriptor.TYPE_BOOL:
        v = not old
    elif f.type == FieldDescriptor.TYPE_ENUM:
        v = rng.choice([ev.number for ev in f.enum_type.values])
    elif f.type == FieldDescriptor.TYPE_STRING:
        v = rng.choice(["", "x" * 300, "../../etc/passwd", old + "\u00e9", "/"])
    elif f.type == FieldDescriptor.TYPE_BYTES:
        v = rng.choice([b"", bytes(len(old)), rng.randbytes(max(1, len(old)))])
    else:  # float, double
        v = rng.choice([0.0, -1.0, 1e300])
    if i is not None:
        getattr(parent, f.name)[i] = v
    else:
        setattr(parent, f.name, v)
    return f"{f.name}{'' if i is None else f'[{i}]'}: {old!r} -> {v!r}"[:200]


def _frames(data: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """(header length, [(entry offset, payload length)]) of an image, or None."""
    try:
        kind = codec.read_header(io.BytesIO(data), "<m>")
    except Exception:  # noqa: BLE001 - not an image we can frame
        return None
    pos = 8 if kind.common else 4
    out = []
    while pos + 4 <= len(data):
        (n,) = _U32.unpack_from(data, pos)
        if pos + 4 + n > len(data):
            break
        out.append((pos, n))
        pos += 4 + n
    return (8 if kind.common else 4), out


# -- mutations --------------------------------------------------------------------------------


@dataclass
class Mutant:
    index: int
    kind: str
    file: str
    resealed: bool = False
    pages_changed: bool = False
    note: str = ""


def _replace(p: Path, data: bytes) -> None:
    """Write a file of the mutant anew: its files are hard links to the base set's."""
    if os.path.lexists(p):
        p.unlink()
    p.write_bytes(data)


def _files(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if (d / n).is_file())


def mutate(d: Path, index: int, seed: int, is_dumper: bool) -> Mutant:
    """Apply mutation number index to the set copy at d."""
    rng = random.Random(f"{seed}:{index}")
    names = _files(d)
    name = rng.choice(names)
    p = d / name
    data = bytearray(p.read_bytes())
    kinds = ["flip", "flip", "store", "truncate", "extend", "length", "append", "append",
             "edit", "edit", "edit", "edit", "drop", "repeat", "swap", "remove", "special"]
    if is_dumper:
        kinds.append("no-manifest")
    kind = rng.choice(kinds)
    m = Mutant(index, kind, name)
    if kind == "flip" and data:
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "store" and data:
        i = rng.randrange(len(data))
        data[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif kind == "truncate":
        del data[rng.randrange(len(data) + 1):]
    elif kind == "extend":
        data += rng.choice([bytes(rng.randrange(1, 9000)), rng.randbytes(rng.randrange(1, 64)),
                            _U32.pack(rng.choice(EDGE) & 0xFFFFFFFF)])
    elif kind in ("length", "append", "edit", "drop", "repeat"):
        framed = _frames(bytes(data))
        if not framed or not framed[1]:
            m.kind = "flip-fallback"
            if data:
                data[rng.randrange(len(data))] ^= 0x10
        else:
            hdr, entries = framed
            ei = rng.randrange(len(entries))
            off, n = entries[ei]
            payload = bytes(data[off + 4 : off + 4 + n])
            if kind == "length":
                new = rng.choice([n + 1, n - 1, n * 2 + 8, 0, 1 << 20, 0xFFFFFFFF, 64 << 20])
                data[off : off + 4] = _U32.pack(max(0, new) & 0xFFFFFFFF)
            elif kind == "drop":
                del data[off : off + 4 + n]
            elif kind == "repeat":
                data[off:off] = data[off : off + 4 + n]
            elif kind == "edit":
                img_kind = codec.read_header(io.BytesIO(bytes(data)), name)
                try:
                    msg = codec.message_type(img_kind, ei).FromString(payload)
                    m.note = f"entry {ei} " + edit_leaf(msg, rng)
                    newp = msg.SerializePartialToString()
                except Exception as e:  # noqa: BLE001 - an entry we cannot edit: flip instead
                    m.note = f"uneditable: {type(e).__name__}"
                    newp = bytes(payload[:-1]) + bytes([payload[-1] ^ 1]) if payload else b""
                data[off : off + 4 + n] = _U32.pack(len(newp)) + newp
            else:
                img_kind = codec.read_header(io.BytesIO(bytes(data)), name)
                mtype = codec.message_type(img_kind, ei)
                paths = _leaf_paths(mtype.DESCRIPTOR)
                path = rng.choice(paths)
                old = None
                try:
                    msg = mtype.FromString(payload)
                    if len(path) == 1 and not path[0].is_repeated and path[0].type in _VARINT_TYPES:
                        old = getattr(msg, path[0].name)
                except Exception:  # noqa: BLE001
                    pass
                extra = _override(path, rng, old)
                m.note = f"entry {ei} {'.'.join(f.name for f in path)}"
                newp = payload + extra
                data[off : off + 4 + n] = _U32.pack(len(newp)) + newp
    if kind == "swap" and len(names) > 1:
        other = rng.choice([x for x in names if x != name])
        tmp = d / ".swap"
        os.rename(p, tmp)
        os.rename(d / other, p)
        os.rename(tmp, d / other)
        m.note = other
        m.pages_changed = name.startswith("pages-") or other.startswith("pages-")
    elif kind == "remove":
        p.unlink()
    elif kind == "no-manifest":
        (d / M.DUMPER).unlink()
        m.file = M.DUMPER
    elif kind == "special":
        p.unlink()
        how = rng.choice(["fifo", "zero", "urandom", "dir", "sparse", "null"])
        m.note = how
        if how == "fifo":
            os.mkfifo(p)
        elif how == "dir":
            p.mkdir()
        elif how == "sparse":
            with open(p, "wb") as f:
                f.truncate(64 << 30)
        else:
            os.symlink(f"/dev/{'urandom' if how == 'urandom' else how}", p)
    else:
        _replace(p, bytes(data))
        m.pages_changed = name.startswith("pages-")
    if is_dumper and kind not in ("no-manifest",) and (d / M.DUMPER).exists() \
            and name != M.DUMPER and rng.random() < 0.75:
        m.resealed = reseal(d, reseal_pages=rng.random() < 0.5)
    return m


def reseal(d: Path, reseal_pages: bool) -> bool:
    """Recompute dumper.img's manifest (and, with reseal_pages, raw pages checksums and
    sizes) after a mutation, as a buggy or hostile writer would leave it."""
    try:
        from dumper.images import manifest

        (entry,) = codec.load(d / M.DUMPER).entries
        if reseal_pages:
            for pm in entry.pages:
                f = d / M.pages(pm.pages_id)
                if pm.compression == 0 and f.is_file() and not f.is_symlink():
                    h = stored_hash(pm.checksum_algo)
                    h.update(f.read_bytes())
                    pm.checksum = h.digest()
                    pm.stored_size = pm.raw_size = f.stat().st_size
                    pm.nr_pages = pm.raw_size // 4096
        names = [n for n in os.listdir(d) if manifest.listed(n)]
        if any(not (d / n).is_file() or (d / n).is_symlink() or (d / n).stat().st_size > 1 << 24
               for n in names):
            return False
        manifest.seal(entry, d)
        _replace(d / M.DUMPER, codec.encode(codec.BY_NAME["DUMPER"], [entry]))
        return True
    except Exception:  # noqa: BLE001 - a mutant dumper.img may not reseal
        return False


# -- running ----------------------------------------------------------------------------------


class Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise Alarm()


@dataclass
class Finding:
    mutant: dict
    command: str
    what: str
    detail: str


@dataclass
class Result:
    mutants: int = 0
    runs: int = 0
    exits: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)  # "kind[+resealed] command exit" -> n
    oracle_checks: int = 0  # accepted verify/restore runs whose restore was compared
    seconds: float = 0.0
    max_rss_mib: float = 0.0


def _invoke(args: list[str]):
    from click.testing import CliRunner

    from dumper.cli import main

    signal.alarm(ALARM_S)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        signal.alarm(0)


def _restored_truth_matches(d: Path, base: Path) -> str:
    """'' when the mutant, restored into the model, reads the base set's truth exactly."""
    import numpy as np

    from dumper.images.reader import ImageSet
    from dumper.model import Model
    from dumper.model.host import ModelTarget
    from dumper.model.kernels import load_profile
    from dumper.restore import restore

    signal.alarm(ALARM_S)
    try:
        with ImageSet.open(d) as s, ImageSet.open(base) as b:
            target = ModelTarget(Model(load_profile(b.meta.profile)))
            restore(s, target)
            for pid in b.tasks:
                now = dict(target.truth(pid)) if pid in s.tasks else {}
                for vaddr, want in b.iter_truth(pid):
                    got = now.get(vaddr)
                    if got is None or len(got) < len(want) or \
                            not np.array_equal(np.asarray(got[: len(want)]), want):
                        return f"task {pid} run {vaddr:#x} differs from the base set's truth"
    finally:
        signal.alarm(0)
    return ""


def run_mutant(base: Path, work: Path, index: int, seed: int, model: bool,
               res: Result, subprocess_every: int = 0) -> None:
    d = work / f"m{index}"
    shutil.copytree(base, d, symlinks=True, copy_function=os.link)
    try:
        m = mutate(d, index, seed, (base / M.DUMPER).exists())
        rng = random.Random(f"cmd:{seed}:{index}")
        target = str(d / m.file)
        cmds = [["inspect", "info", str(d)]]
        choice = rng.choice(["show", "mems", "ps", "diff"] + (["verify", "restore"] * 2
                                                            if model else ["verify"]))
        cmds.append({"show": ["inspect", "show", target], "mems": ["inspect", "mems", str(d)],
                     "ps": ["inspect", "ps", str(d)],
                     "diff": ["inspect", "diff", str(base), str(d)],
                     "verify": ["verify", str(d)],
                     "restore": ["restore", str(d), "--verify"]}[choice])
        for args in cmds:
            _check_run(args, m, d, base, model, res)
        if subprocess_every and index % subprocess_every == 0:
            _check_subprocess(cmds[-1], m, res)
        res.mutants += 1
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _finding(res: Result, m: Mutant, args: list[str], what: str, detail: str) -> None:
    res.findings.append(Finding(vars(m), " ".join(a.rsplit("/", 1)[-1] for a in args), what,
                                detail[-2000:]))


def _check_run(args, m: Mutant, d: Path, base: Path, model: bool, res: Result) -> None:
    res.runs += 1
    try:
        r = _invoke(args)
    except Alarm:
        return _finding(res, m, args, "hang", f"over {ALARM_S} s")
    exc = r.exception
    if isinstance(exc, Alarm):
        return _finding(res, m, args, "hang", f"over {ALARM_S} s")
    if isinstance(exc, MemoryError):
        return _finding(res, m, args, "memory", "MemoryError under RLIMIT_AS")
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return _finding(res, m, args, "traceback", tb)
    code = r.exit_code
    res.exits[code] += 1
    cmd = f"inspect {args[1]}" if args[0] == "inspect" else args[0]
    res.kinds[f"{m.kind}{'+resealed' if m.resealed else ''} / {cmd} / exit {code}"] += 1
    if code not in (0, 1, 2):
        return _finding(res, m, args, "exit", f"exit {code}")
    err = r.stderr
    if code == 2:
        lines = [x for x in err.splitlines() if x.strip()]
        if len(lines) != 1 or not lines[0].startswith("dumper: error: "):
            return _finding(res, m, args, "message", err)
    if "Traceback" in err or "Traceback" in r.stdout:
        return _finding(res, m, args, "traceback", err)
    if code == 0 and model and args[0] in ("verify", "restore"):
        res.oracle_checks += 1
        try:
            why = _restored_truth_matches(d, base)
        except Alarm:
            why = "the oracle's restore ran over its time"
        except Exception as e:  # noqa: BLE001 - verify accepted what a restore refuses
            why = f"verify accepted, a direct restore raised {type(e).__name__}: {e}"
        if why:
            _finding(res, m, args, "accepted", why)


def _check_subprocess(args, m: Mutant, res: Result) -> None:
    import subprocess

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))

    res.runs += 1
    try:
        r = subprocess.run([sys.executable, "-m", "dumper.cli", *args], capture_output=True,
                           text=True, timeout=60, preexec_fn=cap, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return _finding(res, m, args, "hang", "subprocess over 60 s")
    if r.returncode not in (0, 1, 2) or "Traceback" in r.stderr:
        _finding(res, m, args, "subprocess", f"exit {r.returncode}: {r.stderr}")


def run_range(bases: list[tuple[Path, bool]], start: int, count: int, seed: int,
              subprocess_every: int = 0) -> Result:
    """Mutants start..start+count over the bases in turn, in this process."""
    signal.signal(signal.SIGALRM, _on_alarm)
    res = Result()
    t0 = time.perf_counter()
    # Beside the bases: mutants are hard links to their files but the one changed.
    with tempfile.TemporaryDirectory(prefix="dumper-fuzz.", dir=bases[0][0].parent) as w:
        for i in range(start, start + count):
            base, model = bases[i % len(bases)]
            run_mutant(base, Path(w), i, seed, model, res, subprocess_every)
    res.seconds = time.perf_counter() - t0
    res.max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _scratch() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else \
        tempfile.gettempdir()


def cap_memory(limit: int = MEM_CAP) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def model_bases(out: Path) -> list[tuple[Path, bool]]:
    """The golden sets and a scenario dump: model sets (restore is fuzzed on them)."""
    from dumper.images import golden

    bases = [(golden.build(out, v), True) for v in golden.VARIANTS]
    return bases


def scenario_base(out: Path, name: str = "shmem-swapped-fork") -> Path:
    from click.testing import CliRunner

    from dumper.cli import main

    d = out / f"scn-{name}"
    r = CliRunner().invoke(main, ["dump", "--scenario", name, "-o", str(d)])
    assert r.exit_code == 0, r.output
    return d


def _worker(args) -> dict:
    bases, start, count, seed, sub = args
    cap_memory()
    os.nice(10)
    res = run_range([(Path(b), m) for b, m in bases], start, count, seed, sub)
    return {"mutants": res.mutants, "runs": res.runs, "exits": dict(res.exits),
            "kinds": dict(res.kinds), "oracle_checks": res.oracle_checks,
            "seconds": res.seconds, "max_rss_mib": res.max_rss_mib,
            "findings": [vars(f) for f in res.findings]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--subprocess-every", type=int, default=200)
    ap.add_argument("--live", action="append", default=[],
                    help="a live or CRIU image set to fuzz too, inspect and verify only "
                    "(repeatable)")
    ap.add_argument("--scenario", action="append", default=[],
                    help="also fuzz a model dump of this scenario (repeatable)")
    ap.add_argument("--no-model", action="store_true", help="only the --live sets")
    ap.add_argument("--code", help="fuzz the dumper checkout at this path instead")
    ap.add_argument("--alarm", type=int, help="seconds a command may take (default 20)")
    ap.add_argument("-o", "--output", help="JSON summary here")
    a = ap.parse_args(argv)
    import multiprocessing as mp

    if a.alarm:
        os.environ["DUMPER_FUZZ_ALARM"] = str(a.alarm)  # the spawned workers read it
    if a.code and os.environ.get("DUMPER_FUZZ_CODE") != str(Path(a.code).resolve()):
        env = {**os.environ, "DUMPER_FUZZ_CODE": str(Path(a.code).resolve())}
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)

    with tempfile.TemporaryDirectory(prefix="dumper-fuzz-bases.", dir=_scratch()) as tmp:
        bases = [] if a.no_model else [(str(p), m) for p, m in model_bases(Path(tmp))]
        bases += [(str(scenario_base(Path(tmp), s)), True) for s in a.scenario]
        for i, other in enumerate(a.live):  # inspect and verify only: never restored
            shutil.copytree(other, Path(tmp) / f"nonmodel-{i}", symlinks=True)
            bases.append((str(Path(tmp) / f"nonmodel-{i}"), False))
        jobs = [(bases, s, min(a.batch, a.count - s), a.seed, a.subprocess_every)
                for s in range(0, a.count, a.batch)]
        t0 = time.perf_counter()
        total = Result()
        classes: Counter = Counter()
        with mp.get_context("spawn").Pool(a.jobs, maxtasksperchild=4) as pool:
            for r in pool.imap_unordered(_worker, jobs):
                total.mutants += r["mutants"]
                total.runs += r["runs"]
                total.exits.update({int(k): v for k, v in r["exits"].items()})
                total.kinds.update(r["kinds"])
                total.oracle_checks += r["oracle_checks"]
                total.max_rss_mib = max(total.max_rss_mib, r["max_rss_mib"])
                for f in r["findings"]:
                    total.findings.append(Finding(**f))
                    classes[(f["what"], f["mutant"]["kind"], f["command"].split()[0])] += 1
                el = time.perf_counter() - t0
                print(f"{total.mutants} mutants, {total.runs} runs, {el:.0f} s "
                      f"({total.mutants / el:.1f}/s), exits {dict(total.exits)}, "
                      f"findings {len(total.findings)}", flush=True)
        total.seconds = time.perf_counter() - t0
    summary = {
        "mutants": total.mutants, "runs": total.runs, "seconds": round(total.seconds, 1),
        "rate": round(total.mutants / total.seconds, 1), "exits": dict(total.exits),
        "max_rss_mib": round(total.max_rss_mib), "seed": a.seed, "jobs": a.jobs,
        "oracle_checks": total.oracle_checks, "kinds": dict(sorted(total.kinds.items())),
        "bases": [Path(b).name for b, _ in bases],
        "classes": {" / ".join(k): v for k, v in classes.items()},
        "findings": [vars(f) for f in total.findings[:200]],
    }
    text = json.dumps(summary, indent=1)
    if a.output:
        Path(a.output).write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("findings", "kinds")},
                     indent=1))
    return 1 if total.findings else 0


if __name__ == "__main__":
    sys.exit(main())

