"""`meter rebuild`: reconstruct Redis from PostgreSQL, all of it or the organizations it lost
(the consumer's guard, which calls it, is `meter.recovery`).

Per organization (`rebuild_org`):

1. delete its Redis keys (`meter:{<org_id>}:*`), so what follows starts from nothing;
2. configuration and live grants: the admin reconciler (`meter.admin.reconcile_org`); then every
   grant of the snapshot the balances are read from, including those that expired within the
   org's grace window (an event of a period still open may draw from them);
3. credits left per bucket: grant amount - sum(settlement_lines) (with the sums of archived
   months' lines) + credits returned by voids;
4. counters of the current period (and of the previous one while it is in its grace window) from
   the period totals, which voids keep in step (`meter.store.record_void`): `member:<id>` all
   drawn, `member_shared:<id>` shared drawn, `group:<id>`, `drawn`, `unfunded`. The engine
   compares a member limit with one or the other by the org's limit policy;
5. `engine.restore`.

Loss detection is per organization: its state is all there iff its config hash holds `c` and
not `b` (`meter.engine.redis.org_present`), which lives in the organization's own slot, so a
Redis Cluster shard that restarts empty loses exactly the markers of the organizations it held.
Every script sees it atomically: a lost organization answers `unknown_org` while PostgreSQL knows
it. `rebuild_lost` rebuilds such organizations one at a time, each under its own lock.

Quarantine (`meter.quarantine`): an organization whose state cannot be applied (the engine
refuses a value, PostgreSQL a cast, a script fails: anything but a server being away) is
quarantined instead of failing the rebuild, which goes on with the next one. Organizations
already quarantined are left out without trying (their marker is set again) until `release`
rebuilds them. Transient errors still fail the rebuild, which is
retried.

Fencing: a settling consumer holds a shared PostgreSQL advisory lock (`meter.recovery`); an explicit
rebuild (`meter rebuild`, `release`, the reconciler's `repair`) holds it exclusively, after
taking the "rebuild wanted" lock (`WANT_KEY`) that makes consumers drain and let go at their next
guard. So no event is settled into a half-rebuilt Redis, and no batch settled before a rebuild is
still being written while it reads PostgreSQL. A void holds it shared too, from its Redis apply
until its record commits (`AdminService.void`). A consumer that meets a lost organization
finishes its own writes, then rebuilds that organization under the organization's lock
(`ORG_LOCK_CLASS`) while still holding the shared one: events are keyed by organization, so no
other consumer settles it meanwhile, and every other organization keeps settling. A consumer that
finds its lock session gone rebuilds the organizations it settled since before it was last sure
of it (a rebuild may have read PostgreSQL without their last batch).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster

from meter import quarantine
from meter.admin import queries as q
from meter.admin.clock import from_ms
from meter.admin.reconcile import apply_org
from meter.admin.service import REBUILD_LOCK_KEY, AdminService, org_config
from meter.engine.periods import period_at
from meter.engine.redis import REBUILDING, begin_rebuild, end_rebuild, org_key
from meter.engine.types import Engine, OrgConfig, Period
from meter.plans.store import grant_of
from meter.redis_client import connect as redis_connect

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.settings import Settings

log = structlog.get_logger("meter.rebuild")

LOCK_KEY = REBUILD_LOCK_KEY
"""pg_advisory_lock key: settling and voids hold it shared, rebuilding exclusively."""

LOCK_PROBE_TIMEOUT_S = 5.0
"""How long a lock session (`meter.recovery.Recovery`'s, a rebuild's) may take to answer before
it is taken for lost."""

# -- SQL ----------------------------------------------------------------------------------------

# Grants an event may still draw from: live, or expired within the org's grace window (the
# reconciler puts only live ones).
SELECT_DRAWABLE_GRANTS = """
SELECT * FROM credit_grants WHERE org_id = $1 AND expires_at > $2 ORDER BY granted_at, bucket_id
"""

SELECT_LEFT = """
WITH drawn AS (
    SELECT bucket_id, sum(amount) AS amount FROM (
        SELECT bucket_id, amount FROM settlement_lines WHERE org_id = $1
        UNION ALL  -- lines of archived months (meter/archive.py)
        SELECT bucket_id, drawn FROM archived_bucket_drawn WHERE org_id = $1
    ) AS d GROUP BY bucket_id
), returned AS (
    SELECT r.item->>'bucket_id' AS bucket_id, sum((r.item->>'amount')::bigint) AS amount
    FROM voids v, jsonb_array_elements(v.returned) AS r(item)
    WHERE v.org_id = $1 AND v.voided GROUP BY 1
)
SELECT g.bucket_id, (CASE WHEN g.revoked_at IS NULL
    THEN g.amount - coalesce(d.amount, 0) + coalesce(r.amount, 0) ELSE 0 END)::bigint AS left_
FROM credit_grants g
LEFT JOIN drawn d USING (bucket_id)
LEFT JOIN returned r USING (bucket_id)
WHERE g.org_id = $1 AND g.expires_at > $2
"""

_DRAWN = "seat + personal + shared + on_demand"
SELECT_MEMBER_USAGE = f"""
SELECT member_id, {_DRAWN} AS drawn, shared FROM member_period_totals
WHERE org_id = $1 AND period_start = $2
"""
SELECT_GROUP_USAGE = f"""
SELECT billing_group, {_DRAWN} AS drawn FROM group_period_totals
WHERE org_id = $1 AND period_start = $2
"""
SELECT_ORG_USAGE = f"""
SELECT {_DRAWN} AS drawn, unfunded FROM org_period_totals
WHERE org_id = $1 AND period_start = $2
"""

ORG_LOCK_CLASS = 0x6D657472
"""First key of an organization's pg_advisory_lock(int, int) (the second: hashtext(org_id))."""
LOCK_ORG = "SELECT pg_advisory_lock($1, hashtext($2))"
UNLOCK_ORG = "SELECT pg_advisory_unlock($1, hashtext($2))"

WANT_KEY = int.from_bytes(hashlib.sha256(b"meter.rebuild.want").digest()[:8], "big", signed=True)
"""pg_advisory_lock key an explicit rebuild holds exclusively while it waits for and holds
`LOCK_KEY`: consumers see it taken at their next guard, drain and let go of `LOCK_KEY`."""

SELECT_KNOWN = "SELECT org_id FROM organizations WHERE org_id = ANY($1::text[]) ORDER BY org_id"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class RebuildReport:
    orgs: int
    buckets: int
    counters: int
    quarantined: dict[str, str] = field(default_factory=dict)
    """Organizations left out, each with why: this rebuild's failure, or an earlier quarantine."""


# -- reading PostgreSQL -------------------------------------------------------------------------


async def period_usage(conn: asyncpg.Connection, org_id: str, period: Period) -> dict[str, int]:
    """The engine counters (`usage()` format) of one period, from the settled totals."""
    start = from_ms(period.start_ms)
    usage: dict[str, int] = {}
    for r in await conn.fetch(SELECT_MEMBER_USAGE, org_id, start):
        usage[f"member:{r['member_id']}"] = r["drawn"]
        usage[f"member_shared:{r['member_id']}"] = r["shared"]
    for r in await conn.fetch(SELECT_GROUP_USAGE, org_id, start):
        usage[f"group:{r['billing_group']}"] = r["drawn"]
    row = await conn.fetchrow(SELECT_ORG_USAGE, org_id, start)
    if row is not None:
        usage["drawn"] = row["drawn"]
        usage["unfunded"] = row["unfunded"]
    return {k: v for k, v in usage.items() if v}


def open_periods(org: OrgConfig, at_ms: int) -> list[tuple[Period, int]]:
    """The periods an event settling at `at_ms` may count into, each with an instant inside it:
    the current one, and the previous one while it is within its grace window."""
    current = period_at(org, at_ms)
    out = [(current, at_ms)]
    previous = period_at(org, current.start_ms - 1)
    if at_ms <= previous.end_ms + org.grace_ms:
        out.append((previous, previous.end_ms - 1))
    return out


# -- rebuilding ---------------------------------------------------------------------------------


def _primaries(redis: aioredis.Redis) -> list[Any] | None:
    """The primaries of a Redis Cluster client (None for one server)."""
    if isinstance(redis, RedisCluster):
        return list(redis.get_primaries())
    return None


async def scan_keys(
    redis: aioredis.Redis, pattern: str, *, slot_of: str | None = None
) -> AsyncIterator[bytes]:
    """The keys matching the glob `pattern`: SCAN on one server; on a cluster, SCAN on every
    primary in turn, or only on the primary owning the slot of key `slot_of` (all of an
    organization's keys share one slot)."""
    primaries = _primaries(redis)
    if primaries is None:
        async for key in redis.scan_iter(match=pattern, count=1000):
            yield key
        return
    cluster = cast(RedisCluster, redis)
    nodes = primaries if slot_of is None else [cluster.get_node_from_key(slot_of)]
    for node in nodes:
        async for key in cluster.scan_iter(match=pattern, count=1000, target_nodes=node):
            yield key


async def delete_matching(
    redis: aioredis.Redis, pattern: str, *, slot_of: str | None = None
) -> int:
    """Delete the keys matching the glob `pattern` (`scan_keys`, then UNLINK in slices)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in scan_keys(redis, pattern, slot_of=slot_of):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


async def clear_org(redis: aioredis.Redis, org_id: str) -> int:
    """Delete every Redis key of the organization."""
    pattern = f"meter:{{{_glob_escape(org_id)}}}:*"
    return await delete_matching(redis, pattern, slot_of=org_key(org_id))


async def rebuild_org(
    admin: AdminService,
    redis: aioredis.Redis,
    org_id: str,
    at_ms: int,
    *,
    clear: bool = True,
    still_locked: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[int, int]:
    """Rebuild one organization's Redis state from PostgreSQL as of `at_ms` (the admin's clock
    must say the same), deleting its keys first unless `clear` is False (already done).
    Returns (buckets, counters) restored; (0, 0) for an unknown org. When `still_locked()`
    says False at the end, raises `RebuildLockLost` leaving the organization marked as being
    rebuilt (what it read may miss a batch written since: whoever meets it rebuilds it)."""
    engine = admin.engine
    if clear:
        await clear_org(redis, org_id)
    # Scripts take the org for absent from here until its state is all there again.
    await begin_rebuild(redis, org_id)
    if not await apply_org(admin, org_id):
        await redis.delete(org_key(org_id))
        return 0, 0
    async with admin.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        row = await conn.fetchrow(q.SELECT_ORG_CONFIG, org_id)
        org = org_config(row)
        oldest = at_ms - org.grace_ms
        grants = await conn.fetch(SELECT_DRAWABLE_GRANTS, org_id, from_ms(oldest))
        left = {
            r["bucket_id"]: r["left_"]
            for r in await conn.fetch(SELECT_LEFT, org_id, from_ms(oldest))
        }
        usages = [
            (await period_usage(conn, org_id, p), inside) for p, inside in open_periods(org, at_ms)
        ]
    for grant in grants:  # idempotent; also covers grants created since the reconcile
        await engine.apply_grant(grant_of(grant))
    counters = 0
    for i, (usage, inside) in enumerate(usages):
        await engine.restore(org_id, left if i == 0 else {}, usage, inside)
        counters += len(usage)
    if still_locked is not None and not await still_locked():
        raise RebuildLockLost(f"the rebuild lock's session ended while {org_id!r} was rebuilt")
    await end_rebuild(redis, org_id)
    return len(left), counters


async def quarantine_org(
    pool: asyncpg.Pool, redis: aioredis.Redis, org_id: str, exc: BaseException
) -> str:
    """Quarantine an organization whose state could not be applied: record it (and its alert),
    delete its Redis keys and set its marker. Returns the details recorded."""
    reason, details = quarantine.reason_of(exc), quarantine.details_of(exc)
    if await quarantine.record(pool, org_id, reason, details):
        log.error("org_quarantined", org_id=org_id, reason=reason, details=details)
    await clear_org(redis, org_id)
    await quarantine.mark(redis, org_id, reason)
    return details


async def rebuild(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    engine: Engine,
    *,
    org_ids: Sequence[str] | None = None,
    at_ms: int | None = None,
    still_locked: Callable[[], Awaitable[bool]] | None = None,
    releasing: bool = False,
) -> RebuildReport:
    """Rebuild the Redis state of `org_ids` (default: every organization, after deleting every
    organization's keys on every primary, known to PostgreSQL or not). The caller holds the
    rebuild lock exclusively (`exclusive_rebuild`, which passes `still_locked`: asked before
    each organization, False raises `RebuildLockLost`), or the organizations' own locks
    (`rebuild_lost`), or knows nothing settles meanwhile.

    An organization that cannot be applied is quarantined and left out; quarantined ones are
    left out without trying unless `releasing`, which tries them and ends the quarantine of
    those that rebuild."""

    async def check_lock() -> None:
        if still_locked is not None and not await still_locked():
            raise RebuildLockLost("the rebuild lock's session ended; rebuild abandoned")

    at = now_ms() if at_ms is None else at_ms
    admin = AdminService(pool, engine, clock=lambda: at)
    cleared = org_ids is None
    if org_ids is None:
        await delete_matching(redis, "meter:{*")
        org_ids = [r["org_id"] for r in await pool.fetch(q.SELECT_ORG_IDS)]
    held = {x.org_id: x for x in await quarantine.listing(pool)}
    left_out: dict[str, str] = {}
    buckets = counters = 0
    for org_id in org_ids:
        await check_lock()
        earlier = held.get(org_id)
        if earlier is not None and not releasing:
            if not cleared:
                await clear_org(redis, org_id)
            await quarantine.mark(redis, org_id, earlier.reason)
            left_out[org_id] = f"quarantined since {earlier.since.isoformat()}: {earlier.details}"
            continue
        try:
            b, c = await rebuild_org(
                admin, redis, org_id, at, clear=not cleared, still_locked=still_locked
            )
        except Exception as exc:
            if isinstance(exc, RebuildLockLost) or quarantine.is_transient(exc):
                raise
            left_out[org_id] = await quarantine_org(pool, redis, org_id, exc)
            continue
        if earlier is not None and await quarantine.remove(pool, org_id):
            log.warning("org_released", org_id=org_id)
        buckets += b
        counters += c
    log.info(
        "rebuilt", orgs=len(org_ids), buckets=buckets, counters=counters, quarantined=len(left_out)
    )
    return RebuildReport(len(org_ids), buckets, counters, left_out)


class RebuildLockLost(RuntimeError):
    """The session holding the rebuild lock ended before the rebuild was done: settling may have
    started again, so the rebuild stops (the organization it was at stays marked as being
    rebuilt, so it is found lost and rebuilt again)."""


SESSION_GONE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # The server's notice that it ended the session (pg_terminate_backend, a shutdown) read
    # while the connection is idle leaves asyncpg refusing the next query this way.
    asyncpg.InternalClientError,
)
"""What a probe or a close of a session that is gone raises."""


async def session_answers(conn: asyncpg.Connection, timeout_s: float) -> bool:
    """Whether `conn`'s session is still there, which is whether a lock it took is still held
    (advisory locks are let go only with their session). A server that does not answer within
    `timeout_s` counts as gone: a half-open connection never answers."""
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=timeout_s)
    except SESSION_GONE as exc:
        log.warning("rebuild_lock_lost", error=repr(exc))
        return False
    return True


async def end_session(conn: asyncpg.Connection, timeout_s: float) -> None:
    """Close `conn`, ending its session and the advisory locks it holds; a server that does not
    answer gets the connection aborted (asyncpg does it when the close fails)."""
    if conn.is_closed():
        return
    with contextlib.suppress(*SESSION_GONE):
        await conn.close(timeout=timeout_s)


async def exclusive_rebuild(
    dsn: str,
    redis: aioredis.Redis,
    engine: Engine,
    *,
    org_ids: Sequence[str] | None = None,
    probe_timeout_s: float = LOCK_PROBE_TIMEOUT_S,
    releasing: bool = False,
) -> RebuildReport:
    """Take the "rebuild wanted" lock, then the rebuild lock exclusively (settling consumers see
    the first at their next guard, drain and let go of the second), and rebuild `org_ids` (or
    everything). The lock's session is asked whether it is still there before each
    organization; when it is gone (`RebuildLockLost`) consumers may be settling again, so this
    rebuild stops."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", WANT_KEY)
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)

        async def still_locked() -> bool:
            return await session_answers(conn, probe_timeout_s)

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            return await rebuild(
                pool,
                redis,
                engine,
                org_ids=org_ids,
                still_locked=still_locked,
                releasing=releasing,
            )
        finally:
            await pool.close()
    finally:
        await end_session(conn, probe_timeout_s)


async def release(dsn: str, redis: aioredis.Redis, engine: Engine, org_id: str) -> str | None:
    """End an organization's quarantine: rebuild it now under the rebuild lock (as `meter
    rebuild` does) and, when it rebuilds, delete its quarantine. None on success, else why it
    stays quarantined."""
    conn = await asyncpg.connect(dsn)
    try:
        held = await quarantine.get(conn, org_id)
    finally:
        await conn.close()
    if held is None:
        return f"{org_id!r} is not quarantined"
    try:
        report = await exclusive_rebuild(dsn, redis, engine, org_ids=[org_id], releasing=True)
    except RebuildLockLost as exc:
        return f"{exc}; run it again"
    return report.quarantined.get(org_id)


async def missing_orgs(redis: aioredis.Redis, org_ids: Sequence[str]) -> list[str]:
    """Those of `org_ids` whose state Redis does not hold (lost, half rebuilt, never applied, or
    quarantined: a rebuild marks those again): `org_present`'s HMGET, pipelined by the
    thousand (a cluster client sends each slice's commands to their primaries)."""
    missing: list[str] = []
    for first in range(0, len(org_ids), 1000):
        part = org_ids[first : first + 1000]
        pipe = redis.pipeline(transaction=False)
        for org_id in part:
            pipe.hmget(org_key(org_id), ["c", REBUILDING])
        for org_id, (config, rebuilding) in zip(part, await pipe.execute(), strict=True):
            if config is None or rebuilding is not None:
                missing.append(org_id)
    return missing


async def rebuild_lost(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    engine: Engine,
    org_ids: Collection[str],
    *,
    conn: asyncpg.Connection,
    force: bool = False,
    still_locked: Callable[[], Awaitable[bool]] | None = None,
) -> RebuildReport:
    """Rebuild, one at a time, each of `org_ids` PostgreSQL knows whose state Redis lost (all of
    them if `force`), under that organization's own lock taken on `conn`: one that another
    process rebuilt meanwhile is left as it is. Organizations not named are never blocked."""
    known = [r["org_id"] for r in await pool.fetch(SELECT_KNOWN, list(org_ids))]
    total = RebuildReport(0, 0, 0)
    for org_id in known:
        await conn.execute(LOCK_ORG, ORG_LOCK_CLASS, org_id)
        try:
            if not force and await engine.has_org(org_id):
                continue
            report = await rebuild(pool, redis, engine, org_ids=[org_id], still_locked=still_locked)
        finally:
            await conn.execute(UNLOCK_ORG, ORG_LOCK_CLASS, org_id)
        total = RebuildReport(
            total.orgs + report.orgs,
            total.buckets + report.buckets,
            total.counters + report.counters,
            {**total.quarantined, **report.quarantined},
        )
    return total


async def repair(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    engine: Engine,
    *,
    probe_timeout_s: float = LOCK_PROBE_TIMEOUT_S,
) -> RebuildReport | None:
    """Rebuild what Redis lost, for a process that finds it out (the admin reconciler) and may
    not know what consumers are writing: the organizations PostgreSQL knows that have no state
    in Redis, each alone under the rebuild lock (taken exclusively on a connection of `pool`,
    after the "rebuild wanted" lock, so consumers drain and let go of it only for that one
    organization's rebuild). None when nothing was missing."""
    org_ids = [r["org_id"] for r in await pool.fetch(q.SELECT_ORG_IDS)]
    missing = await missing_orgs(redis, org_ids)
    if not missing:
        return None
    total = RebuildReport(0, 0, 0)
    async with pool.acquire() as conn:

        async def still_locked() -> bool:
            return await session_answers(conn, probe_timeout_s)

        for org_id in missing:
            await conn.execute("SELECT pg_advisory_lock($1)", WANT_KEY)
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
                try:
                    report = await rebuild_lost(
                        pool, redis, engine, [org_id], conn=conn, still_locked=still_locked
                    )
                finally:
                    with contextlib.suppress(*SESSION_GONE):
                        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
            finally:
                with contextlib.suppress(*SESSION_GONE):
                    await conn.execute("SELECT pg_advisory_unlock($1)", WANT_KEY)
            total = RebuildReport(
                total.orgs + report.orgs,
                total.buckets + report.buckets,
                total.counters + report.counters,
                {**total.quarantined, **report.quarantined},
            )
    return total


# -- command line -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter rebuild [--org ORG ...]`: reconstruct Redis from PostgreSQL."""
    parser.add_argument(
        "--org", action="append", dest="orgs", metavar="ORG", help="only this organization"
    )

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.engine.redis import RedisEngine
        from meter.migrate import migrate
        from meter.services import provision

        async with provision(settings, only={"redis", "postgres"}) as services:
            await migrate(services.postgres_dsn)
            client = redis_connect(services.redis_url)
            try:
                engine = RedisEngine(client, encoding=settings.member_encoding)
                # Settling consumers see the "rebuild wanted" lock, drain and let go of theirs.
                report = await exclusive_rebuild(
                    services.postgres_dsn, client, engine, org_ids=args.orgs
                )
            except RebuildLockLost as exc:
                # The organization it was at stays marked: whoever meets it rebuilds it.
                print(f"meter rebuild: {exc}; run it again", file=sys.stderr)
                return 1
            finally:
                await client.aclose()
        print(
            f"rebuilt {report.orgs} organizations: {report.buckets} buckets, "
            f"{report.counters} counters"
        )
        for org_id, why in sorted(report.quarantined.items()):
            print(f"meter rebuild: {org_id} left out, quarantined: {why}", file=sys.stderr)
        return 0

    return handle
