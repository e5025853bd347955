"""The `dumper` command line (click)."""

from __future__ import annotations

import click

from dumper import __version__


@click.group()
@click.version_option(__version__, prog_name="dumper")
def main() -> None:
    """A CRIU-like checkpoint/restore memory dumper, with an executable model of Linux mm."""
