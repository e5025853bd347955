"""Tests of dumper.linux against the running kernel (root; CI runs them)."""
