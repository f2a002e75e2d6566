"""`meter rebuild`: reconstruct Redis from PostgreSQL, and the consumer's guard against a Redis
that lost its data.

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

A full rebuild ends by setting the epoch marker (`engine.set_epoch`); an absent marker means the
Redis is new or lost its data.

Quarantine (`meter.quarantine`): an organization whose state cannot be applied (the engine
refuses a value, PostgreSQL a cast, a script fails: anything but a server being away) is
quarantined instead of failing the rebuild, which goes on with the next one and sets the epoch
with it left out. Organizations already quarantined are left out without trying (their marker is
set again) until `release` rebuilds them. Transient errors still fail the rebuild, which is
retried.

Fencing: a settling consumer holds a shared PostgreSQL advisory lock (`Recovery`); a rebuild
holds it exclusively. So no event is settled into a half-rebuilt Redis, and no batch settled
before a rebuild is still being written while it reads PostgreSQL. A void holds it shared too,
from its Redis apply until its record commits (`AdminService.void`), so a rebuild never reads
PostgreSQL without a void that Redis already has. A consumer checks that its lock session is
still there before each batch, and has Redis rebuilt again when a rebuild ran while it was not.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog

from meter import quarantine
from meter.admin import queries as q
from meter.admin.clock import from_ms
from meter.admin.reconcile import apply_org
from meter.admin.service import REBUILD_LOCK_KEY, AdminService, org_config
from meter.engine.periods import period_at
from meter.engine.redis import EPOCH_KEY
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
"""How long `Recovery` waits for its lock connection to answer before taking it for lost."""

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

# Delete the epoch marker if it still says ARGV[1].
FORGET_EPOCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_epoch(at_ms: int) -> str:
    return f"{at_ms}-{uuid.uuid4().hex[:12]}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class RebuildReport:
    orgs: int
    buckets: int
    counters: int
    epoch: str | None
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


async def delete_matching(redis: aioredis.Redis, pattern: str) -> int:
    """Delete the keys matching the glob `pattern` (SCAN, then UNLINK in slices)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


async def clear_org(redis: aioredis.Redis, org_id: str) -> int:
    """Delete every Redis key of the organization."""
    return await delete_matching(redis, f"meter:{{{_glob_escape(org_id)}}}:*")


async def rebuild_org(
    admin: AdminService, redis: aioredis.Redis, org_id: str, at_ms: int, *, clear: bool = True
) -> tuple[int, int]:
    """Rebuild one organization's Redis state from PostgreSQL as of `at_ms` (the admin's clock
    must say the same), deleting its keys first unless `clear` is False (already done).
    Returns (buckets, counters) restored; (0, 0) for an unknown org."""
    engine = admin.engine
    if clear:
        await clear_org(redis, org_id)
    if not await apply_org(admin, org_id):
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
    organization's keys, known to PostgreSQL or not) and set a new epoch. The caller holds the
    rebuild lock exclusively (`exclusive_rebuild`, which passes `still_locked`: asked before
    each organization and before the epoch, False raises `RebuildLockLost`), or knows nothing
    settles meanwhile.

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
            b, c = await rebuild_org(admin, redis, org_id, at, clear=not cleared)
        except Exception as exc:
            if isinstance(exc, RebuildLockLost) or quarantine.is_transient(exc):
                raise
            left_out[org_id] = await quarantine_org(pool, redis, org_id, exc)
            continue
        if earlier is not None and await quarantine.remove(pool, org_id):
            log.warning("org_released", org_id=org_id)
        buckets += b
        counters += c
    await check_lock()
    epoch = new_epoch(at)
    await engine.set_epoch(epoch)
    log.info(
        "rebuilt",
        orgs=len(org_ids),
        buckets=buckets,
        counters=counters,
        quarantined=len(left_out),
        epoch=epoch,
    )
    return RebuildReport(len(org_ids), buckets, counters, epoch, left_out)


class RebuildLockLost(RuntimeError):
    """The session holding the rebuild lock ended before the rebuild was done: settling may have
    started again, so the rebuild stops without setting an epoch."""


async def session_answers(conn: asyncpg.Connection, timeout_s: float) -> bool:
    """Whether `conn`'s session is still there, which is whether a lock it took is still held
    (advisory locks are let go only with their session). A server that does not answer within
    `timeout_s` counts as gone: a half-open connection never answers."""
    if conn.is_closed():
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("rebuild_lock_lost", error=repr(exc))
        return False
    return True


async def end_session(conn: asyncpg.Connection, timeout_s: float) -> None:
    """Close `conn`, ending its session and the advisory locks it holds; a server that does not
    answer gets the connection aborted (asyncpg does it when the close fails)."""
    if conn.is_closed():
        return
    with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        await conn.close(timeout=timeout_s)


async def exclusive_rebuild(
    dsn: str,
    redis: aioredis.Redis,
    engine: Engine,
    *,
    org_ids: Sequence[str] | None = None,
    force: bool = False,
    probe_timeout_s: float = LOCK_PROBE_TIMEOUT_S,
    releasing: bool = False,
) -> RebuildReport | None:
    """Take the rebuild lock exclusively (waiting for settling consumers to let go of it), then
    rebuild if `force` or the epoch marker is absent. None when there was nothing to do.

    The lock's session is asked whether it is still there before each organization and before
    the new epoch is set; when it is gone (`RebuildLockLost`) consumers may be settling or
    rebuilding again, so this rebuild stops and leaves the epoch unset for them."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        if not force and await engine.epoch() is not None:
            return None

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
    """End an organization's quarantine: rebuild it now under the rebuild lock (the epoch marker
    is deleted first so that settling consumers let go of the lock, as `meter rebuild` does)
    and, when it rebuilds, delete its quarantine. None on success, else why it stays
    quarantined."""
    conn = await asyncpg.connect(dsn)
    try:
        held = await quarantine.get(conn, org_id)
    finally:
        await conn.close()
    if held is None:
        return f"{org_id!r} is not quarantined"
    await redis.delete(EPOCH_KEY)
    try:
        report = await exclusive_rebuild(
            dsn, redis, engine, org_ids=[org_id], force=True, releasing=True
        )
    except RebuildLockLost as exc:
        return f"{exc}; run it again"
    assert report is not None
    return report.quarantined.get(org_id)


async def repair(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    engine: Engine,
    *,
    probe_timeout_s: float = LOCK_PROBE_TIMEOUT_S,
) -> RebuildReport | None:
    """Rebuild what Redis lost, for a process that finds it out (the admin reconciler) while no
    consumer may be running to do it: everything when the epoch marker is gone (as `Recovery`
    does), else the organizations PostgreSQL knows that have no state in Redis (keys lost one
    by one, an apply that failed), with the marker deleted first so that settling consumers let
    go of the rebuild lock. Under the lock taken exclusively on a connection of `pool`; None
    when another process rebuilt meanwhile."""
    everything = await engine.epoch() is None
    if not everything:
        await redis.delete(EPOCH_KEY)
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            if await engine.epoch() is not None:
                return None

            async def still_locked() -> bool:
                return await session_answers(conn, probe_timeout_s)

            org_ids: list[str] | None = None
            if not everything:
                known = [r["org_id"] for r in await pool.fetch(q.SELECT_ORG_IDS)]
                org_ids = [o for o in known if not await engine.has_org(o)]
            return await rebuild(pool, redis, engine, org_ids=org_ids, still_locked=still_locked)
        finally:
            with contextlib.suppress(
                OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError
            ):
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


# -- the consumer's guard -----------------------------------------------------------------------


class Recovery:
    """Lets a consumer settle only into a Redis that holds PostgreSQL's state.

    `guard()` before settling a batch: holds the rebuild lock shared (on a connection of its own)
    and reads the epoch marker; when it is absent, lets go of the lock, drains (the consumer
    finishes the batch it is writing), rebuilds under the exclusive lock unless another process
    already did, and starts over. `still_valid()` after settling: False when the epoch changed
    meanwhile (Redis restarted empty while settling): the batch must be dropped, not written.

    The lock lives as long as its PostgreSQL session, which a restart or a terminated backend
    ends without the client necessarily knowing (`is_closed()` stays False until something is
    sent). So `guard()` has the session answer a query: one round trip per batch, bounded by
    `LOCK_PROBE_TIMEOUT_S` (a session that answers holds the lock: it is let go only with it).
    A lost lock is taken again on a new connection. While it was not held a rebuild may have
    run, and what this consumer settled since its last guard may have reached PostgreSQL after
    that rebuild read it: if the epoch changed, the consumer deletes the marker, drains and has
    Redis rebuilt again before settling. The marker being the same proves no rebuild touched
    Redis meanwhile: each one ends with a new marker, and one in progress keeps the lock from
    being taken again until it has.
    """

    def __init__(
        self,
        dsn: str,
        redis: aioredis.Redis,
        engine: Engine,
        *,
        probe_timeout_s: float = LOCK_PROBE_TIMEOUT_S,
    ) -> None:
        self._dsn = dsn
        self._redis = redis
        self._engine = engine
        self._probe_timeout_s = probe_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._epoch: str | None = None
        self._lost = False
        """The lock was found lost since Redis was last known to hold what this consumer wrote."""
        self.rebuilds = 0
        self.locks_lost = 0

    @property
    def held(self) -> bool:
        """The lock connection is open, as far as the client knows (no round trip)."""
        return self._conn is not None and not self._conn.is_closed()

    async def _hold(self) -> None:
        conn = self._conn
        if conn is not None:
            if await session_answers(conn, self._probe_timeout_s):
                return
            self._conn = None
            self._lost = True
            self.locks_lost += 1
            conn.terminate()  # whatever the session's state, this client is done with it
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock_shared($1)", LOCK_KEY)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await end_session(conn, self._probe_timeout_s)

    async def _forget_epoch(self, epoch: str) -> None:
        await self._redis.eval(FORGET_EPOCH, 1, EPOCH_KEY, epoch)

    async def guard(self, drain: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self._hold()
            epoch = await self._engine.epoch()
            if epoch is not None and (not self._lost or self._epoch in (None, epoch)):
                self._epoch = epoch
                self._lost = False
                return
            if epoch is None:
                log.warning("redis_lost_data", action="rebuild")
            else:
                log.warning("rebuilt_while_lock_lost", action="rebuild", epoch=epoch)
                # Every consumer lets go of the lock on seeing no marker, so the rebuild can run.
                await self._forget_epoch(epoch)
            await drain()
            await self._drop()
            try:
                report = await exclusive_rebuild(self._dsn, self._redis, self._engine)
            except RebuildLockLost:
                continue  # the epoch stays unset: rebuilt again, by this process or another
            self._lost = False  # drained first: whatever rebuilt Redis read what was written
            if report is not None:
                self.rebuilds += 1

    async def still_valid(self) -> bool:
        """No round trip on the lock connection: dropping a batch only matters when Redis changed
        under it, which a changed (or absent) epoch shows; a lock lost meanwhile is found by the
        next `guard()`, before that batch's successor settles."""
        return self.held and await self._engine.epoch() == self._epoch

    async def close(self) -> None:
        await self._drop()


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
                engine = RedisEngine(client)
                # Settling consumers notice the missing marker, let go of the lock and wait.
                await client.delete(EPOCH_KEY)
                report = await exclusive_rebuild(
                    services.postgres_dsn, client, engine, org_ids=args.orgs, force=True
                )
            except RebuildLockLost as exc:
                # Settling consumers rebuild on their own when they find no marker.
                print(f"meter rebuild: {exc}; run it again", file=sys.stderr)
                return 1
            finally:
                await client.aclose()
        assert report is not None
        print(
            f"rebuilt {report.orgs} organizations: {report.buckets} buckets, "
            f"{report.counters} counters; epoch {report.epoch}"
        )
        for org_id, why in sorted(report.quarantined.items()):
            print(f"meter rebuild: {org_id} left out, quarantined: {why}", file=sys.stderr)
        return 0

    return handle
