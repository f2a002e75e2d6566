"""Quarantine: an organization whose state cannot be applied is set aside, not everyone.

A rebuild applies organizations one by one (`meter.rebuild`). When one of them fails for a reason
that is not a server being away (a value the engine refuses, a data error in PostgreSQL, a script
error, a bug), retrying cannot help and failing the whole rebuild would stop every consumer and
leave every organization unanswered. So that organization is quarantined instead:

- recorded in PostgreSQL (`quarantined_orgs`: reason code, details, since) together with an
  alert of kind `org_quarantined` in the alerts outbox, in one transaction;
- its Redis keys deleted and a marker `meter:{<org_id>}:q` set: the check and reserve scripts
  answer `org_quarantined` for an organization that has the marker and no state (the API maps it
  to 503), and the settle script refuses its events with that reason, so the consumer
  dead-letters them (`meter dlq replay --reason org_quarantined` after the release);
- left out of later rebuilds and of the reconciler until released.

Transient failures (connections, timeouts, a server shutting down or out of resources) are not
quarantined: they fail the rebuild, which is retried.

`meter quarantine list | show ORG | release ORG` inspects and releases. A release rebuilds the
organization under the rebuild lock (as `meter rebuild --org ORG`); on success the row and the
marker go, on failure both stay and the command says why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from redis.exceptions import ReadOnlyError, ResponseError

from meter.engine.types import EngineInputError
from meter.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from meter.redis_client import connect as redis_connect

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.engine.types import MemberEncoding
    from meter.settings import Settings

ORG_QUARANTINED = "org_quarantined"
"""Check reason, dead-letter reason and alert kind of a quarantined organization."""

DETAILS_MAX = 2000
"""Characters of the failure kept in `details`."""

TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""PostgreSQL error classes worth retrying: connection exceptions, transaction rollbacks
(serialization failures, deadlocks), insufficient resources, operator intervention (shutdown,
cancel), system errors."""

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    *REDIS_UNAVAILABLE,
    ReadOnlyError,
)

# -- SQL ----------------------------------------------------------------------------------------

INSERT_QUARANTINE = """
INSERT INTO quarantined_orgs (org_id, reason, details, since) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id) DO NOTHING
RETURNING since
"""
INSERT_ALERT = """
INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                    amount, reference, detail)
VALUES ($1, 'quarantine', '', $2, $2, 0, 0, 0, $3)
ON CONFLICT DO NOTHING
"""
NOTIFY_ALERTS = "SELECT pg_notify('meter_alerts', '')"
SELECT_QUARANTINED = "SELECT org_id, reason, details, since FROM quarantined_orgs ORDER BY org_id"
SELECT_QUARANTINED_ORG = (
    "SELECT org_id, reason, details, since FROM quarantined_orgs WHERE org_id = $1"
)
DELETE_QUARANTINE = "DELETE FROM quarantined_orgs WHERE org_id = $1"


def marker_key(org_id: str) -> str:
    """The Redis key saying the organization is quarantined (in the organization's slot)."""
    return f"meter:{{{org_id}}}:q"


@dataclass(frozen=True)
class Quarantine:
    """One quarantined organization: why (a stable code), what failed, and since when."""

    org_id: str
    reason: str
    details: str
    since: dt.datetime


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says a server is away or busy (retry later) rather than that the data or
    the code is wrong (retrying gives the same answer)."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in TRANSIENT_SQLSTATE_CLASSES
    return isinstance(exc, _TRANSIENT)


def reason_of(exc: BaseException) -> str:
    """The stable reason code of a failure that quarantines an organization."""
    if isinstance(exc, EngineInputError):
        return "engine_input"
    if isinstance(exc, asyncpg.PostgresError):
        return "data_error"
    if isinstance(exc, ResponseError):
        return "engine_error"
    return "error"


def details_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:DETAILS_MAX]


def _row(row: asyncpg.Record) -> Quarantine:
    return Quarantine(row["org_id"], row["reason"], row["details"], row["since"])


# -- PostgreSQL ---------------------------------------------------------------------------------


async def record(pool: asyncpg.Pool, org_id: str, reason: str, details: str) -> bool:
    """Record the quarantine and its alert (one transaction). False when the organization was
    quarantined already (its first reason and start are kept)."""
    since = dt.datetime.now(dt.UTC)
    async with pool.acquire() as conn, conn.transaction():
        started = await conn.fetchval(INSERT_QUARANTINE, org_id, reason, details, since)
        if started is None:
            return False
        await conn.execute(INSERT_ALERT, org_id, started, reason)
        await conn.execute(NOTIFY_ALERTS)
    return True


async def listing(pool: asyncpg.Pool) -> list[Quarantine]:
    """Every quarantined organization, by id."""
    return [_row(r) for r in await pool.fetch(SELECT_QUARANTINED)]


async def quarantined_ids(pool: asyncpg.Pool) -> set[str]:
    return {q.org_id for q in await listing(pool)}


async def get(pool: asyncpg.Pool, org_id: str) -> Quarantine | None:
    row = await pool.fetchrow(SELECT_QUARANTINED_ORG, org_id)
    return None if row is None else _row(row)


async def remove(pool: asyncpg.Pool, org_id: str) -> bool:
    """Delete the organization's quarantine row. False when there was none."""
    return bool(await pool.execute(DELETE_QUARANTINE, org_id) != "DELETE 0")


# -- Redis --------------------------------------------------------------------------------------


async def mark(redis: aioredis.Redis, org_id: str, reason: str) -> None:
    """Set the organization's marker (its other keys must be gone: the scripts read the marker
    only for an organization without state)."""
    await redis.set(marker_key(org_id), reason)


async def unmark(redis: aioredis.Redis, org_id: str) -> None:
    await redis.delete(marker_key(org_id))


# -- command line -------------------------------------------------------------------------------


def _show(q: Quarantine) -> str:
    return f"{q.org_id}\t{q.reason}\tsince {q.since.isoformat()}\n  {q.details}"


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter quarantine list | show ORG | release ORG`."""
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="quarantined organizations, their reason and since when")
    show = sub.add_parser("show", help="one quarantined organization: reason and details")
    show.add_argument("org")
    release = sub.add_parser(
        "release", help="rebuild the organization now; on success end its quarantine"
    )
    release.add_argument("org")

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        only = {"postgres"} if args.action != "release" else {"redis", "postgres"}
        async with provision(settings, only=only) as services:
            await migrate(services.postgres_dsn)
            if args.action == "release":
                return await _release(
                    services.postgres_dsn, services.redis_url, args.org, settings.member_encoding
                )
            pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=1)
            try:
                if args.action == "list":
                    for q in await listing(pool):
                        print(_show(q))
                    return 0
                found = await get(pool, args.org)
            finally:
                await pool.close()
        if found is None:
            print(f"meter quarantine: {args.org!r} is not quarantined", file=sys.stderr)
            return 1
        print(_show(found))
        return 0

    return handle


async def _release(dsn: str, redis_url: str, org_id: str, encoding: MemberEncoding) -> int:
    from meter.engine.redis import RedisEngine
    from meter.rebuild import release

    client = redis_connect(redis_url)
    try:
        outcome = await release(dsn, client, RedisEngine(client, encoding=encoding), org_id)
    finally:
        await client.aclose()
    if outcome is None:
        print(f"released {org_id}: rebuilt from PostgreSQL")
        return 0
    print(f"meter quarantine: {org_id} stays quarantined: {outcome}", file=sys.stderr)
    return 1
