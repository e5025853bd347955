"""`dumper inspect`: look inside image files and image sets, ours and CRIU's.

    dumper inspect show FILE            one image as JSON, crit show style (hex, flag names)
    dumper inspect decode FILE [-o OUT] binary image -> JSON (crit decode style)
    dumper inspect encode FILE -o OUT   JSON -> binary image; decode/encode round-trip exactly
    dumper inspect info DIR             tasks, VMAs, pages per task and object, sizes, ratio
    dumper inspect info FILE            one image's kind and entry count (crit info)
    dumper inspect ps DIR               the process tree
    dumper inspect mems DIR             VMAs per task with page counts, files and objects named
    dumper inspect x DIR ps|fds|mems|rss   crit's explorers, as crit x prints them
    dumper inspect pages DIR --pid P --addr A   hexdump of one page, and where it comes from
    dumper inspect diff DIR1 DIR2       page by page: what one set holds that the other lacks

Text by default, --json for machines. A bad image or set prints
`dumper: error: FILE: what is wrong (at offset N)` and exits 2; diff exits 1 on differences.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from dumper.images import flags as F
from dumper.images.errors import ImageError
from dumper.kabi import PAGE_SIZE

# The codec, protobuf and numpy load with the first command that reads an image (start-up).
if TYPE_CHECKING:
    from dumper.images.reader import ImageSet
    from dumper.images.records import Task, Vma


def _fail(message: str) -> None:
    click.echo(f"dumper: error: {message}", err=True)
    raise click.exceptions.Exit(2)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn image and file errors into `dumper: error: ...` and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImageError as e:
            _fail(str(e))
        except BrokenPipeError:
            raise  # the reader of stdout went away: the CLI ends quietly
        except OSError as e:
            _fail(f"{e.filename or ''}: {e.strerror or e}")

    return wrapper


def _emit_json(doc: Any, indent: int | None = 2) -> None:
    click.echo(json.dumps(doc, indent=indent))


def _open(path: str, verify: bool = True, quiet: bool = True) -> ImageSet:
    """The set, validated; unless quiet, a progress bar on a terminal while its pages'
    checksums are checked (the long part of opening a big set)."""
    from dumper.images.reader import ImageSet
    from dumper.progress import for_stderr

    return ImageSet.open(path, verify=verify, progress=None if quiet else for_stderr(False))


@click.group("inspect", context_settings={"help_option_names": ["-h", "--help"]})
def inspect() -> None:
    """Look inside image files and image sets (dumper's and CRIU's)."""


# -- single images ----------------------------------------------------------------------------


def _read_input(path: str) -> bytes:
    from dumper.images.safeio import read_input

    return read_input(path)  # regular files only, and `-`, both bounded


def _write_output(path: str | None, data: bytes) -> None:
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as f:
        f.write(data)


@inspect.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="one line of JSON instead of indented")
@_errors
def show(file: str, as_json: bool) -> None:
    """Print image FILE as JSON, crit show style: hex addresses, flag names."""
    from dumper.images.jsonstream import write_json  # streamed: one entry at a time

    write_json(file, lambda text: click.echo(text, nl=False), True, None if as_json else 2)
    click.echo()


@inspect.command()
@click.argument("file")
@click.option("-o", "--output", help="write the JSON here (default stdout)")
@click.option("--pretty", is_flag=True, help="hex addresses and flag names, indented")
@_errors
def decode(file: str, output: str | None, pretty: bool) -> None:
    """Image FILE (- for stdin) to JSON, crit decode style."""
    from dumper.images.jsonstream import write_json, write_json_file  # streamed

    if output is None or output == "-":
        write_json(file, lambda text: click.echo(text, nl=False), pretty, 2 if pretty else None)
        click.echo()
    else:
        write_json_file(file, output, pretty)


@inspect.command()
@click.argument("file")
@click.option("-o", "--output", help="write the image here (default stdout, never a terminal)")
@_errors
def encode(file: str, output: str | None) -> None:
    """JSON FILE (- for stdin), as decode or show prints it, back to a binary image."""
    from dumper.images import jsonfmt

    raw = _read_input(file)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ImageError(file, f"invalid JSON: {e.msg}", e.pos) from None
    except UnicodeDecodeError as e:
        raise ImageError(file, "invalid JSON: not UTF-8 text", e.start) from None
    try:
        data = jsonfmt.image_from_json(doc)
    except ValueError as e:
        raise ImageError(file, str(e)) from None
    if (output is None or output == "-") and sys.stdout.isatty():
        _fail("refusing to write a binary image to a terminal; use -o FILE")
    _write_output(output, data)


# -- image sets -------------------------------------------------------------------------------

verify_option = click.option(
    "--no-verify", "no_verify", is_flag=True, help="skip hashing the pages images"
)
json_option = click.option("--json", "as_json", is_flag=True, help="JSON output")


def _vma_pages(s: ImageSet, t: Task, v: Vma) -> int:
    """Pages the set holds for one VMA: the task's own and COW ones, or its object's."""
    if v.private:
        own = sum(
            max(0, min(r.end(), v.end) - max(r.vaddr, v.start)) // PAGE_SIZE
            for r in t.pagemap
            if r.present
        )
        cow = sum(
            max(0, min(c.vaddr + c.nr_pages * PAGE_SIZE, v.end) - max(c.vaddr, v.start))
            // PAGE_SIZE
            for c in t.cow
        )
        return own + cow
    obj = s.objects.get(v.obj) if v.obj is not None else None
    if obj is None:
        return 0
    lo, hi = v.pgoff, v.pgoff + v.end - v.start
    return sum(
        max(0, min(r.end(), hi) - max(r.vaddr, lo)) // PAGE_SIZE for r in obj.pagemap if r.present
    )


def _vma_tag(s: ImageSet, v: Vma) -> str:
    if v.obj is not None and v.obj in s.objects:
        off = f" +{v.pgoff:#x}" if v.pgoff else ""
        return s.objects[v.obj].label + off
    if v.status & F.VMA_AREA_STACK or v.flags & 0x100:
        return "[stack]"
    if v.status & F.VMA_AREA_HEAP:
        return "[heap]"
    if v.status & (F.VMA_FILE_PRIVATE | F.VMA_FILE_SHARED):
        off = f" +{v.pgoff:#x}" if v.pgoff else ""
        shared = " (shared)" if v.status & F.VMA_FILE_SHARED else ""
        return f"{v.path or 'unknown file'}{off}{shared} (referenced, not in the set)"
    if v.status & (F.VMA_AREA_VDSO | F.VMA_AREA_VVAR | F.VMA_AREA_VSYSCALL):
        return "[vdso/vvar/vsyscall]"
    return "anon" if v.private else "shared"


def _info(s: ImageSet) -> dict[str, Any]:
    tasks = []
    for t in s.tasks.values():
        own = t.present_pages
        tasks.append(
            {
                "pid": t.pid,
                "comm": t.comm,
                "vmas": len(t.vmas),
                "pages": own,
                "cow_pages": sum(c.nr_pages for c in t.cow),
                "bytes": own * PAGE_SIZE,
                "pages_id": t.pages_id,
                "truth_pages": s.truths[t.pid].nr_pages if t.pid in s.truths else None,
            }
        )
    objects = [
        {
            "shmid": o.shmid,
            "kind": o.kind,
            "name": o.name,
            "size": o.size,
            "dev": o.dev,
            "ino": o.ino,
            "pages": sum(r.nr_pages for r in o.pagemap if r.present),
            "pages_id": o.pages_id,
            "page_size": o.page_size,  # a hugetlb object's huge page size
        }
        for o in s.objects.values()
    ]
    raw = sum(p.raw_size for p in s.pages.values())
    stored = sum(p.stored_size for p in s.pages.values())
    m = s.meta
    return {
        "path": str(s.path),
        "made_by": "dumper" if m else "criu",
        "tool_version": m.tool_version if m else None,
        "strategy": m.strategy if m else None,
        "profile": m.profile if m else None,
        "host_kind": m.host_kind if m else None,
        "page_size": s.page_size,
        "compression": m.compression if m else "none",
        "level": m.level if m and m.compression != "none" else None,
        "tasks": tasks,
        "vmas": sum(len(t.vmas) for t in s.tasks.values()),
        "objects": objects,
        "pages": raw // PAGE_SIZE,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": round(raw / stored, 3) if stored else None,
        "unreadable": [  # pages the dump could not read: not in the set
            {"pid": u.pid, "shmid": u.shmid, "vaddr": u.vaddr, "pages": u.nr_pages,
             "reason": u.reason} for u in s.unreadable],
    }


@inspect.command()
@click.argument("path", metavar="DIR|FILE")
@json_option
@verify_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, even on a terminal.")
@_errors
def info(path: str, as_json: bool, no_verify: bool, quiet: bool) -> None:
    """Summary of image set DIR (how it was made, tasks, objects, pages, sizes), or of one
    image FILE: its kind and entry count, as `crit info` prints them."""
    if os.path.isfile(path):
        from dumper.images.criu_magic import info as crit_info

        c = crit_info(path)
        if as_json:
            return _emit_json(c)
        n = c["count"]
        return click.echo(f"{path}: {c['magic']} image, {n} entr{'y' if n == 1 else 'ies'}")
    dir = path
    with _open(dir, not no_verify, quiet) as s:
        d = _info(s)
    if as_json:
        return _emit_json(d)
    if d["made_by"] == "dumper":
        click.echo(
            f"{d['path']}: dumper {d['tool_version']} set, strategy {d['strategy']}, "
            f"profile {d['profile']}, host {d['host_kind']}"
        )
    else:
        click.echo(f"{d['path']}: CRIU set (no dumper.img): strategy and profile unknown")
    comp = f"zstd level {d['level']}" if d["compression"] == "zstd" else "raw (uncompressed)"
    click.echo(f"page size {d['page_size']}, pages stored {comp}")
    from dumper.words import count

    click.echo(f"{count(len(d['tasks']), 'task')}, {count(d['vmas'], 'VMA')}, "
               f"{count(len(d['objects']), 'shared object')}")
    click.echo(f"\n{'PID':>7} {'COMM':<16} {'VMAS':>5} {'PAGES':>8} {'COW':>8} {'BYTES':>12}")
    for t in d["tasks"]:
        click.echo(
            f"{t['pid']:>7} {t['comm']:<16} {t['vmas']:>5} {t['pages']:>8} {t['cow_pages']:>8} "
            f"{t['bytes']:>12}"
        )
    if d["objects"]:
        click.echo(f"\n{'SHMID':>10} {'KIND':<11} {'NAME':<16} {'SIZE':>12} {'PAGES':>8}")
        for o in d["objects"]:
            huge = f"  (in {o['page_size'] >> 10} KiB huge pages)" if o["page_size"] != \
                PAGE_SIZE else ""
            click.echo(
                f"{o['shmid']:>10} {o['kind']:<11} {o['name'] or '-':<16} {o['size']:>12} "
                f"{o['pages']:>8}{huge}"
            )
    for u in d["unreadable"]:
        where = f"pid {u['pid']} {u['vaddr']:#x}" if u["pid"] else \
            f"object {u['shmid']} offset {u['vaddr']:#x}"
        click.echo(f"UNREADABLE at dump time, not saved: {where}+{u['pages']} pages "
                   f"({u['reason']})")
    ratio = f", compression ratio {d['ratio']}" if d["ratio"] else ""
    click.echo(
        f"\n{d['pages']} pages, {d['raw_bytes']} bytes of page data, "
        f"{d['stored_bytes']} bytes stored{ratio}"
    )


def _tree(s: ImageSet) -> dict[str, Any]:
    kids: dict[int, list[int]] = {}
    for t in s.tasks.values():
        kids.setdefault(t.ppid, []).append(t.pid)

    def node(pid: int) -> dict[str, Any]:
        t = s.tasks[pid]
        return {
            "pid": pid,
            "pgid": t.pgid,
            "sid": t.sid,
            "comm": t.comm,
            "state": F.code_name(t.state, F.TASK_STATES),
            "threads": list(t.threads),
            "children": [node(c) for c in kids.get(pid, [])],
        }

    return node(s.root)


@inspect.command()
@click.argument("dir")
@json_option
@_errors
def ps(dir: str, as_json: bool) -> None:
    """The process tree of image set DIR."""
    with _open(dir, verify=False) as s:
        tree = _tree(s)
    if as_json:
        return _emit_json(tree)
    click.echo(f"{'PID':>7} {'PGID':>7} {'SID':>7}   COMM")

    def show_node(n: dict[str, Any], depth: int) -> None:
        state = "" if n["state"] == "Alive" else f" ({n['state']})"
        click.echo(f"{n['pid']:>7} {n['pgid']:>7} {n['sid']:>7}   {'  ' * depth}{n['comm']}{state}")
        for c in n["children"]:
            show_node(c, depth + 1)

    show_node(tree, 0)


@inspect.command()
@click.argument("dir")
@json_option
@_errors
def mems(dir: str, as_json: bool) -> None:
    """VMAs of each task in image set DIR, with the pages held for each."""
    out = []
    with _open(dir, verify=False) as s:
        for t in s.tasks.values():
            vmas = [
                {
                    "start": v.start,
                    "end": v.end,
                    "perms": F.perms(v.prot, not v.private),
                    "pgoff": v.pgoff,
                    "status": F.names(v.status, F.VMA_STATUS),
                    "pages": _vma_pages(s, t, v),
                    "npages": v.npages,
                    "object": v.obj,
                    "what": _vma_tag(s, v),
                }
                for v in t.vmas
            ]
            out.append({"pid": t.pid, "comm": t.comm, "exe": t.exe, "vmas": vmas})
    if as_json:
        return _emit_json(out)
    for t in out:
        exe = f"  exe {t['exe']}" if t["exe"] else ""
        click.echo(f"{t['pid']} {t['comm']}{exe}")
        for v in t["vmas"]:
            click.echo(
                f"  {v['start']:012x}-{v['end']:012x} {v['perms']} "
                f"{v['pages']:>8}/{v['npages']:<8} {v['what']}"
            )


# -- crit x: the explorers, printed as crit 4.2 prints them (crit/crit/__main__.py) ---------


def _x_ps(s: ImageSet, d: str) -> list[str]:
    out = [f"{'PID':>7}{'PGID':>7}{'SID':>7}   COMM"]

    def walk(n: dict[str, Any], depth: int) -> None:
        out.append(f"{n['pid']:7d}{n['pgid']:7d}{n['sid']:7d}   {' ' * 4 * depth}{n['comm']}")
        for c in n["children"]:
            walk(c, depth + 1)

    walk(_tree(s), 0)
    return out


def _x_fds(s: ImageSet, d: str) -> list[str]:
    from dumper.images import fds

    names = fds.file_names(d)
    out = []
    for t in s.tasks.values():
        tf = fds.task_files(d, t.pid)
        out.append(f"{t.pid}")
        out += [f"\t{f.fd:7d}: {fds.describe(names, f.type, f.id)}" for f in tf.fds]
        if tf.cwd_id is not None:
            out.append(f"\t{'cwd':>7}: {fds.describe(names, 'REG', tf.cwd_id)}")
            out.append(f"\t{'root':>7}: {fds.describe(names, 'REG', tf.root_id or 0)}")
    return out


def _crit_file(v: Vma) -> str:
    return v.path or "unknown path"


def _x_mems(s: ImageSet, d: str) -> list[str]:
    ids: dict[int, int] = {}  # crit numbers shared objects by first appearance
    out = []
    for t in s.tasks.values():
        out += [f"{t.pid}", f"\t{'exe':<36}    {t.exe or 'unknown path'}"]
        for v in t.vmas:
            st = v.status
            if st & F.VMA_AREA_SYSVIPC:
                fn = f" ips[{ids.setdefault(v.shmid, len(ids) + 1):x}]"
            elif st & F.VMA_ANON_SHARED:
                fn = f" shmem[{ids.setdefault(v.shmid, len(ids) + 1):x}]"
            elif st & F.VMA_AREA_SOCKET:
                fn = f" packet[{ids.setdefault(v.shmid, len(ids) + 1):x}]"
            elif st & (F.VMA_FILE_PRIVATE | F.VMA_FILE_SHARED):
                fn = " " + _crit_file(v) + (f" + {v.pgoff:#x}" if v.pgoff else "")
                fn += " (s)" if st & F.VMA_FILE_SHARED else ""
            elif st & F.VMA_AREA_STACK:
                fn = " [stack]"
            elif st & F.VMA_AREA_VSYSCALL:
                fn = " [vsyscall]"
            elif st & F.VMA_AREA_VDSO:
                fn = " [vdso]"
            elif v.flags & 0x0100:  # MAP_GROWSDOWN
                fn = " [stack?]"
            else:
                fn = ""
            if not st & F.VMA_AREA_REGULAR:
                fn += " *"
            prot = "".join(c if v.prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
            out.append(f"\t{f'{v.start:08x}-{v.end:08x}':<36}{prot}{fn}")
    return out


def _x_rss(s: ImageSet, d: str) -> list[str]:
    out = []
    for t in s.tasks.values():
        out.append(f"{t.pid}")
        vmas, vmi, pvmi = t.vmas, 0, -1
        for pm in t.pagemap:
            pstr = f"\t{pm.vaddr:x} / {pm.nr_pages:<8d}"
            while vmi < len(vmas) and vmas[vmi].end <= pm.vaddr:
                vmi += 1
            pme = pm.vaddr + (pm.nr_pages << 12)
            vstr = ""
            while vmi < len(vmas) and vmas[vmi].start < pme:
                v = vmas[vmi]
                if vmi == pvmi:
                    vstr += " ~"
                else:
                    vstr += f" {v.start:08x} / {(v.end - v.start) >> 12:<8d}"
                    if v.status & (F.VMA_FILE_PRIVATE | F.VMA_FILE_SHARED):
                        vstr += " " + _crit_file(v)
                    pvmi = vmi
                vstr += "\n\t" + " " * 23
                vmi += 1
            vmi -= 1
            out.append(f"{pstr:<24}{vstr}")
    return out


EXPLORERS = {"ps": _x_ps, "fds": _x_fds, "mems": _x_mems, "rss": _x_rss}


@inspect.command("x")
@click.argument("dir")
@click.argument("what", type=click.Choice(list(EXPLORERS)))
@_errors
def explore_cmd(dir: str, what: str) -> None:
    """crit's explorers on image set DIR: ps (the tree), fds (each task's descriptors, cwd
    and root, from ids/fdinfo/fs/files images), mems (VMAs, files and exe), rss (pagemap
    runs beside their VMAs), printed as `crit x DIR WHAT` prints them."""
    with _open(dir, verify=False) as s:
        lines = EXPLORERS[what](s, dir)
    for line in lines:
        click.echo(line)


def _hexdump(data: bytes, base: int) -> list[str]:
    """hexdump -C style, repeated lines folded into `*`."""
    lines, prev, folded = [], None, False
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        if row == prev:
            if not folded:
                lines.append("*")
                folded = True
            continue
        prev, folded = row, False
        hexes = " ".join(f"{b:02x}" for b in row[:8]) + "  " + " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{base + i:012x}  {hexes:<49} |{text}|")
    lines.append(f"{base + len(data):012x}")
    return lines


@inspect.command()
@click.argument("dir")
@click.option("--pid", type=int, required=True, help="The task (its pid in the set).")
@click.option("--addr", required=True, help="address in the task (hex with 0x, or decimal)")
@json_option
@_errors
def pages(dir: str, pid: int, addr: str, as_json: bool) -> None:
    """Hexdump of the page of task PID at ADDR, and where the set holds it (exit 2 when no
    VMA of the task covers ADDR)."""
    try:
        a = int(addr, 0)
    except ValueError:
        raise click.BadParameter(f"{addr!r} is not a number", param_hint="--addr") from None
    with _open(dir, verify=False) as s:
        if pid not in s.tasks:
            raise ImageError(dir, f"no task {pid} in the set")
        look = s.read_page(pid, a)
    if look.source == "unmapped":
        _fail(f"{dir}: task {pid} has no VMA at {a:#x}; `dumper inspect mems {dir}` lists them")
    page = a - a % PAGE_SIZE
    where = {
        "cow": f"shared copy-on-write with task {look.pid} at {look.addr:#x}",
        "shared": f"page {look.addr:#x} of shared object {look.obj}",
        "hole": "a hole of its shared object: reads zeros",
        "none": "not dumped: reads zeros",
        "parent": "in the parent image set (PE_PARENT)",
        "lazy": "left to lazy restore (PE_LAZY)",
        "unmapped": "not mapped",
    }.get(look.source, f"in its own pages (pages-{s.tasks[pid].pages_id}.img)")
    if as_json:
        return _emit_json(
            {
                "pid": pid,
                "addr": page,
                "source": look.source,
                "holder_pid": look.pid,
                "holder_addr": look.addr,
                "object": look.obj,
                "data": look.data.hex() if look.data is not None else None,
            }
        )
    click.echo(f"task {pid} page {page:#x}: {where}")
    if look.data is not None:
        for line in _hexdump(look.data, page):
            click.echo(line)


@inspect.command("diff")
@click.argument("dir1")
@click.argument("dir2")
@json_option
@verify_option
@_errors
def diff_cmd(dir1: str, dir2: str, as_json: bool, no_verify: bool) -> None:
    """Page by page: what set DIR1 (A) holds that DIR2 (B) lacks or holds differently, and
    the reverse. Exit status 1 when they differ."""
    from dumper.images.diff import DIFFERS, ONLY_A, ONLY_B, diff

    what = {ONLY_A: "only in A", ONLY_B: "only in B", DIFFERS: "differs"}
    with _open(dir1, not no_verify) as a, _open(dir2, not no_verify) as b:
        d = diff(a, b)
    if as_json:
        _emit_json(d.to_json())
    else:
        for label, ids in (
            ("tasks only in A", d.tasks_only_a),
            ("tasks only in B", d.tasks_only_b),
            ("objects only in A", d.objects_only_a),
            ("objects only in B", d.objects_only_b),
        ):
            if ids:
                click.echo(f"{label}: {' '.join(map(str, ids))}")
        for sec in d.sections:
            for r in sec.ranges:
                end = r.start + r.pages * PAGE_SIZE
                zero = ", zeros" if r.zero else ""
                n = f"{r.pages} page{'s' if r.pages != 1 else ''}"
                click.echo(
                    f"{sec.kind} {sec.id}: {what[r.what]}: {r.start:#x}-{end:#x} ({n}{zero})"
                )
        click.echo(
            f"{d.count(ONLY_A)} pages only in A, {d.count(ONLY_B)} only in B, "
            f"{d.count(DIFFERS)} differ, {d.same} same"
        )
    if not d.empty:
        raise click.exceptions.Exit(1)


if __name__ == "__main__":
    inspect(prog_name="python -m dumper.inspect")
