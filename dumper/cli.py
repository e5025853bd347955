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
        from dumper.model import ModelError
        from dumper.restore import RestoreError
        from dumper.scenarios.format import ScenarioError

        try:
            return fn(*args, **kwargs)
        except (ImageError, ScenarioError, DumpError, RestoreError, ModelError) as e:
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
def demo() -> None:
    """Run the thread's scenarios on the embedded model and show what a dumper sees."""
    from dumper.demo import run_demo

    run_demo()


STRATEGY = click.Choice(["auto", "pagemap", "mincore-or", "mincore-and", "lseek", "all"])


@main.command()
@click.option("--scenario", "scenario", metavar="NAME|FILE",
              help="Build this scenario on the model and dump it at its dump line.")
@click.option("--kernel", "kernel", default="linux-6.18", show_default=True,
              metavar="PROFILE|FILE", help="Kernel behaviour profile of the model.")
@click.option("--strategy", type=STRATEGY, default="auto", show_default=True)
@click.option("--compress", type=click.Choice(["zstd"]), default=None,
              help="Write pages as zstd frames (raw by default, as crit expects).")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(0, 64), default=0, show_default=True)
@click.option("-o", "--output", "out", required=True, metavar="DIR", help="Image set to write.")
@click.option("--force", is_flag=True, help="Replace an existing image set.")
@user_errors
def dump(scenario: str | None, kernel: str, strategy: str, compress: str | None, level: int,
         threads: int, out: str, force: bool) -> None:
    """Dump a process tree into a CRIU-format image set."""
    from dumper.dump import dump as do_dump
    from dumper.model.host import ModelHost
    from dumper.model.kernels import load_profile
    from dumper.scenarios.check import resolve
    from dumper.scenarios.run import build

    if scenario is None:
        fail("dump needs --scenario (the model) — live dumps come with --pid")
    if os.path.lexists(out) and not force:
        fail(f"{out}: exists; pass --force to replace it")
    profile = load_profile(kernel)
    sc = resolve(scenario)
    progress(f"building {sc.name} on the {profile.name} model")
    world = build(sc, profile)
    summary = do_dump(ModelHost(world.model), world.pids[sc.dump_root], out, strategy,
                      profile=profile.name, compress=compress, level=level, threads=threads,
                      force=force, warn=lambda m: click.echo(f"dumper: warning: {m}", err=True))
    click.echo(summary.line())


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
        fail(f"{path}: not a model image set (restore on Linux is not supported); "
             "inspect it with `dumper inspect`")
    target = ModelTarget(Model(load_profile(meta.profile)))
    summary = restore(images, target)
    return images, target, summary


@main.command()
@click.argument("directory", metavar="DIR")
@click.option("--verify", "do_verify", is_flag=True, help="Verify that no byte was lost.")
@user_errors
def restore(directory: str, do_verify: bool) -> None:
    """Restore an image set into a fresh model of the kernel it was dumped from."""
    images, target, summary = _restore_model(directory)
    with images:
        click.echo(summary.line())
        if do_verify:
            _verify_report(images, target)


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
            with host.freeze([t.pid for t in host.tasks(pid)]):
                _verify_report(images, host, show)
        return
    images, target, _ = _restore_model(directory)
    with images:
        _verify_report(images, target, show)


def _verify_report(images, host, show: int = 20) -> None:
    from dumper.verify import verify as do_verify

    report = do_verify(images, host)
    for lost in report.lost[:show]:
        click.echo(f"  lost: {lost.describe()}")
    if len(report.lost) > show:
        click.echo(f"  ... and {len(report.lost) - show} more")
    click.echo(report.line())
    if not report.ok:
        sys.exit(1)


def _register() -> None:
    from dumper.inspect import inspect

    main.add_command(inspect)


_register()
