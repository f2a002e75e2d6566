"""Faults injected for real: kill -9 of a `meter consume` process, PostgreSQL stopped
mid-stream, Redis restarted empty mid-stream, and two consumers sharing a group."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import redis.asyncio as aioredis
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    consume_env,
    make_events,
    produce,
    produce_events,
    read_topic,
    wait_for,
)

from consumers.dlq import REASON, TOO_LARGE, header
from consumers.settle import ConsumerOptions
from meter.engine.redis import RedisEngine
from meter.migrate import migrate
from meter.services import PostgresServer, RedisServer, create_database, with_database
from meter.settings import Settings


async def _spawn(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meter.cli", "consume", "--batch", "150",
            env=consume_env(settings), stdout=out, stderr=out,
        )  # fmt: skip


async def test_kill_9_at_random_points(
    pipe_settings: Settings, engine: RedisEngine, tmp_path: Path
) -> None:
    world = World.build(n_orgs=6, members_per_org=5, seed=11)
    await world.apply(engine)
    events = make_events(world, 3000, seed=12)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    topic, group = pipe_settings.usage_topic, pipe_settings.consumer_group
    rnd = random.Random(13)
    log = tmp_path / "consume.log"
    chunks = [events[i : i + 600] for i in range(0, len(events), 600)]
    # A record just under 1 MiB whose dead letter the producer refuses as it is.
    oversized = b"{" + b" " * 1_048_398 + b"}"
    for n, chunk in enumerate(chunks):
        await produce_events(bootstrap, topic, chunk)
        if n == 1:
            await produce(bootstrap, topic, [(b"org-1", oversized)])
        proc = await _spawn(pipe_settings, log)
        await asyncio.sleep(rnd.uniform(1.0, 3.0))  # a random point in the stream, not readiness
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL

    proc = await _spawn(pipe_settings, log)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    try:
        await wait_for(done, timeout_s=90, what="restarted consumer to catch up")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
    assert code == 0, log.read_text()[-3000:]
    await assert_consistent(world, engine, dsn, events)
    dead = await read_topic(bootstrap, pipe_settings.dlq_topic)
    assert dead and {header(r.headers, REASON) for r in dead} == {TOO_LARGE}


async def test_postgres_down_mid_stream(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    private_postgres: PostgresServer,
) -> None:
    dsn = private_postgres.dsn("meter_pipe")
    await create_database(with_database(dsn, "postgres"), "meter_pipe")
    await migrate(dsn)
    settings = pipe_settings.model_copy(update={"postgres_dsn": dsn})
    world = World.build(n_orgs=4, members_per_org=5, seed=21)
    await world.apply(engine)
    events = make_events(world, 2000, seed=22)
    assert settings.kafka_bootstrap
    bootstrap, topic, group = (
        settings.kafka_bootstrap,
        settings.usage_topic,
        settings.consumer_group,
    )

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    options = ConsumerOptions(batch_max_records=100, retry_max_s=0.5)
    consumer = running.start(settings, engine, options)
    await produce_events(bootstrap, topic, events[:500])
    await wait_for(done, what="first part settled")
    await private_postgres.kill()
    retries = consumer.retries
    await produce_events(bootstrap, topic, events[500:])

    async def retrying() -> bool:
        return consumer.retries >= retries + 3

    await wait_for(retrying, what="the consumer to meet the dead server and keep retrying")
    settled_while_down = consumer.settled
    await private_postgres.start()
    await wait_for(done, what="recovery after PostgreSQL came back")
    await running.stop(consumer)
    assert consumer.settled == 2000 > settled_while_down
    await assert_consistent(world, engine, dsn, events)


async def test_two_consumers_in_one_group(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=8, members_per_org=4, seed=31)
    await world.apply(engine)
    events = make_events(world, 3000, seed=32)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    topic, group = pipe_settings.usage_topic, pipe_settings.consumer_group

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    options = ConsumerOptions(batch_max_records=100)
    first = running.start(pipe_settings, engine, options)
    await produce_events(bootstrap, topic, events[:1000])
    second = running.start(pipe_settings, engine, options)
    await produce_events(bootstrap, topic, events[1000:2000])
    await running.stop(first)  # the second takes over every partition
    await produce_events(bootstrap, topic, events[2000:])
    await wait_for(done, what="both consumers to settle everything")
    await running.stop(second)
    assert second.settled > 0
    assert first.settled + second.settled == len(events)
    await assert_consistent(world, engine, dsn, events)


async def test_redis_restarts_empty_mid_stream(
    pipe_settings: Settings, running: Running, private_redis: RedisServer
) -> None:
    """Redis loses everything while events flow: the consumer meets each organization without
    its marker, rebuilds it from PostgreSQL before settling its events, and ends where a replay
    of every event ends."""
    settings = pipe_settings.model_copy(update={"redis_url": private_redis.address})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    topic, group = settings.usage_topic, settings.consumer_group
    client = aioredis.Redis.from_url(private_redis.address)
    try:
        engine = RedisEngine(client)
        world = World.build(n_orgs=4, members_per_org=5, seed=41)
        await world.store(dsn)
        await world.apply(engine)
        events = make_events(world, 2400, seed=42)

        async def done() -> bool:
            return await caught_up(bootstrap, dsn, group, topic)

        options = ConsumerOptions(batch_max_records=100, retry_max_s=0.3)
        consumer = running.start(settings, engine, options, redis=client)
        await produce_events(bootstrap, topic, events[:800])
        await wait_for(done, what="first part settled")
        assert consumer.recovery is not None and consumer.recovery.rebuilds == 0

        # Mid-stream: the server goes away while the next events arrive, and comes back empty.
        produced = asyncio.create_task(produce_events(bootstrap, topic, events[800:1600]))

        async def settling() -> bool:
            return consumer.settled > 800

        await wait_for(settling, what="the second part to start settling")
        await private_redis.kill()
        await produced
        await private_redis.start()
        await produce_events(bootstrap, topic, events[1600:])
        await wait_for(done, what="recovery after Redis came back empty")
        await running.stop(consumer)

        assert consumer.recovery.rebuilds >= 1
        assert all([await engine.has_org(org.org_id) for org in world.orgs])
        assert consumer.settled == len(events)
        assert await read_topic(bootstrap, settings.dlq_topic) == []
        await assert_consistent(world, engine, dsn, events)
    finally:
        await client.aclose()
