"""Voids in PostgreSQL, and `meter rebuild`: the totals leave voided settlements out, the returned
credits are recorded per bucket, and Redis rebuilt from PostgreSQL equals the reference model
with the same settlements and voids."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from conftest import Running
from pipeline_support import (
    Produced,
    World,
    assert_consistent,
    caught_up,
    make_events,
    produce_events,
    replay_model,
    wait_for,
)

from meter.admin import AdminService
from meter.engine.redis import RedisEngine
from meter.engine.types import UsageEvent
from meter.settings import Settings
from meter.store import SettlementStore
from schemas.events import encode_event


async def _rebuild_command(settings: Settings) -> None:
    env = dict(os.environ)
    env.update(
        METER_REDIS_URL=settings.redis_url or "",
        METER_POSTGRES_DSN=settings.postgres_dsn or "",
        METER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter.cli", "rebuild", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"rebuilt 3 organizations" in out, out.decode()[-3000:]


async def test_voids_totals_and_rebuild(
    pipe_settings: Settings,
    engine: RedisEngine,
    redis: aioredis.Redis,
    running: Running,
    pool: asyncpg.Pool,
) -> None:
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    world = World.build(n_orgs=3, members_per_org=4, seed=51)
    await world.store(dsn)
    await world.apply(engine)
    events = make_events(world, 400, seed=52)
    await produce_events(bootstrap, pipe_settings.usage_topic, events)
    consumer = running.start(pipe_settings, engine)

    async def done() -> bool:
        return await caught_up(
            bootstrap, dsn, pipe_settings.consumer_group, pipe_settings.usage_topic
        )

    await wait_for(done, what="catch up")
    await running.stop(consumer)

    at = world.now_ms + 1_000
    void_at = at + 1_000
    ledger, settled = replay_model(world, events, at)
    admin = AdminService(pool, engine, clock=lambda: void_at)
    by_key = {e.key: e for e in events}
    voided = sorted(key for _, key in settled)[::7]
    for key in voided:
        org_id = by_key[key].org_id
        out = await admin.void(org_id, key, "test")
        expected = ledger.void(org_id, key, void_at)
        assert out.voided and not out.duplicate
        assert [ln.bucket_id for ln in out.returned] == [ln.bucket_id for ln in expected.returned]
    again = await admin.void(by_key[voided[0]].org_id, voided[0], "test")
    assert again.voided and again.duplicate
    nothing = await admin.void("org-0", "//test never-settled", "test")
    assert not nothing.voided

    # A void that reaches PostgreSQL before the settlement's batch does: the batch applies it.
    member = world.members[0]
    late = Produced(
        "//test late-1", member.org_id, member.member_id, 1_500_000, world.now_ms,
        encode_event(event_id="late-1", source="//test", org_id=member.org_id,
                     member_id=member.member_id, credits=1_500_000, time_ms=world.now_ms),
    )  # fmt: skip
    ev = UsageEvent(late.key, late.org_id, late.member_id, late.credits, late.time_ms)
    (settlement,) = await engine.settle_batch(late.org_id, [ev], at)
    ledger.settle_batch(late.org_id, [ev], at)
    out = await admin.void(late.org_id, late.key, "test")
    ledger.void(late.org_id, late.key, void_at)
    assert out.voided and await pool.fetchval(
        "SELECT totals_pending FROM voids WHERE event_key = $1", late.key
    )
    store = SettlementStore(dsn)
    try:
        assert await store.write_batch("g", "t", [(settlement, None)], []) == 1
    finally:
        await store.close()
    assert not await pool.fetchval(
        "SELECT totals_pending FROM voids WHERE event_key = $1", late.key
    )
    all_events = [*events, late]
    await assert_consistent(world, engine, dsn, all_events, model=ledger)

    # Redis loses everything; `meter rebuild` puts back what PostgreSQL says.
    await redis.flushdb()
    await _rebuild_command(pipe_settings)
    assert all([await engine.has_org(org.org_id) for org in world.orgs])
    await assert_consistent(world, engine, dsn, all_events, model=ledger)

    # Redis forgot the void records; PostgreSQL did not: voiding again returns nothing twice.
    again = await admin.void(by_key[voided[1]].org_id, voided[1], "test")
    assert again.voided and again.duplicate
    await assert_consistent(world, engine, dsn, all_events, model=ledger)
