"""Loss detection per organization on the local Redis Cluster, with a real consumer settling:
one primary emptied mid-stream (only its organizations are rebuilt, the others never stop), and
a slot moved between primaries mid-stream (nothing lost, nothing settled twice)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    make_events,
    produce_events,
    read_topic,
    wait_for,
)

from consumers.settle import ConsumerOptions
from meter import quarantine
from meter.engine.redis import RedisEngine, org_key
from meter.engine.types import Reason
from meter.local_cluster import ClusterNode, LocalRedisCluster
from meter.rebuild import repair
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
    primaries = await cluster.primaries()
    client = connect(cluster.url)
    try:
        out = {}
        for org in world.orgs:
            slot = await client.cluster_keyslot(org_key(org.org_id))
            out[org.org_id] = next(
                node
                for node in primaries
                if any(a <= slot <= b for a, b in topology[node.endpoint].slots)
            )
        return out
    finally:
        await client.aclose()


async def test_one_primary_emptied_mid_stream(
    pipe_settings: Settings,
    running: Running,
    redis_cluster: LocalRedisCluster,
    cluster_client: aioredis.Redis,
    pool: asyncpg.Pool,
) -> None:
    """FLUSHALL on the primary of some organizations while events flow: the consumer meets
    them without their marker and rebuilds only them, one at a time; checks on the other
    primaries' organizations answer throughout; nothing drifts. Then the same loss with no
    consumer: the reconciler's `repair` rebuilds that shard's organizations alone."""
    settings = pipe_settings.model_copy(update={"redis_url": redis_cluster.url})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    topic, group = settings.usage_topic, settings.consumer_group
    engine = RedisEngine(cluster_client)
    world = World.build(n_orgs=24, members_per_org=3, seed=81)
    owner = await owners(redis_cluster, world)
    victim = owner["org-0"]
    lost = sorted(o for o, node in owner.items() if node is victim)
    kept = sorted(o for o in owner if o not in lost)
    assert lost and kept
    await world.store(dsn)
    await world.apply(engine)
    events = make_events(world, 900, seed=82)
    probes = [
        next(e for e in make_events(world, 400, seed=83, prefix=f"p{i}") if e.org_id == o)
        for i, o in enumerate(lost)
    ]

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    consumer = running.start(
        settings, engine, ConsumerOptions(batch_max_records=50), redis=cluster_client
    )
    await produce_events(bootstrap, topic, events[:300])
    await wait_for(done, what="first part settled")
    assert consumer.recovery is not None and consumer.recovery.rebuilds == 0

    # Checks on the other primaries' organizations, all along: they must always answer.
    members = {m.org_id: m.member_id for m in world.members}
    answers = {"checks": 0, "failed": 0}
    stop = asyncio.Event()

    async def check_others() -> None:
        while not stop.is_set():
            for org_id in kept:
                try:
                    result = await engine.check(org_id, members[org_id], 1, world.now_ms)
                except aioredis.RedisError:
                    answers["failed"] += 1
                    continue
                answers["checks"] += 1
                if result.reason is Reason.UNKNOWN_ORG:
                    answers["failed"] += 1
            await asyncio.sleep(0.01)

    checking = asyncio.create_task(check_others())
    try:
        produced = asyncio.create_task(produce_events(bootstrap, topic, events[300:600]))

        async def settling() -> bool:
            return consumer.settled > 330

        await wait_for(settling, what="the second part to start settling")
        await redis_cluster.flush_primary(victim)
        await produced
        await produce_events(bootstrap, topic, events[600:])
        await wait_for(done, timeout_s=90, what="everything settled after the loss")
        mid_stream = consumer.recovery.rebuilds

        # Timed: the shard empties again, then one event per organization of it arrives.
        await redis_cluster.flush_primary(victim)
        flushed_at = time.monotonic()
        await produce_events(bootstrap, topic, probes)

        async def lost_back() -> bool:
            return all([await engine.has_org(o) for o in lost]) and await done()

        await wait_for(lost_back, timeout_s=90, what="the shard's organizations rebuilt")
        recovered_s = time.monotonic() - flushed_at
    finally:
        stop.set()
        await checking
    await running.stop(consumer)

    assert answers["failed"] == 0 and answers["checks"] > 0, answers
    # The consumer rebuilt the lost organizations it met (mid-stream, some may have had no
    # event after the flush), then all of them: never one of another shard.
    assert 1 <= mid_stream <= len(lost)
    assert consumer.recovery.rebuilds == mid_stream + len(lost)
    assert all([await engine.has_org(o) for o in owner])
    events = [*events, *probes]
    assert consumer.settled == len(events)
    assert await read_topic(bootstrap, settings.dlq_topic) == []
    await assert_consistent(world, engine, dsn, events)
    print(
        f"\nprimary emptied: the consumer detected and rebuilt its {len(lost)} organizations "
        f"(of {len(owner)}) and settled an event of each {recovered_s:.2f}s after the flush; "
        f"{answers['checks']} checks of the other {len(kept)} all answered"
    )

    # No consumer this time: the reconciler's repair finds the shard's organizations alone.
    await redis_cluster.flush_primary(victim)
    started = time.perf_counter()
    report = await repair(pool, cluster_client, engine)
    repair_s = time.perf_counter() - started
    assert report is not None and report.orgs == len(lost) and not report.quarantined
    assert all([await engine.has_org(o) for o in owner])
    await assert_consistent(world, engine, dsn, events)
    print(f"repair of one emptied primary: {len(lost)} organizations in {repair_s:.2f}s")


async def test_a_slot_migrated_mid_stream(
    pipe_settings: Settings,
    running: Running,
    redis_cluster: LocalRedisCluster,
    cluster_client: aioredis.Redis,
    pool: asyncpg.Pool,
) -> None:
    """org-0's slot moves to another primary by the resharding steps while its events settle,
    and while the slot is split the new owner has forgotten its scripts: the engine follows
    ASK and MOVED, loads the scripts again, nothing is lost or settled twice, and no
    organization is taken for lost."""
    settings = pipe_settings.model_copy(update={"redis_url": redis_cluster.url})
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    topic, group = settings.usage_topic, settings.consumer_group
    engine = RedisEngine(cluster_client)
    world = World.build(n_orgs=3, members_per_org=3, seed=91)
    owner = await owners(redis_cluster, world)
    source = owner["org-0"]
    target = next(n for n in await redis_cluster.primaries() if n is not source)
    slot = await cluster_client.cluster_keyslot(org_key("org-0"))
    await world.store(dsn)
    await world.apply(engine)
    events = make_events(world, 600, seed=92)
    busy = [e for e in events if e.org_id == "org-0"]
    rest = [e for e in events if e.org_id != "org-0"]

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    consumer = running.start(
        settings, engine, ConsumerOptions(batch_max_records=20), redis=cluster_client
    )
    await produce_events(bootstrap, topic, rest[: len(rest) // 2])
    await wait_for(done, what="first part settled")

    async def while_migrating() -> None:
        # The slot is split: its keys moved, the source answers ASK. The target forgot its
        # functions (as a restarted node would): FCALL there answers "Function not found" first.
        direct = target.client()
        try:
            await direct.function_flush()
        finally:
            await direct.aclose()
        await produce_events(bootstrap, topic, busy[: len(busy) // 2])
        await wait_for(done, timeout_s=60, what="org-0's events settled while its slot moved")

    produced = asyncio.create_task(produce_events(bootstrap, topic, rest[len(rest) // 2 :]))
    try:
        await redis_cluster.migrate_slot(slot, target, while_migrating=while_migrating)
        await produced
        await produce_events(bootstrap, topic, busy[len(busy) // 2 :])
        await wait_for(done, timeout_s=90, what="everything settled after the move")
        await running.stop(consumer)
        assert (await owners(redis_cluster, world))["org-0"] is target
        assert consumer.recovery is not None and consumer.recovery.rebuilds == 0
        assert await quarantine.get(pool, "org-0") is None
        assert consumer.settled == len(events)
        assert await read_topic(bootstrap, settings.dlq_topic) == []
        await assert_consistent(world, engine, dsn, events)
    finally:
        if not produced.done():
            await produced
        if (await owners(redis_cluster, world))["org-0"] is not source:
            await redis_cluster.migrate_slot(slot, source)  # the next test finds the layout
