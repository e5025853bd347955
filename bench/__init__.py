"""Benchmarks: `make bench` runs them all and prints Markdown for BENCH.md."""
