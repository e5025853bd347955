"""The `dumper` command line (click).

Every user error — a malformed image, a bad scenario line, a pid that is gone, a missing
permission, click's own usage errors — ends as one line `dumper: error: ...` and exit
status 2, never a traceback. Data loss found by verify is exit status 1; `check` exits 3
when the kernel lacks what a dump needs; a closed stdout ends quietly with 141.
"""

from __future__ import annotations

from dumper import interrupts  # first: signals during start-up exit cleanly (see there)

# isort: split
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from dumper import __version__


def fail(message: str) -> None:
    click.echo(f"dumper: error: {message}", err=True)
    raise click.exceptions.Exit(2)


# The project's error types, by module: a module that is not loaded raised none of them, so
# mapping errors imports nothing (start-up).
USER_ERRORS = {
    "dumper.dump": ("DumpError",), "dumper.images.errors": ("ImageError",),
    "dumper.images.writer": ("ImageSetExists",),
    "dumper.linux.errors": ("ProcError", "UnreadableMemory", "Unsupported"),
    "dumper.model": ("ModelError",), "dumper.restore": ("RestoreError",),
    "dumper.scenarios.format": ("ScenarioError",),
}


def _user_error_types() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], n) for m, names in USER_ERRORS.items()
                 if m in sys.modules for n in names)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's error types (and OS errors) to `dumper: error: ...`, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # stdout's reader went away: silent (run_standalone)
        except Exception as e:
            if isinstance(e, (*_user_error_types(), ValueError)):
                fail(str(e))
            if isinstance(e, OSError):
                fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
            raise

    return wrapper


def progress(msg: str) -> None:
    click.echo(msg, err=True)


EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left


def run_standalone(invoke: Callable[[], Any]) -> None:
    """Click's standalone mode, with dumper's habits: a usage error is one line
    `dumper: error: ...` (exit 2), and a closed stdout (`dumper ... | head`) ends quietly."""
    try:
        rv = invoke()
        sys.stdout.flush()
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "dumper"
        msg = e.format_message().replace("\n", " ")
        click.echo(f"dumper: error: {msg} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"dumper: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_PIPE)
    except SystemExit as e:
        # click ends a write to a closed pipe itself (wrapping stdout to pacify its last
        # flush) with status 1, which is dumper's "data lost"
        if e.code == 1 and type(sys.stdout).__name__.endswith("PacifyFlushWrapper"):
            sys.exit(EXIT_PIPE)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


def criu_verbosity(args: list[str]) -> list[str]:
    """criu's numeric -vN (-v4) as dumper's counted -v (-vvvv); everything after a bare
    "--" is left alone."""
    out = []
    for i, a in enumerate(args):
        if a == "--":
            return out + args[i:]
        out.append("-" + "v" * int(a[2:]) if a[:2] == "-v" and a[2:].isdigit() else a)
    return out


class DumperGroup(click.Group):
    """The top-level group: run with SIGINT/SIGTERM handled (dumper.interrupts), and
    standalone runs through run_standalone."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra: Any) -> Any:
        args = criu_verbosity(sys.argv[1:] if args is None else list(args))
        with interrupts.handled():
            if not standalone_mode:
                return super().main(args, prog_name, complete_var, False, **extra)
            return run_standalone(lambda: super(DumperGroup, self).main(
                args, prog_name, complete_var, False, **extra))


CONTEXT = {"max_content_width": 100, "help_option_names": ["-h", "--help"]}


@click.group(cls=DumperGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="dumper")
def main() -> None:
    """A CRIU-like checkpoint/restore memory dumper, with an executable model of Linux mm."""


@main.command(short_help="Replay the thread's scenario library on the model: the matrix "
              "and an HTML report.")
@click.option("-o", "--output", "out", default="out/replay.html", show_default=True,
              metavar="FILE", help="Where to write the HTML report.")
@user_errors
def demo(out: str) -> None:
    """Replay the thread's scenario library on the embedded model: the matrix and a report."""
    from dumper.demo import run_demo

    sys.exit(run_demo(out))


STRATEGY = click.Choice(["auto", "pagemap", "mincore-or", "mincore-and", "lseek", "all"])
STRATEGY_HELP = ("How shared pages are found: lseek (SEEK_DATA on the object), pagemap / "
                 "mincore-or / mincore-and (the thread's flawed views), all (every page), "
                 "auto (lseek where it works).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout instead of text.")
quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="No progress on stderr (shown only when it is a terminal).")


class Log:
    """Warnings and (with -v) phases on stderr, and everything in --log-file as well."""

    def __init__(self, verbose: int = 0, path: str | None = None) -> None:
        self.verbose = verbose
        self.file = open(path, "a") if path else None  # noqa: SIM115 (closed by close())

    def __call__(self, msg: str, level: int = 0) -> None:
        if level <= self.verbose:
            click.echo(f"dumper: {msg}", err=True)
        if self.file is not None:
            self.file.write(f"{msg}\n")
            self.file.flush()

    def warn(self, msg: str) -> None:
        self(f"warning: {msg}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _usable_output(out: str, force: bool) -> bool:
    """May the set go to out: new, --force, or an existing empty directory (criu's -D)."""
    if not os.path.lexists(out) or force:
        return force
    if os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out):
        return True  # nothing to lose: replace the empty directory
    fail(f"{out}: exists; pass --force to replace it")
    return False


def _live_checks(pid: int, tree: bool, log: Log) -> None:
    from dumper.linux import procfs
    from dumper.linux.target import refusal

    why = refusal(pid)
    if why:
        fail(why)
    if not tree:
        try:
            kids = procfs.children(pid)
        except Exception:  # the dump itself reports a pid it cannot read
            kids = []
        if kids:
            n = f"{len(kids)} child{'ren' if len(kids) != 1 else ''}"
            log.warn(f"pid {pid} has {n} ({', '.join(map(str, kids[:8]))}"
                     f"{', ...' if len(kids) > 8 else ''}) that this dump leaves out; "
                     "pass --tree (or criu's -t PID) to dump the whole tree")


def _summary_json(summary: Any) -> dict[str, Any]:
    import dataclasses

    return {"summary": summary.line(), **dataclasses.asdict(summary)}


def _emit_json(doc: Any) -> None:
    import json

    click.echo(json.dumps(doc, indent=2))


@main.command(short_help="Dump a live process tree (--pid/-t) or a model scenario into "
              "a CRIU-format image set.")
@click.option("--scenario", "scenario", metavar="NAME|FILE",
              help="Build this scenario on the model and dump it at its dump line.")
@click.option("--pid", type=int, default=None,
              help="Dump this live process (and, with --tree, its descendants).")
@click.option("-t", "--tree-pid", "tree_pid", type=int, default=None, metavar="PID",
              help="criu's spelling: the whole tree under PID (--pid PID --tree).")
@click.option("--tree", is_flag=True, help="With --pid: the whole tree under it.")
@click.option("--leave-stopped", is_flag=True, help="With --pid: leave the tree stopped.")
@click.option("--leave-out", "leave_out", multiple=True, metavar="KIND",
              help="With --pid: leave descriptors of this kind (socket, eventfd, tty, ...; "
              "'any' for every kind dumper cannot dump yet) out of the set instead of "
              "refusing; a restore has them closed.")
@click.option("--for-criu", is_flag=True,
              help="With --pid: write what CRIU 4.2's restore needs beyond dumper's own "
              "format: COW-shared pages in every task's pagemap (CRIU reads no cow-PID.img; "
              "by default they are stored once) and each task's whole [vdso].")
@click.option("--leave-running", is_flag=True,
              help="criu's option: the tree runs on after the dump (dumper's default).")
@click.option("--shell-job", is_flag=True,
              help="criu's option, accepted: a tree on a terminal or in a shell's session is "
              "recorded as it is (its pty as a shell job's); `restore --shell-job` takes it "
              "back into ours.")
@click.option("--truth/--no-truth", default=None,
              help="Record every page's digest (truth-PID.img). Default: on for --scenario; "
              "off for --pid, whose sets `verify --pid` checks against the live tree.")
@click.option("--kernel", "kernel", default=None, metavar="PROFILE|FILE",
              help="Kernel behaviour profile of the model, with --scenario "
              "[default: linux-6.18].")
@click.option("--strategy", type=STRATEGY, default="auto", show_default=True,
              help=STRATEGY_HELP)
@click.option("--compress", type=click.Choice(["zstd"]), default=None,
              help="Write pages as zstd frames (raw by default, as crit expects).")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True,
              help="zstd compression level, with --compress zstd (higher: smaller, slower).")
@click.option("--threads", type=click.IntRange(0, 64), default=0, show_default=True,
              help="zstd worker threads, with --compress zstd; 0 compresses in the calling "
              "thread.")
@click.option("-o", "--output", "out", metavar="DIR", help="Image set to write.")
@click.option("-D", "--images-dir", "images_dir", metavar="DIR",
              help="criu's spelling of -o/--output (an existing empty directory is fine).")
@click.option("--force", is_flag=True, help="Replace an existing image set.")
@click.option("--fsync/--no-fsync", "sync", default=True, show_default=True,
              help="Write raw pages with O_DIRECT and fsync every file, so the set survives "
              "a machine crash once dump returns; --no-fsync leaves them to the page cache, "
              "as CRIU does (faster where memory has room; still renamed into place whole).")
@click.option("-v", "verbose", count=True, help="More messages on stderr (-v: the phases).")
@click.option("--log-file", metavar="FILE",
              help="Also append every message to FILE (criu's -o LOGFILE; our -o is the set).")
@json_option
@quiet_option
@user_errors
def dump(scenario: str | None, pid: int | None, tree_pid: int | None, tree: bool,
         leave_stopped: bool, leave_out: tuple[str, ...], for_criu: bool,
         leave_running: bool, shell_job: bool, truth: bool | None,
         kernel: str | None, strategy: str, compress: str | None, level: int, threads: int,
         out: str | None, images_dir: str | None, force: bool, sync: bool, verbose: int,
         log_file: str | None, as_json: bool, quiet: bool) -> None:
    """Dump a process tree into a CRIU-format image set: a scenario on the model
    (--scenario), or a live process tree (--pid, or criu's -t PID)."""
    if tree_pid is not None:
        if pid is not None and pid != tree_pid:
            fail("-t PID and --pid name different processes")
        pid, tree = tree_pid, True
    if (scenario is None) == (pid is None):
        fail("dump needs one of --scenario (the model) or --pid/-t (a live process)")
    if out is not None and images_dir is not None and out != images_dir:
        fail("-o/--output and -D/--images-dir name different directories")
    out = out or images_dir
    if leave_stopped and leave_running:
        fail("--leave-stopped and --leave-running contradict each other")
    if scenario is not None:
        bad = [o for o, v in (("--tree", tree), ("--leave-stopped", leave_stopped),
                              ("--leave-running", leave_running), ("--shell-job", shell_job))
               if v]
        if bad:
            fail(f"{', '.join(bad)}: only for a live dump (--pid), not with --scenario")
    elif kernel is not None:
        fail("--kernel is the model's kernel profile: a live dump (--pid) runs on this "
             f"kernel ({os.uname().release})")
    if out is None:
        fail("dump needs -o/--output DIR (or criu's -D/--images-dir DIR)")
    assert out is not None
    force = _usable_output(out, force)
    log = Log(verbose, log_file)
    from dumper.dump import dump as do_dump
    from dumper.progress import for_stderr

    tell = for_stderr(quiet)
    try:
        if pid is not None:
            from dumper.linux.host import LinuxHost

            _live_checks(pid, tree, log)
            record = bool(truth)
            log(f"dumping pid {pid}{' and its tree' if tree else ''} -> {out}", 1)
            host = LinuxHost(leave_stopped=leave_stopped, digest_while_reading=record)
            summary = do_dump(host, pid, out, strategy, tree=tree, truth=record,
                              profile=f"linux-{os.uname().release}", compress=compress,
                              level=level, threads=threads, force=force,
                              warn=None if quiet else log.warn, sync=sync, progress=tell,
                              leave_out=frozenset(leave_out), for_criu=for_criu)
        else:
            from dumper.model.host import ModelHost
            from dumper.model.kernels import load_profile
            from dumper.scenarios.run import build

            profile = load_profile(kernel or "linux-6.18")
            sc = _resolve(scenario)
            if not quiet and not as_json:
                progress(f"building {sc.name} on the {profile.name} model")
            world = build(sc, profile)
            summary = do_dump(ModelHost(world.model), world.pids[sc.dump_root], out, strategy,
                              profile=profile.name, compress=compress, level=level,
                              threads=threads, force=force,
                              warn=None if quiet else log.warn, sync=sync, progress=tell)
        log(summary.line(), 1)
    finally:
        log.close()
    if as_json:
        _emit_json(_summary_json(summary))
    else:
        click.echo(summary.line())
    for u in summary.unreadable:  # never stored as zeros: named, and the exit says data lost
        click.echo(f"dumper: error: {u.describe()}: not saved", err=True)
    if summary.unreadable:
        raise click.exceptions.Exit(1)


def _resolve(spec: str):
    """A scenario by file, name or number; a mistyped name suggests the closest ones."""
    import difflib

    from dumper.scenarios.check import library, resolve
    from dumper.scenarios.format import ScenarioError

    try:
        return resolve(spec)
    except ScenarioError as e:
        if e.path != spec or e.line:
            raise  # a mistake inside a scenario file
        names = [p.stem.split("-", 1)[1] for p in library() if "-" in p.stem]
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else \
            "; `dumper replay --list` lists the library"
        fail(f"{spec}: no such scenario file or library scenario{hint}")


def _restore_model(path: str, quiet: bool = True):
    from dumper.images.reader import ImageSet
    from dumper.images.validate import model_profile
    from dumper.model import Model
    from dumper.model.host import ModelTarget
    from dumper.restore import restore

    images = ImageSet.open(path)
    meta = images.meta
    if meta is None or meta.host_kind != "model":
        images.close()
        fail(f"{path}: not a model image set: a live set is verified against its tree "
             "(`dumper verify DIR --pid ROOT`, or `dumper restore DIR --verify`)")
    target = ModelTarget(Model(model_profile(images)))  # a name, never a file to run
    from dumper.progress import for_stderr

    summary = restore(images, target, progress=for_stderr(quiet))
    return images, target, summary


@main.command(short_help="Restore an image set: a model set into a fresh model, a live set "
              "as the process tree itself.")
@click.argument("directory", metavar="DIR", required=False)
@click.option("-D", "--images-dir", "images_dir", metavar="DIR",
              help="criu's spelling of the DIR argument.")
@click.option("--verify", "do_verify", is_flag=True,
              help="Verify that no byte was lost (exit 1 if any was; a live set: restored "
                   "stopped, checked, and let run only if nothing is lost, else killed).")
@click.option("-d", "--detach", "--restore-detached", "detach", is_flag=True,
              help="Linux: return once the whole tree runs (exit 0; criu's -d).")
@click.option("--pidfile", metavar="FILE", help="Linux: write the restored root's pid here "
              "(with --pidns: its pid on the host, not inside).")
@click.option("--pidns", is_flag=True,
              help="Linux: restore into a fresh pid namespace (the tree's pids inside it, "
                   "its root the child of a minimal init that exits with the root's status).")
@click.option("--leave-stopped", is_flag=True, help="Linux: leave the tree stopped (SIGSTOP).")
@click.option("--shell-job", is_flag=True,
              help="Linux: the tree's session/group outside it becomes ours (as criu's).")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True,
              help="With --verify: how many lost pages to list (--json lists all).")
@click.option("-v", "verbose", count=True, help="More messages on stderr (criu's -v).")
@click.option("--log-file", metavar="FILE",
              help="Also append every message to FILE (criu's -o LOGFILE).")
@json_option
@quiet_option
@user_errors
def restore(directory: str | None, images_dir: str | None, do_verify: bool, detach: bool,
            pidfile: str | None, pidns: bool, leave_stopped: bool, shell_job: bool, show: int,
            verbose: int, log_file: str | None, as_json: bool, quiet: bool) -> None:
    """Restore an image set: a model set into a fresh model of the kernel it was dumped
    from; a live set (dumper's or CRIU 4.2's) as the process tree itself, with its pids.

    On Linux, without -d the command waits for the restored root and exits with the
    root's exit status (128+N if signal N killed it), as criu restore does; with -d it
    exits 0 once the tree runs. dumper's own errors exit 2 (`dumper: error: ...`)."""
    import dataclasses

    from dumper.images.reader import ImageSet

    if directory is not None and images_dir is not None and directory != images_dir:
        fail("DIR and -D/--images-dir name different directories")
    directory = directory or images_dir
    if directory is None:
        fail("restore needs DIR (or criu's -D/--images-dir DIR)")
    assert directory is not None
    with ImageSet.open(directory, verify=False) as probe:  # the set is verified once, below
        live = probe.meta is None or probe.meta.host_kind != "model"
    if live:
        log = Log(verbose, log_file)
        try:
            _restore_live(directory, do_verify, detach, pidfile, leave_stopped, shell_job,
                          pidns, log)
        finally:
            log.close()
        return
    bad = [o for o, v in (("--pidns", pidns), ("-d/--detach", detach),
                          ("--pidfile", pidfile), ("--leave-stopped", leave_stopped),
                          ("--shell-job", shell_job)) if v]
    if bad:
        fail(f"{directory}: {', '.join(bad)}: only for a live set; a model set is restored "
             "into a fresh model, not as processes")
    images, target, summary = _restore_model(directory, quiet)
    with images:
        doc = {"restore": {"summary": summary.line(), **dataclasses.asdict(summary)}}
        if not as_json:
            click.echo(summary.line())
        if do_verify:
            _verify_report(images, target, show, as_json=as_json, quiet=quiet, doc=doc)
        elif as_json:
            _emit_json(doc)


def _restore_live(directory: str, do_verify: bool, detach: bool, pidfile: str | None,
                  leave_stopped: bool, shell_job: bool, pidns: bool = False,
                  log: Log | None = None) -> None:
    """restore() into LinuxTarget; --verify checks the stopped tree before it runs."""
    def tell(msg: str) -> None:  # stderr, and the --log-file
        progress(msg)
        if log is not None and log.file is not None:
            log.file.write(f"{msg}\n")
            log.file.flush()

    from dumper.images.reader import ImageSet
    from dumper.linux.rst_target import LinuxTarget
    from dumper.restore import restore as do_restore
    from dumper.restore_state import read_state

    with ImageSet.open(directory, check_later=True) as images:
        states = read_state(images)
        target = LinuxTarget(images, states, shell_job, pidns)
        summary = do_restore(images, target, states)
        for note in target.notes:
            tell(f"dumper: warning: {note}")
        if do_verify:
            from dumper.linux.host import LinuxHost
            from dumper.verify import verify_live

            try:
                report = verify_live(images, LinuxHost(), pid_map=target.host)
            except BaseException:
                target.abort()
                raise
            if not report.ok:
                target.abort()
                for lost in report.lost[:20]:
                    click.echo(f"  lost: {lost.describe()}")
                click.echo(f"{report.line()}; the restored tree was killed")
                sys.exit(1)
            tell(report.line())
        if pidfile:
            try:
                with open(pidfile, "w") as f:
                    f.write(f"{target.host[images.root]}\n")
            except OSError as e:
                target.abort()
                fail(f"--pidfile {pidfile}: {e.strerror}; the restored tree was killed")
        target.finish(stopped=leave_stopped)
        tell(summary.line())
        root = target.waited()
    if detach:
        return
    _, status = os.waitpid(root, 0)
    sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


@main.command(short_help="Verify an image set: restored (model) or against a live tree "
              "(--pid).")
@click.argument("directory", metavar="DIR")
@click.option("--pid", type=int, default=None,
              help="Compare a live set with this live (frozen) tree it was dumped from.")
@click.option("--show", type=int, default=20, show_default=True,
              help="How many lost pages to list (--json lists all).")
@json_option
@quiet_option
@user_errors
def verify(directory: str, pid: int | None, show: int, as_json: bool, quiet: bool) -> None:
    """Verify an image set: a model set is restored into a fresh model and compared with its
    truth; a live set (dumped with --pid) is compared with the live tree (--pid PID).
    Exit status 1 when a page is lost."""
    from dumper.images.reader import ImageSet

    if pid is not None:
        from dumper.linux.host import LinuxHost

        with ImageSet.open(directory) as images:
            host = LinuxHost()
            pid_map = _ns_pids(pid, images.root) if pid not in images.tasks else None
            if pid not in images.tasks and pid_map is None:
                fail(f"{directory}: holds no task {pid} (tasks: "
                     f"{', '.join(map(str, images.tasks))})")
            pids = list(pid_map.values()) if pid_map else list(images.tasks)
            with host.freeze(pids):
                _verify_report(images, host, show, live=True, as_json=as_json, quiet=quiet,
                               pid_map=pid_map)
        return
    with ImageSet.open(directory, verify=False) as probe:
        meta = probe.meta
        if meta is not None and meta.host_kind != "model":
            fail(f"{directory}: a live set (dumped from pid {probe.root}) is verified against "
                 f"the live tree: pass --pid {probe.root} while it still runs unchanged")
    images, target, _ = _restore_model(directory, quiet)
    with images:
        _verify_report(images, target, show, as_json=as_json, quiet=quiet)


def _lost_json(p: Any) -> dict[str, Any]:
    return {"pid": p.pid, "addr": p.addr, "object": p.shmid, "offset": p.offset,
            "expected": f"{p.expected:016x}",
            "found": None if p.found is None else f"{p.found:016x}"}


def _ns_pids(pid: int, root: int) -> dict[int, int] | None:
    """A tree restored with --pidns: pid (as we see it) is the set's root inside a child pid
    namespace (the last NSpid is root); its tree's pids there -> ours, or None."""
    def nspid(p: int) -> int | None:
        try:
            with open(f"/proc/{p}/status") as f:
                line = next((x for x in f if x.startswith("NSpid:")), "")
        except OSError:
            return None
        ids = line.split()[1:]
        return int(ids[-1]) if len(ids) > 1 else None

    if nspid(pid) != root:
        return None
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        inner = nspid(p)
        if inner is None:
            continue
        out[inner] = p
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _verify_report(images, host, show: int = 20, live: bool = False, as_json: bool = False,
                   quiet: bool = False, doc: dict[str, Any] | None = None,
                   pid_map: dict[int, int] | None = None) -> None:
    from dumper.progress import for_stderr
    from dumper.verify import verify as do_verify
    from dumper.verify import verify_live

    tell = for_stderr(quiet)
    report = verify_live(images, host, pid_map=pid_map, progress=tell) if live else \
        do_verify(images, host, progress=tell)
    if as_json:
        _emit_json({**(doc or {}), "verify": {
            "summary": report.line(), "ok": report.ok, "pages_checked": report.pages_checked,
            "private_lost": report.private_lost, "shared_lost": report.shared_lost,
            "rseq_only": report.rseq_only, "lost": [_lost_json(p) for p in report.lost]}})
    else:
        for lost in report.lost[:show]:
            click.echo(f"  lost: {lost.describe()}")
        if len(report.lost) > show:
            click.echo(f"  ... and {len(report.lost) - show} more")
        click.echo(report.line())
    if not report.ok:
        sys.exit(1)


def _profiles(kernels: tuple[str, ...]):
    from dumper.model.kernels import PROFILES, load_profile

    return [load_profile(k) for k in kernels] if kernels else list(PROFILES.values())


@main.command(short_help="Replay scenarios under every kernel profile and strategy; check "
              "their expectations.")
@click.argument("scenarios", nargs=-1, metavar="[FILES|NAMES]...")
@click.option("--all", "all_", is_flag=True, help="The whole library (the default).")
@click.option("--list", "list_", is_flag=True,
              help="List the library's scenarios with their one-line descriptions, and exit.")
@click.option("--kernel", "kernels", multiple=True, metavar="PROFILE|FILE",
              help="Kernel profiles to replay under (repeatable; default: all built-in).")
@click.option("--strategy", "strategies", multiple=True, type=STRATEGY,
              help="Strategies to replay (repeatable; default: all).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "html"]), default="table",
              show_default=True, help="The report: a text table, JSON, or an HTML page.")
@click.option("-o", "--output", "out", metavar="FILE", help="Write the report here.")
@quiet_option
@user_errors
def replay(scenarios: tuple[str, ...], all_: bool, list_: bool, kernels: tuple[str, ...],
           strategies: tuple[str, ...], fmt: str, out: str | None, quiet: bool) -> None:
    """Replay scenarios under every kernel profile and strategy; check every expectation.

    Exit status 1 if an expectation fails (each named with its file and line)."""
    from dumper.scenarios import replay as rp
    from dumper.scenarios.check import library
    from dumper.scenarios.format import load
    from dumper.select import STRATEGIES

    if list_:
        for p in library():
            sc = load(p)
            num = p.stem.split("-", 1)[0]
            click.echo(f"{num:>4}  {sc.name:<38} {_describe(sc)}")
        return
    scs = [_resolve(x) for x in scenarios] if scenarios and not all_ else \
        [load(p) for p in library()]
    r = rp.replay(scs, _profiles(kernels), list(strategies) or list(STRATEGIES),
                  pictures=fmt == "html", progress=None if quiet else progress)
    from dumper.scenarios.report import format_html

    text = {"table": rp.format_table, "json": rp.format_json, "html": format_html}[fmt](r)
    _emit(text, out)
    for f in r.failures:
        click.echo(f"dumper: expectation failed: {f.line_text()}", err=True)
    if r.failures:
        sys.exit(1)


def _describe(sc: Any) -> str:
    """A scenario's one line: the first sentence of its header after the title line, its
    thread citations left out (`replay --list`)."""
    import re

    lines = [x for x in sc.header.splitlines() if x.strip()]
    text = re.sub(r"\s*\(thread:[^)]*\)", "", " ".join(lines[1:]))
    text = re.sub(r"\s+", " ", text).strip()
    end = re.search(r"[.;](\s|$)", text[40:])
    return text[: 40 + end.start() + 1] if end else text


def _emit(text: str, out: str | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    progress(f"wrote {out}")


@main.command(short_help="Random programs under every profile and strategy: the smallest "
              "that loses data.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random programs (the same seed, the same programs).")
@click.option("--count", type=click.IntRange(1), default=50, show_default=True,
              help="Random programs to try.")
@click.option("--depth", type=click.IntRange(1, 200), default=12, show_default=True,
              help="Operations per program (with --exhaustive: the longest program).")
@click.option("--exhaustive", is_flag=True,
              help="Every program up to --depth operations over a small alphabet instead.")
@click.option("--kernel", "kernels", multiple=True, metavar="PROFILE|FILE",
              help="Kernel profiles to run under (repeatable; default: all built-in).")
@click.option("--strategy", "strategies", multiple=True, type=STRATEGY,
              help="Strategies to try (repeatable; default: all).")
@click.option("-o", "--output", "out_dir", metavar="DIR",
              help="Also write each shrunk program as DIR/explore-STRATEGY-PROFILE.scn.")
@json_option
@quiet_option
@user_errors
def explore(seed: int, count: int, depth: int, exhaustive: bool, kernels: tuple[str, ...],
            strategies: tuple[str, ...], out_dir: str | None, as_json: bool,
            quiet: bool) -> None:
    """Random programs over random trees under every profile and strategy; for each strategy
    that loses data, the smallest program that shows it. Exit 1 if auto or lseek lose."""
    from dumper.scenarios import explore as ex
    from dumper.select import STRATEGIES

    programs = ex.exhaustive_programs(depth) if exhaustive else \
        ex.random_programs(seed, count, depth)
    if not quiet and sys.stderr.isatty():
        programs = _counting(programs, None if exhaustive else count)
    result = ex.explore(programs, _profiles(kernels), list(strategies) or list(STRATEGIES))
    rate = result.programs / result.seconds if result.seconds else 0.0
    line = (f"checked {result.programs} programs ({result.runs} dumps restored and verified)"
            f" in {result.seconds:.1f} s: {rate:.1f} programs/s")
    texts = {key: ex.annotate(result.findings[key]) for key in sorted(result.findings)}
    if as_json:
        _emit_json({
            "summary": line, "programs": result.programs, "runs": result.runs,
            "seconds": result.seconds,
            "losing_programs": [{"strategy": s, "profile": p, "programs": n}
                                for (s, p), n in sorted(result.losing_programs.items())],
            "findings": [{"strategy": f.strategy, "profile": f.profile, "lost": f.lost,
                          "seed": f.seed, "program": texts[k]}
                         for k, f in sorted(result.findings.items())],
            "violations": [{"strategy": f.strategy, "profile": f.profile}
                           for f in result.violations]})
    else:
        click.echo(line)
        for (strategy, profile), n in sorted(result.losing_programs.items()):
            click.echo(f"  {strategy:12s} loses data under {profile:17s} in {n} programs")
    for key, text in texts.items():
        if not as_json:
            click.echo("\n" + text, nl=False)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            _emit(text, os.path.join(out_dir, f"explore-{key[0]}-{key[1]}.scn"))
    if result.violations:
        bad = ", ".join(f"{f.strategy} under {f.profile}" for f in result.violations)
        click.echo(f"dumper: {bad} lost data", err=True)
        sys.exit(1)


def _counting(programs: Any, total: int | None) -> Any:
    """The programs, with a bar on stderr (one step a program)."""
    with click.progressbar(programs, length=total, label="exploring", file=sys.stderr,
                           show_pos=True) as bar:
        yield from bar


# What a dump cannot do without (the rest only narrows what can be told apart):
# shared memory is read through map_files, private memory through /proc/PID/mem.
NEEDED = ("map_files", "/proc/PID/mem")
CHECK_MISSING = 3


@main.command(short_help="What this kernel offers a dumper, each feature tried, as `criu "
              "check` does.")
@json_option
@user_errors
def check(as_json: bool) -> None:
    """What this kernel offers a dumper (PAGEMAP_SCAN, map_files, swap, soft-dirty, uffd-wp
    async, guard regions, PFNs), each feature tried, as `criu check` does. Ends with a
    verdict; exit status 3 when something a dump needs is missing."""
    from dumper.linux.check import check as run_checks

    results = run_checks()
    missing = [r.feature for r in results if r.feature in NEEDED and not r.ok]
    verdict = "Looks good." if not missing else \
        f"A dump cannot work here: {', '.join(missing)} missing."
    if as_json:
        _emit_json({"checks": [r._asdict() for r in results], "needed": list(NEEDED),
                    "missing": missing, "ok": not missing, "verdict": verdict})
    else:
        for r in results:
            need = " (needed)" if r.feature in NEEDED else ""
            click.echo(f"{'ok  ' if r.ok else 'no  '} {r.feature + need:27s} {r.detail}")
        click.echo(verdict)
    if missing:
        sys.exit(CHECK_MISSING)


@main.command(short_help="Remove what killed dumps left in DIR (their temporary sets).")
@click.argument("directory", metavar="DIR")
@click.option("-n", "--dry-run", is_flag=True, help="List what would be removed.")
@user_errors
def gc(directory: str, dry_run: bool) -> None:
    """Remove the temporary directories killed dumps left in DIR (those whose owner is gone)."""
    from pathlib import Path

    from dumper.images import tempdirs

    if not os.path.isdir(directory):
        fail(f"{directory}: not a directory")
    found = tempdirs.stale(Path(directory)) if dry_run else \
        tempdirs.remove_stale(Path(directory))
    for p in found:
        click.echo(f"{'would remove' if dry_run else 'removed'} {p}")
    click.echo(f"{len(found)} stale temporary director{'y' if len(found) == 1 else 'ies'} "
               f"{'found' if dry_run else 'removed'} in {directory}")


def _register() -> None:
    from dumper.inspect import inspect

    main.add_command(inspect)


_register()


if __name__ == "__main__":
    main()
