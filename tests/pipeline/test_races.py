"""Recovery races: a void made while a rebuild runs, and a settling consumer whose rebuild lock
went away with its PostgreSQL session (a restart, a terminated backend, a connection whose server
side is gone without the client being told)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Mapping

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis
from pipeline_support import World, wait_for

from meter.admin import AdminService
from meter.engine.redis import RedisEngine
from meter.engine.types import UsageEvent
from meter.migrate import migrate
from meter.rebuild import (
    LOCK_KEY,
    RebuildLockLost,
    end_session,
    exclusive_rebuild,
    open_periods,
    period_usage,
    session_answers,
)
from meter.recovery import Recovery
from meter.services import PostgresServer, create_database, with_database
from meter.store import SettlementStore

# The advisory lock rows of LOCK_KEY in the current database (a bigint key is split into classid
# and objid, objsubid 1).
LOCK_ROWS = """
SELECT pid, mode, granted FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = $1
"""


async def lock_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(LOCK_ROWS, LOCK_KEY))
    finally:
        await conn.close()


async def held_shared(dsn: str) -> bool:
    return any(r["granted"] and r["mode"] == "ShareLock" for r in await lock_rows(dsn))


# -- a void while a rebuild runs -----------------------------------------------------------------


class PausedRestore(RedisEngine):
    """The Redis engine of a rebuild that stops before its first `restore`: it has read
    PostgreSQL and put the organization's configuration and grants back, not its balances yet."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.reached = asyncio.Event()
        self.resume = asyncio.Event()

    async def restore(
        self, org_id: str, balances: Mapping[str, int], usage: Mapping[str, int], now_ms: int
    ) -> None:
        self.reached.set()
        await self.resume.wait()
        await super().restore(org_id, balances, usage, now_ms)


async def waiting_for_lock(dsn: str) -> bool:
    return any(not r["granted"] for r in await lock_rows(dsn))


async def test_void_during_rebuild_is_kept(
    migrated_dsn: str, redis: aioredis.Redis, engine: RedisEngine, pool: asyncpg.Pool
) -> None:
    dsn = migrated_dsn
    world = World.build(n_orgs=1, members_per_org=2, seed=61)
    await world.store(dsn)
    await world.apply(engine)
    org_id = world.orgs[0].org_id
    at = world.now_ms + 1_000
    events = [
        UsageEvent(f"//test race-{i}", org_id, m.member_id, 1_250_000 + i, world.now_ms - i)
        for i, m in enumerate(world.members * 2)
    ]
    settlements = await engine.settle_batch(org_id, events, at)
    store = SettlementStore(dsn)
    try:
        assert await store.write_batch("g", "t", [(s, None) for s in settlements], []) == 4
    finally:
        await store.close()
    voided = settlements[1]
    assert voided.lines

    rebuilding = PausedRestore(redis)
    rebuild = asyncio.create_task(exclusive_rebuild(dsn, redis, rebuilding))
    await asyncio.wait_for(rebuilding.reached.wait(), 30)
    admin = AdminService(pool, engine, clock=lambda: at + 1_000)
    void = asyncio.create_task(admin.void(org_id, voided.key, "test"))

    async def void_done_or_waiting() -> bool:
        return void.done() or await waiting_for_lock(dsn)

    await wait_for(void_done_or_waiting, timeout_s=30, what="the void to finish or wait")
    rebuilding.resume.set()
    assert await asyncio.wait_for(rebuild, 30) is not None
    out = await asyncio.wait_for(void, 30)
    assert out.voided and not out.duplicate

    # Redis holds what PostgreSQL implies: grants - drawn + returned by the void, and the
    # counters of the settled totals (which the void took the voided settlement out of).
    left: Counter[str] = Counter({g.bucket_id: g.amount for g in world.grants})
    for s in settlements:
        for ln in s.lines:
            left[ln.bucket_id] -= ln.amount
    returned = await pool.fetchval("SELECT returned FROM voids WHERE event_key = $1", voided.key)
    assert [(r["bucket_id"], r["amount"]) for r in json.loads(returned)] == [
        (ln.bucket_id, ln.amount) for ln in voided.lines
    ]
    for ln in voided.lines:
        left[ln.bucket_id] += ln.amount
    now = at + 2_000
    assert await engine.balances(org_id, now) == dict(left)
    async with pool.acquire() as conn:
        period, _ = open_periods(world.orgs[0], now)[0]
        usage = await period_usage(conn, org_id, period)
    assert usage["drawn"] == sum(s.credits for s in settlements) - voided.credits
    assert await engine.usage(org_id, now) == usage


async def test_rebuild_whose_lock_session_ends_leaves_the_org_marked(
    migrated_dsn: str, redis: aioredis.Redis, engine: RedisEngine
) -> None:
    dsn = migrated_dsn
    world = World.build(n_orgs=1, members_per_org=2, seed=62)
    await world.store(dsn)
    await world.apply(engine)
    rebuilding = PausedRestore(redis)
    rebuild = asyncio.create_task(exclusive_rebuild(dsn, redis, rebuilding))
    await asyncio.wait_for(rebuilding.reached.wait(), 30)
    # The rebuild's lock session ends (a restart, a lost host): consumers may settle again.
    holders = [r["pid"] for r in await lock_rows(dsn) if r["granted"]]
    assert len(holders) == 1
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", holders[0])
    finally:
        await conn.close()
    rebuilding.resume.set()
    with pytest.raises(RebuildLockLost):
        await asyncio.wait_for(rebuild, 30)
    assert not await engine.has_org(world.orgs[0].org_id)  # found lost, rebuilt again
    assert await lock_rows(dsn) == []


async def test_a_session_the_server_ended_is_gone_whenever_it_is_asked(migrated_dsn: str) -> None:
    """However soon after the server ends a session the probe asks, the answer is "gone": asyncpg
    raises one thing when the server's notice is read before the query and another (an
    InternalClientError) when it is read while the query is being sent."""
    killer = await asyncpg.connect(migrated_dsn)
    try:
        for attempt in range(30):
            conn = await asyncpg.connect(migrated_dsn)
            try:
                assert await session_answers(conn, 5.0)
                await killer.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                for _ in range(attempt % 3):
                    await asyncio.sleep(0)
                assert not await session_answers(conn, 5.0)
            finally:
                await end_session(conn, 5.0)
    finally:
        await killer.close()


# -- the consumer's lock session -----------------------------------------------------------------


class Proxy:
    """A TCP relay to PostgreSQL whose `sever()` ends the server side of the connections it holds
    without telling their clients, as when the server's host or the network between goes away:
    PostgreSQL ends those sessions (and their advisory locks), while the clients see nothing
    until they send; then they are disconnected, or, when `silent`, never answered. Connections
    made afterwards are relayed."""

    def __init__(self, host: str, port: int, *, silent: bool = False) -> None:
        self.host, self.port = host, port
        self.silent = silent
        self.server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.Event]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        severed = asyncio.Event()
        self._pairs.append((up_writer, severed))
        self._writers += [writer, up_writer]

        async def to_server() -> None:
            while data := await reader.read(65536):
                if severed.is_set():
                    if self.silent:
                        continue
                    writer.transport.abort()
                    return
                up_writer.write(data)
            up_writer.close()
            writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
            if not severed.is_set():
                writer.close()

        for coro in (to_server(), to_client()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def sever(self) -> None:
        for up_writer, severed in self._pairs:
            severed.set()
            up_writer.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Drains:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


@pytest.mark.parametrize("silent", [False, True], ids=["reset", "silent"])
async def test_lock_session_gone_without_notice(
    migrated_dsn: str, redis: aioredis.Redis, engine: RedisEngine, silent: bool
) -> None:
    dsn = migrated_dsn
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = Proxy(host, int(port), silent=silent)
    relayed = dsn.replace(host_port, f"127.0.0.1:{await proxy.start()}")
    recovery = Recovery(relayed, redis, engine, probe_timeout_s=0.5)
    drains = Drains()
    world = World.build(n_orgs=2, members_per_org=2, seed=63)
    await world.store(dsn)
    await world.apply(engine)
    try:
        await recovery.guard(drains)
        assert await held_shared(dsn)
        recovery.settling(["org-0"])  # a batch of org-0 settles, its write may be in flight

        proxy.sever()

        async def lock_gone() -> bool:
            return not await lock_rows(dsn)

        await wait_for(lock_gone, timeout_s=30, what="PostgreSQL to end the severed session")
        # Nothing stops a rebuild now; another process runs one.
        other = await asyncio.wait_for(exclusive_rebuild(dsn, redis, engine), 30)
        assert other.orgs == 2
        assert recovery.held  # the client side never heard of it

        # Before settling again the consumer finds its lock gone and takes it again. A rebuild
        # may have run while it was not held: what the consumer settled since before its last
        # guard may have been written after that rebuild read PostgreSQL, so it drains and
        # rebuilds those organizations (org-0 alone) once more.
        await asyncio.wait_for(recovery.guard(drains), 30)
        assert await held_shared(dsn)
        assert recovery.locks_lost == 1
        assert drains.count == 1 and recovery.rebuilds == 1
        assert await engine.has_org("org-0") and await engine.has_org("org-1")
        assert await recovery.still_valid()

        # A lock that is still held costs one round trip and changes nothing.
        await recovery.guard(drains)
        assert drains.count == 1 and recovery.rebuilds == 1
    finally:
        await asyncio.wait_for(recovery.close(), 30)
        await proxy.close()


async def test_postgres_restart_with_a_rebuild_meanwhile(
    redis: aioredis.Redis, engine: RedisEngine, private_postgres: PostgresServer
) -> None:
    dsn = private_postgres.dsn("meter_races")
    await create_database(with_database(dsn, "postgres"), "meter_races")
    await migrate(dsn)
    recovery = Recovery(dsn, redis, engine)
    drains = Drains()
    world = World.build(n_orgs=2, members_per_org=2, seed=64)
    await world.store(dsn)
    await world.apply(engine)
    try:
        await recovery.guard(drains)
        assert await held_shared(dsn)

        # A restart alone, nothing settled meanwhile: the lock is taken again, nothing rebuilt.
        await private_postgres.stop()
        await private_postgres.start()
        await recovery.guard(drains)
        assert await held_shared(dsn)
        assert recovery.locks_lost == 1
        assert drains.count == 0 and recovery.rebuilds == 0

        # A restart with Redis rebuilt by another process before this one guards again, after
        # it settled org-1: that organization is drained and rebuilt once more.
        recovery.settling(["org-1"])
        await private_postgres.stop()
        await private_postgres.start()
        other = await asyncio.wait_for(exclusive_rebuild(dsn, redis, engine), 30)
        assert other.orgs == 2
        await asyncio.wait_for(recovery.guard(drains), 30)
        assert await held_shared(dsn)
        assert recovery.locks_lost == 2
        assert drains.count == 1 and recovery.rebuilds == 1
        assert await engine.has_org("org-0") and await engine.has_org("org-1")
    finally:
        with contextlib.suppress(Exception):
            await recovery.close()
