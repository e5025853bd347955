"""dumper: a CRIU-like checkpoint/restore memory dumper."""

__version__ = "0.1.0"
