"""Benchmarks against real servers: `meter bench <name>` (see `meter.bench.command`)."""
