"""The consumer's guard: it settles only into a Redis that holds PostgreSQL's state, rebuilding
the organizations it finds lost (`meter.rebuild.rebuild_lost`) and stepping aside for explicit
rebuilds (`meter.rebuild.exclusive_rebuild`, `repair`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog

from meter.engine.types import Engine
from meter.rebuild import (
    LOCK_KEY,
    LOCK_PROBE_TIMEOUT_S,
    SELECT_KNOWN,
    SESSION_GONE,
    WANT_KEY,
    RebuildReport,
    end_session,
    rebuild_lost,
)

log = structlog.get_logger("meter.rebuild")

# One round trip per guard: answers (the session, and the lock with it, is still there) and says
# whether a rebuild wants the lock (False).
PROBE_WANTED = "SELECT pg_try_advisory_xact_lock_shared($1)"
WAIT_WANTED = "SELECT pg_advisory_xact_lock_shared($1)"


class Recovery:
    """Lets a consumer settle only into a Redis that holds PostgreSQL's state.

    `guard()` before settling a batch: holds the rebuild lock shared (on a connection of its
    own) and, in the same round trip that proves the session is still there, asks whether an
    explicit rebuild wants the lock (`WANT_KEY` taken): if so, drains (finishes the batch being
    written), lets go of the lock and waits for that rebuild before taking it again.

    `recover(org_ids, drain)` when a batch met organizations without state that PostgreSQL knows
    (their shard restarted empty): drains, then rebuilds each under its own lock
    (`rebuild_lost`); the consumer settles their events again. Other organizations are not
    held up beyond that.

    The lock lives as long as its PostgreSQL session, which a restart or a terminated backend
    ends without the client necessarily knowing. A lost lock is taken again on a new connection.
    While it was not held an explicit rebuild may have run and read PostgreSQL before this
    consumer's last batches reached it: the consumer drains, then rebuilds the organizations it
    settled since before its last good guard (`settling()` tells it which).
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
        self._pool: asyncpg.Pool | None = None
        self._lost = False
        """The lock was found lost since Redis was last known to hold what this consumer wrote."""
        self._recent: set[str] = set()
        self._previous: set[str] = set()
        """Organizations settled since the last good guard, and in the interval before it (a
        batch settled then may still be being written)."""
        self.rebuilds = 0
        """Organizations this consumer rebuilt."""
        self.locks_lost = 0

    @property
    def held(self) -> bool:
        """The lock connection is open, as far as the client knows (no round trip)."""
        return self._conn is not None and not self._conn.is_closed()

    def settling(self, org_ids: Collection[str]) -> None:
        """The consumer is about to settle events of these organizations."""
        self._recent.update(org_ids)

    async def _probe(self, conn: asyncpg.Connection) -> bool | None:
        """Whether no rebuild wants the lock; None when the session does not answer."""
        if conn.is_closed():
            return None
        try:
            return bool(await conn.fetchval(PROBE_WANTED, WANT_KEY, timeout=self._probe_timeout_s))
        except SESSION_GONE as exc:
            log.warning("rebuild_lock_lost", error=repr(exc))
            return None

    async def _hold(self) -> bool:
        """Hold the lock; False when an explicit rebuild wants it."""
        conn = self._conn
        if conn is not None:
            free = await self._probe(conn)
            if free is not None:
                return free
            self._conn = None
            self._lost = True
            self.locks_lost += 1
            conn.terminate()  # whatever the session's state, this client is done with it
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(WAIT_WANTED, WANT_KEY)  # an explicit rebuild runs first
            await conn.execute("SELECT pg_advisory_lock_shared($1)", LOCK_KEY)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await end_session(conn, self._probe_timeout_s)

    async def _pool_of(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=2)
        return self._pool

    async def guard(self, drain: Callable[[], Awaitable[None]]) -> None:
        while True:
            if not await self._hold():
                log.info("rebuild_wanted", action="drain")
                await drain()
                await self._drop()
                continue
            if self._lost and self._touched():
                log.warning("rebuild_lock_retaken", action="rebuild", orgs=len(self._touched()))
                await drain()  # what may have reached PostgreSQL after a rebuild read it
                await self._rebuild(self._touched(), force=True)
            self._lost = False
            self._previous, self._recent = self._recent, set()
            return

    def _touched(self) -> set[str]:
        return self._recent | self._previous

    async def _rebuild(self, org_ids: Collection[str], *, force: bool = False) -> RebuildReport:
        conn = self._conn
        assert conn is not None
        report = await rebuild_lost(
            await self._pool_of(), self._redis, self._engine, org_ids, conn=conn, force=force
        )
        self.rebuilds += report.orgs
        return report

    async def recover(
        self, org_ids: Collection[str], drain: Callable[[], Awaitable[None]]
    ) -> set[str]:
        """Rebuild those of `org_ids` (met without state) whose state is lost, after draining.
        Returns the organizations whose events should be settled again: those PostgreSQL knows
        (rebuilt now, by another process meanwhile, or quarantined: they then answer so)."""
        pool = await self._pool_of()
        known = {r["org_id"] for r in await pool.fetch(SELECT_KNOWN, list(org_ids))}
        if not known:
            return known
        log.warning("redis_lost_orgs", action="rebuild", orgs=len(known))
        await drain()
        await self.guard(drain)
        await self._rebuild(known)
        return known

    async def still_valid(self) -> bool:
        """The lock connection is still open (no round trip): a lock lost meanwhile is found by
        the next `guard()`, before that batch's successor settles."""
        return self.held

    async def close(self) -> None:
        await self._drop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
