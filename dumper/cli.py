"""The `dumper` command line (click).

Every user error — a malformed image, a bad scenario line, a pid that is gone, a missing
permission — ends as one line `dumper: error: ...` and exit status 2, never a traceback.
Data loss found by verify is exit status 1.
"""

from __future__ import annotations

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


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the project's error types (and OS errors) to `dumper: error: ...`, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dumper.dump import DumpError
        from dumper.images.errors import ImageError
        from dumper.images.writer import ImageSetExists
        from dumper.linux.errors import ProcError, UnreadableMemory, Unsupported
        from dumper.model import ModelError
        from dumper.restore import RestoreError
        from dumper.scenarios.format import ScenarioError

        try:
            return fn(*args, **kwargs)
        except (ImageError, ScenarioError, DumpError, RestoreError, ModelError, ProcError,
                Unsupported, UnreadableMemory) as e:
            fail(str(e))
        except ImageSetExists as e:
            fail(str(e))
        except ValueError as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")

    return wrapper


def progress(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
@click.version_option(__version__, prog_name="dumper")
def main() -> None:
    """A CRIU-like checkpoint/restore memory dumper, with an executable model of Linux mm."""


@main.command()
@click.option("-o", "--output", "out", default="out/replay.html", show_default=True,
              metavar="FILE", help="Where to write the HTML report.")
@user_errors
def demo(out: str) -> None:
    """Replay the thread's scenario library on the embedded model: the matrix and a report."""
    from dumper.demo import run_demo

    sys.exit(run_demo(out))


STRATEGY = click.Choice(["auto", "pagemap", "mincore-or", "mincore-and", "lseek", "all"])


@main.command()
@click.option("--scenario", "scenario", metavar="NAME|FILE",
              help="Build this scenario on the model and dump it at its dump line.")
@click.option("--pid", type=int, default=None,
              help="Dump this live process (and, with --tree, its descendants).")
@click.option("--tree", is_flag=True, help="With --pid: the whole tree under it.")
@click.option("--leave-stopped", is_flag=True, help="With --pid: leave the tree stopped.")
@click.option("--leave-out", "leave_out", multiple=True, metavar="KIND",
              help="With --pid: leave descriptors of this kind (socket, eventfd, tty, ...; "
              "'any' for every kind dumper cannot dump yet) out of the set instead of "
              "refusing; a restore has them closed.")
@click.option("--cow-per-task", is_flag=True,
              help="With --pid: store COW-shared pages in every task's own pagemap, as CRIU "
              "does (CRIU's restore reads no cow-PID.img); default: once, in the first task.")
@click.option("--truth/--no-truth", default=None,
              help="Record every page's digest (truth-PID.img). Default: on for --scenario; "
              "off for --pid, whose sets `verify --pid` checks against the live tree.")
@click.option("--kernel", "kernel", default="linux-6.18", show_default=True,
              metavar="PROFILE|FILE", help="Kernel behaviour profile of the model.")
@click.option("--strategy", type=STRATEGY, default="auto", show_default=True)
@click.option("--compress", type=click.Choice(["zstd"]), default=None,
              help="Write pages as zstd frames (raw by default, as crit expects).")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(0, 64), default=0, show_default=True)
@click.option("-o", "--output", "out", required=True, metavar="DIR", help="Image set to write.")
@click.option("--force", is_flag=True, help="Replace an existing image set.")
@click.option("-q", "--quiet", is_flag=True,
              help="No warnings (files referenced, not copied); errors are still printed.")
@click.option("--fsync/--no-fsync", "sync", default=True, show_default=True,
              help="Write raw pages with O_DIRECT and fsync every file, so the set survives "
              "a machine crash once dump returns; --no-fsync leaves them to the page cache, "
              "as CRIU does (faster where memory has room; still renamed into place whole).")
@user_errors
def dump(scenario: str | None, pid: int | None, tree: bool, leave_stopped: bool,
         leave_out: tuple[str, ...], cow_per_task: bool, truth: bool | None, kernel: str,
         strategy: str, compress: str | None, level: int, threads: int, out: str, force: bool,
         quiet: bool, sync: bool) -> None:
    """Dump a process tree into a CRIU-format image set: a scenario on the model
    (--scenario), or a live process tree (--pid)."""
    from dumper.dump import dump as do_dump
    from dumper.model.host import ModelHost
    from dumper.model.kernels import load_profile
    from dumper.scenarios.check import resolve
    from dumper.scenarios.run import build

    if (scenario is None) == (pid is None):
        fail("dump needs one of --scenario (the model) or --pid (a live process)")
    if os.path.lexists(out) and not force:
        fail(f"{out}: exists; pass --force to replace it")
    warn = (lambda m: None) if quiet else (  # noqa: E731
        lambda m: click.echo(f"dumper: warning: {m}", err=True))
    if pid is not None:
        from dumper.dump import dump as do_dump
        from dumper.linux.host import LinuxHost

        record = bool(truth)
        host = LinuxHost(leave_stopped=leave_stopped, digest_while_reading=record)
        summary = do_dump(host, pid, out, strategy, tree=tree, truth=record,
                          profile=f"linux-{os.uname().release}", compress=compress,
                          level=level, threads=threads, force=force, warn=warn, sync=sync,
                          leave_out=frozenset(leave_out), cow_once=not cow_per_task)
        _dump_result(summary)
        return
    profile = load_profile(kernel)
    sc = resolve(scenario)
    progress(f"building {sc.name} on the {profile.name} model")
    world = build(sc, profile)
    summary = do_dump(ModelHost(world.model), world.pids[sc.dump_root], out, strategy,
                      profile=profile.name, compress=compress, level=level, threads=threads,
                      force=force, warn=warn, sync=sync)
    _dump_result(summary)


def _dump_result(summary) -> None:
    """The summary line; pages the dump could not read are named, one line each, and the
    exit status is 1 (data lost), the set written all the same with them recorded."""
    click.echo(summary.line())
    for u in summary.unreadable:
        click.echo(f"dumper: error: {u.describe()}: not saved", err=True)
    if summary.unreadable:
        raise click.exceptions.Exit(1)


def _restore_model(path: str):
    from dumper.images.reader import ImageSet
    from dumper.model import Model
    from dumper.model.host import ModelTarget
    from dumper.model.kernels import load_profile
    from dumper.restore import restore

    images = ImageSet.open(path)
    meta = images.meta
    if meta is None or meta.host_kind != "model":
        images.close()
        fail(f"{path}: not a model image set: a live set is verified against its tree "
             "(`dumper verify DIR --pid ROOT`, or `dumper restore DIR --verify`)")
    target = ModelTarget(Model(load_profile(meta.profile)))
    summary = restore(images, target)
    return images, target, summary


@main.command()
@click.argument("directory", metavar="DIR")
@click.option("--verify", "do_verify", is_flag=True,
              help="Verify that no byte was lost (a live set: restored stopped, checked, and "
                   "let run only if nothing is lost; else killed, exit 1).")
@click.option("-d", "--detach", is_flag=True,
              help="Linux: return once the whole tree runs (exit 0).")
@click.option("--pidfile", metavar="FILE", help="Linux: write the restored root's pid here.")
@click.option("--leave-stopped", is_flag=True, help="Linux: leave the tree stopped (SIGSTOP).")
@click.option("--shell-job", is_flag=True,
              help="Linux: the tree's session/group outside it becomes ours (as criu's).")
@user_errors
def restore(directory: str, do_verify: bool, detach: bool, pidfile: str | None,
            leave_stopped: bool, shell_job: bool) -> None:
    """Restore an image set: a model set into a fresh model of the kernel it was dumped
    from; a live set (dumper's or CRIU 4.2's) as the process tree itself, with its pids.

    On Linux, without -d the command waits for the restored root and exits with the
    root's exit status (128+N if signal N killed it), as criu restore does; with -d it
    exits 0 once the tree runs. dumper's own errors exit 2 (`dumper: error: ...`)."""
    from dumper.images.reader import ImageSet

    with ImageSet.open(directory, verify=False) as probe:  # the set is verified once, below
        live = probe.meta is None or probe.meta.host_kind != "model"
    if live:
        _restore_live(directory, do_verify, detach, pidfile, leave_stopped, shell_job)
        return
    images, target, summary = _restore_model(directory)
    with images:
        click.echo(summary.line())
        if do_verify:
            _verify_report(images, target)


def _restore_live(directory: str, do_verify: bool, detach: bool, pidfile: str | None,
                  leave_stopped: bool, shell_job: bool) -> None:
    """restore() into LinuxTarget; --verify checks the stopped tree before it runs."""
    from dumper.images.reader import ImageSet
    from dumper.linux.host import LinuxHost
    from dumper.linux.rst_target import LinuxTarget
    from dumper.restore import restore as do_restore
    from dumper.restore_state import read_state
    from dumper.verify import verify_live

    with ImageSet.open(directory) as images:
        states = read_state(images)
        target = LinuxTarget(images, states, shell_job)
        summary = do_restore(images, target, states)
        for note in target.notes:
            progress(f"dumper: warning: {note}")
        if do_verify:
            try:
                report = verify_live(images, LinuxHost())
            except BaseException:
                target.abort()
                raise
            if not report.ok:
                target.abort()
                for lost in report.lost[:20]:
                    click.echo(f"  lost: {lost.describe()}")
                click.echo(f"{report.line()}; the restored tree was killed")
                sys.exit(1)
            progress(report.line())
        if pidfile:
            try:
                with open(pidfile, "w") as f:
                    f.write(f"{images.root}\n")
            except OSError:
                target.abort()
                raise
        target.finish(stopped=leave_stopped)
        progress(summary.line())
        root = images.root
    if detach:
        return
    _, status = os.waitpid(root, 0)
    sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


@main.command()
@click.argument("directory", metavar="DIR")
@click.option("--pid", type=int, default=None, help="Compare with this live (frozen) tree.")
@click.option("--show", type=int, default=20, show_default=True,
              help="How many lost pages to list.")
@user_errors
def verify(directory: str, pid: int | None, show: int) -> None:
    """Verify an image set: restored (model) or live (--pid) memory against its truth."""
    if pid is not None:
        from dumper.images.reader import ImageSet
        from dumper.linux.host import LinuxHost

        with ImageSet.open(directory) as images:
            host = LinuxHost()
            if pid not in images.tasks:
                fail(f"{directory}: holds no task {pid} (tasks: "
                     f"{', '.join(map(str, images.tasks))})")
            with host.freeze(list(images.tasks)):
                _verify_report(images, host, show, live=True)
        return
    images, target, _ = _restore_model(directory)
    with images:
        _verify_report(images, target, show)


def _verify_report(images, host, show: int = 20, live: bool = False) -> None:
    from dumper.verify import verify as do_verify
    from dumper.verify import verify_live

    report = verify_live(images, host) if live else do_verify(images, host)
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


@main.command()
@click.argument("scenarios", nargs=-1, metavar="[FILES|NAMES]...")
@click.option("--all", "all_", is_flag=True, help="The whole library (the default).")
@click.option("--kernel", "kernels", multiple=True, metavar="PROFILE|FILE",
              help="Kernel profiles to replay under (repeatable; default: all built-in).")
@click.option("--strategy", "strategies", multiple=True, type=STRATEGY,
              help="Strategies to replay (repeatable; default: all).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "html"]), default="table",
              show_default=True)
@click.option("-o", "--output", "out", metavar="FILE", help="Write the report here.")
@user_errors
def replay(scenarios: tuple[str, ...], all_: bool, kernels: tuple[str, ...],
           strategies: tuple[str, ...], fmt: str, out: str | None) -> None:
    """Replay scenarios under every kernel profile and strategy; check every expectation.

    Exit status 1 if an expectation fails (each named with its file and line)."""
    from dumper.scenarios import replay as rp
    from dumper.scenarios.check import library, resolve
    from dumper.scenarios.format import load
    from dumper.select import STRATEGIES

    scs = [resolve(x) for x in scenarios] if scenarios and not all_ else \
        [load(p) for p in library()]
    r = rp.replay(scs, _profiles(kernels), list(strategies) or list(STRATEGIES),
                  pictures=fmt == "html", progress=progress)
    text = {"table": rp.format_table, "json": rp.format_json, "html": rp.format_html}[fmt](r)
    _emit(text, out)
    for f in r.failures:
        click.echo(f"dumper: expectation failed: {f.line_text()}", err=True)
    if r.failures:
        sys.exit(1)


def _emit(text: str, out: str | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    progress(f"wrote {out}")


@main.command()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--count", type=click.IntRange(1), default=50, show_default=True,
              help="Random programs to try.")
@click.option("--depth", type=click.IntRange(1, 200), default=12, show_default=True,
              help="Operations per program (with --exhaustive: the longest program).")
@click.option("--exhaustive", is_flag=True,
              help="Every program up to --depth operations over a small alphabet instead.")
@click.option("--kernel", "kernels", multiple=True, metavar="PROFILE|FILE")
@click.option("--strategy", "strategies", multiple=True, type=STRATEGY)
@click.option("-o", "--output", "out_dir", metavar="DIR",
              help="Also write each shrunk program as DIR/explore-STRATEGY-PROFILE.scn.")
@user_errors
def explore(seed: int, count: int, depth: int, exhaustive: bool, kernels: tuple[str, ...],
            strategies: tuple[str, ...], out_dir: str | None) -> None:
    """Random programs over random trees under every profile and strategy; for each strategy
    that loses data, the smallest program that shows it. Exit 1 if auto or lseek lose."""
    from dumper.scenarios import explore as ex
    from dumper.select import STRATEGIES

    programs = ex.exhaustive_programs(depth) if exhaustive else \
        ex.random_programs(seed, count, depth)
    result = ex.explore(programs, _profiles(kernels), list(strategies) or list(STRATEGIES))
    rate = result.programs / result.seconds if result.seconds else 0.0
    click.echo(f"checked {result.programs} programs ({result.runs} dumps restored and verified)"
               f" in {result.seconds:.1f} s: {rate:.1f} programs/s")
    for (strategy, profile), n in sorted(result.losing_programs.items()):
        click.echo(f"  {strategy:12s} loses data under {profile:17s} in {n} programs")
    for key in sorted(result.findings):
        text = ex.annotate(result.findings[key])
        click.echo("\n" + text, nl=False)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            _emit(text, os.path.join(out_dir, f"explore-{key[0]}-{key[1]}.scn"))
    if result.violations:
        bad = ", ".join(f"{f.strategy} under {f.profile}" for f in result.violations)
        click.echo(f"dumper: {bad} lost data", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@user_errors
def check(as_json: bool) -> None:
    """What this kernel offers a dumper (PAGEMAP_SCAN, map_files, swap, soft-dirty, uffd-wp
    async, guard regions, PFNs), each feature tried, as `criu check` does."""
    import json

    from dumper.linux.check import check as run_checks

    results = run_checks()
    if as_json:
        click.echo(json.dumps([r._asdict() for r in results], indent=2))
        return
    for r in results:
        click.echo(f"{'ok  ' if r.ok else 'no  '} {r.feature:22s} {r.detail}")


def _register() -> None:
    from dumper.inspect import inspect

    main.add_command(inspect)


_register()


if __name__ == "__main__":
    main()
