"""One organization pushing its period counters to the engine's bound (2**53 - 1 micro-credits)
stops no one: its overflowing events are dead-lettered with `counter_overflow`, every other event
settles, and after Redis loses everything `meter rebuild` succeeds and Redis equals PostgreSQL
and the reference model again."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import redis.asyncio as aioredis
from conftest import Running
from pipeline_support import (
    Produced,
    World,
    assert_consistent,
    caught_up,
    dlq_reasons,
    make_events,
    produce_events,
    read_topic,
    replay_model,
    wait_for,
)

from consumers.dlq import MESSAGE, header
from meter.engine.redis import RedisEngine
from meter.engine.types import MAX_AMOUNT
from meter.settings import Settings
from schemas.events import encode_event

LARGE = 2**51
"""Credits of one large event (micro-credits): a few of them fill an organization's counters."""


async def rebuild_command(settings: Settings, orgs: int) -> None:
    """`meter rebuild` in a process of its own; it must succeed for every organization."""
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
    assert f"rebuilt {orgs} organizations".encode() in out, out.decode()[-3000:]


def large_events(world: World, n: int) -> list[Produced]:
    """`n` events of `LARGE` micro-credits of org-0's first member."""
    out = []
    for i in range(n):
        value = encode_event(event_id=f"large-{i}", source="//big", org_id="org-0",
                             member_id="m-0", credits=LARGE, time_ms=world.now_ms)  # fmt: skip
        out.append(Produced(f"//big large-{i}", "org-0", "m-0", LARGE, world.now_ms, value))
    return out


async def test_an_organization_at_the_bound_stops_no_one(
    pipe_settings: Settings, engine: RedisEngine, redis: aioredis.Redis, running: Running
) -> None:
    settings = pipe_settings.model_copy(update={"max_event_credits": LARGE})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    world = World.build(n_orgs=2, members_per_org=3, seed=61)
    await world.store(dsn)
    await world.apply(engine)
    normal = make_events(world, 300, seed=62)
    large = large_events(world, 8)
    events = [*normal[:100], *large[:4], *normal[100:200], *large[4:], *normal[200:]]
    _, settled = replay_model(world, events, world.now_ms + 1_000)
    overflowed = [e.key for e in large if (e.org_id, e.key) not in settled]
    assert 4 <= len(overflowed) < len(large)  # the model refuses them too
    assert all((e.org_id, e.key) in settled for e in normal)

    started = time.monotonic()
    await produce_events(bootstrap, settings.usage_topic, events)
    consumer = running.start(settings, engine)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, settings.consumer_group, settings.usage_topic)

    await wait_for(done, what="catch up")
    print(f"\nsettled {consumer.settled} events in {time.monotonic() - started:.2f} s")
    await running.stop(consumer)
    dead = await read_topic(bootstrap, settings.dlq_topic)
    assert dlq_reasons(dead) == {"counter_overflow": len(overflowed)}
    assert sorted(r.value for r in dead) == sorted(e.value for e in large if e.key in overflowed)
    assert "org-0" in (header(dead[0].headers, MESSAGE) or "")
    assert consumer.settled == len(settled)
    await assert_consistent(world, engine, dsn, events, dead_keys=overflowed)
    usage = await engine.usage("org-0", world.now_ms + 1_000)
    assert max(usage.values()) <= MAX_AMOUNT
    assert usage["unfunded"] + LARGE > MAX_AMOUNT  # the bound was reached, not avoided

    # Redis loses everything: the rebuild puts every organization back, org-0 included.
    await redis.flushdb()
    await rebuild_command(settings, orgs=2)
    assert all([await engine.has_org(org.org_id) for org in world.orgs])
    await assert_consistent(world, engine, dsn, events, dead_keys=overflowed)

    # And settling goes on: more of both organizations' events after the rebuild.
    more = make_events(world, 100, seed=63, prefix="after")
    await produce_events(bootstrap, settings.usage_topic, more)
    consumer = running.start(settings, engine)
    await wait_for(done, what="catch up after the rebuild")
    await running.stop(consumer)
    await assert_consistent(world, engine, dsn, [*events, *more], dead_keys=overflowed)
