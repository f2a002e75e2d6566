"""The pipeline on the local Redis Cluster: a real consumer settles organizations whose slots
are spread over every primary, and rides out the SIGKILL of one primary mid-stream (its replica
is promoted), ending with Redis = PostgreSQL = a replay."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
import redis.asyncio as aioredis
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    consume_env,
    make_events,
    produce_events,
    read_topic,
    wait_for,
)

from consumers.settle import ConsumerOptions
from meter.engine.redis import RedisEngine, org_key
from meter.engine.types import Reason
from meter.local_cluster import ClusterNode, LocalRedisCluster
from meter.redis_client import connect
from meter.settings import Settings


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_client(redis_cluster: LocalRedisCluster) -> AsyncIterator[aioredis.Redis]:
    """A client of the local cluster, emptied first (the pipeline worlds reuse org ids)."""
    await redis_cluster.flush()
    client = connect(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


async def owners(cluster: LocalRedisCluster, world: World) -> dict[str, ClusterNode]:
    """The primary owning each organization's slot."""
    topology = {info.endpoint: info for info in await cluster.topology()}
    client = connect(cluster.url)
    try:
        out = {}
        for org in world.orgs:
            slot = await client.cluster_keyslot(org_key(org.org_id))
            out[org.org_id] = next(
                node
                for node in await cluster.primaries()
                if any(a <= slot <= b for a, b in topology[node.endpoint].slots)
            )
        return out
    finally:
        await client.aclose()


async def test_meter_consume_settles_organizations_spread_over_every_primary(
    pipe_settings: Settings,
    redis_cluster: LocalRedisCluster,
    cluster_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """`meter consume` with `METER_REDIS_URL=redis+cluster://...` settles every event."""
    settings = pipe_settings.model_copy(update={"redis_url": redis_cluster.url})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    topic, group = settings.usage_topic, settings.consumer_group
    engine = RedisEngine(cluster_client)
    world = World.build(n_orgs=9, members_per_org=4, seed=61)
    assert len({node.endpoint for node in (await owners(redis_cluster, world)).values()}) == 3
    await world.store(dsn)
    await world.apply(engine)
    events = make_events(world, 1500, seed=62)
    await produce_events(bootstrap, topic, events)

    log = tmp_path / "consume.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meter.cli", "consume", "--batch", "200",
            env=consume_env(settings), stdout=out, stderr=out,
        )  # fmt: skip

    async def done() -> bool:
        assert proc.returncode is None, log.read_text()[-3000:]
        return await caught_up(bootstrap, dsn, group, topic)

    try:
        await wait_for(done, timeout_s=90, what="meter consume to settle everything")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
    assert code == 0, log.read_text()[-3000:]
    assert await read_topic(bootstrap, settings.dlq_topic) == []
    await assert_consistent(world, engine, dsn, events)


async def test_a_primary_killed_mid_stream(
    pipe_settings: Settings,
    running: Running,
    redis_cluster: LocalRedisCluster,
    cluster_client: aioredis.Redis,
) -> None:
    """SIGKILL of the primary owning some organizations while events flow: its replica takes
    over, checks on those organizations answer again, settling resumes, and nothing drifts."""
    settings = pipe_settings.model_copy(update={"redis_url": redis_cluster.url})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    topic, group = settings.usage_topic, settings.consumer_group
    engine = RedisEngine(cluster_client)
    world = World.build(n_orgs=6, members_per_org=4, seed=71)
    owner = await owners(redis_cluster, world)
    victim = owner["org-0"]
    try:
        await world.store(dsn)
        await world.apply(engine)
        events = make_events(world, 2400, seed=72)

        async def done() -> bool:
            return await caught_up(bootstrap, dsn, group, topic)

        options = ConsumerOptions(batch_max_records=100, retry_max_s=0.3)
        consumer = running.start(settings, engine, options, redis=cluster_client)
        await produce_events(bootstrap, topic, events[:800])
        await wait_for(done, what="first part settled")

        produced = asyncio.create_task(produce_events(bootstrap, topic, events[800:1600]))

        async def settling() -> bool:
            return consumer.settled > 800

        checker = connect(redis_cluster.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            await wait_for(settling, what="the second part to start settling")
            killer = asyncio.create_task(redis_cluster.kill_primary(victim))

            async def killed() -> bool:
                return not victim.running

            await wait_for(killed, what="the primary to die")
            killed_at = time.monotonic()
            check_engine = RedisEngine(checker)
            while True:
                try:
                    result = await check_engine.check("org-0", "m-1", 1, world.now_ms)
                    break
                except (aioredis.RedisError, OSError):
                    assert time.monotonic() - killed_at < 30, "checks never answered again"
                    await asyncio.sleep(0.01)
            answered_after_s = time.monotonic() - killed_at
            promoted = await killer
            assert result.reason is not Reason.UNKNOWN_ORG
            assert promoted.endpoint != victim.endpoint
            print(f"checks on the killed primary's organizations answered {answered_after_s:.2f}s")
        finally:
            await checker.aclose()
            await produced

        await produce_events(bootstrap, topic, events[1600:])
        await wait_for(done, timeout_s=90, what="settling to resume after the failover")
        await running.stop(consumer)
        assert consumer.settled == len(events)
        assert await read_topic(bootstrap, settings.dlq_topic) == []
        await assert_consistent(world, engine, dsn, events)
    finally:
        await redis_cluster.restart(victim)  # the next test finds three primaries again
