"""`meter bench engine|pipeline|quota|reports|scale`: one subcommand per benchmark module.

Each module offers `configure(parser) -> handler`, like every other subcommand of `meter.cli`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, cast

from meter.settings import Settings

if TYPE_CHECKING:
    from meter.cli import Configure, Handler

BENCHES = {
    "engine": ("meter.bench.engine", "the credit engine's Lua scripts against Redis"),
    "pipeline": ("meter.bench.pipeline", "settle throughput and lag, Kafka -> Redis -> PostgreSQL"),
    "quota": ("meter.bench.quota", "quota checks over HTTP: throughput and latency"),
    "reports": ("meter.bench.reports", "report reads and the CSV export at 10M events"),
    "scale": ("meter.bench.scale", "settle throughput with 1, 2, 4 consumer processes"),
}


def configure(parser: argparse.ArgumentParser) -> Handler:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    handlers: dict[str, Handler] = {}
    for name, (module, help_text) in BENCHES.items():
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        configure_bench = cast("Configure", importlib.import_module(module).configure)
        handlers[name] = configure_bench(bench_parser)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        return await handlers[args.bench](args, settings)

    return handle
