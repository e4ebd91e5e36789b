"""Benchmarks: run from the checkout root as ``python -m benchmarks.NAME`` (see docs/benchmarks.md)."""
