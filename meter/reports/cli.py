"""`meter export --org ORG --period YYYY-MM-DD [--billing-group G] [--out FILE]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]

from meter.errors import MeterError
from meter.settings import Settings

if TYPE_CHECKING:
    from meter.cli import Handler


def configure_export(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("--org", required=True, help="organization id")
    parser.add_argument(
        "--period",
        default="current",
        help="'current' (default) or YYYY-MM-DD: the period starting that day, else containing it",
    )
    parser.add_argument(
        "--billing-group",
        default=None,
        help="one billing group id ('unassigned' for Unassigned); default: all groups",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="file to write (default: standard output)"
    )

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        async with provision(settings, only={"postgres"}) as services:
            pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=1)
            try:
                return await _export(pool, args)
            finally:
                await pool.close()

    return handle


async def _export(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    from meter.reports import Reports, export

    try:
        _, _, chunks = await export(Reports(pool), args.org, args.period, args.billing_group)
    except MeterError as exc:
        print(f"meter export: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    if args.out is None:
        out = sys.stdout.buffer
        async for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    partial = args.out.with_name(args.out.name + ".partial")
    try:
        with partial.open("wb") as f:
            async for chunk in chunks:
                f.write(chunk)
        os.replace(partial, args.out)
    finally:
        partial.unlink(missing_ok=True)
    return 0
