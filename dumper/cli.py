"""The `dumper` command line (click)."""

from __future__ import annotations

import click

from dumper import __version__


@click.group()
@click.version_option(__version__, prog_name="dumper")
def main() -> None:
    """A CRIU-like checkpoint/restore memory dumper, with an executable model of Linux mm."""


@main.command()
def demo() -> None:
    """Run the thread's scenarios on the embedded model and show what a dumper sees."""
    from dumper.demo import run_demo

    run_demo()
