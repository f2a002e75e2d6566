"""Stored offsets beyond the end of a recreated topic: handled by `METER_OFFSET_RESET`."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest
from conftest import Running
from pipeline_support import World, assert_consistent, make_events, produce_events, wait_for

from consumers.offsets import OffsetsOutOfRange
from consumers.settle import HEALTH_COMPONENT, ConsumerOptions, build_consumer
from meter import metrics
from meter.engine.redis import RedisEngine
from meter.health import HEALTH
from meter.services import KafkaServer
from meter.settings import Settings


def _resets(topic: str, policy: str) -> float:
    labels = {"topic": topic, "where": "beyond_end", "policy": policy}
    return metrics.REGISTRY.get_sample_value("meter_consumer_offset_resets_total", labels) or 0.0


async def test_recreated_topic_settles_from_the_earliest_offset(
    settings: Settings,
    migrated_dsn: str,
    engine: RedisEngine,
    running: Running,
    private_kafka: KafkaServer,
) -> None:
    pipe = settings.model_copy(
        update={
            "kafka_bootstrap": private_kafka.address,
            "postgres_dsn": migrated_dsn,
            "consumer_group": f"settle-{uuid.uuid4().hex[:8]}",
        }
    )
    bootstrap, topic = private_kafka.address, pipe.usage_topic
    world = World.build(n_orgs=3, members_per_org=3, seed=81)
    await world.apply(engine)
    first = make_events(world, 300, seed=82, prefix="a")
    second = make_events(world, 100, seed=83, prefix="b")

    async def settled(n: int) -> bool:
        conn = await asyncpg.connect(migrated_dsn)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM settlements") == n)
        finally:
            await conn.close()

    await produce_events(bootstrap, topic, first)
    consumer = running.start(pipe, engine)
    await wait_for(lambda: settled(len(first)), what="the first events to settle")
    await running.stop(consumer)

    # The broker loses its records: the topic is created again, empty, and gets 100 events,
    # fewer than the offsets PostgreSQL holds.
    await private_kafka.stop()
    await private_kafka.start()
    await produce_events(bootstrap, topic, second)

    # With `fail`, the consumer stops and says why.
    failing = build_consumer(
        pipe.model_copy(update={"offset_reset": "fail"}),
        engine,
        options=ConsumerOptions(batch_max_records=500),
    )
    try:
        with pytest.raises(OffsetsOutOfRange):
            await failing.run()
        assert "offsets_out_of_range" in HEALTH.problems()[HEALTH_COMPONENT]
    finally:
        HEALTH.ok(HEALTH_COMPONENT)
    assert _resets(topic, "fail") >= 1

    # The default starts again from the earliest offset: all 100 settle.
    before = _resets(topic, "earliest")
    consumer = running.start(pipe, engine)
    await wait_for(lambda: settled(len(first) + len(second)), what="the new events to settle")
    await running.stop(consumer)
    assert consumer.settled == len(second)
    assert _resets(topic, "earliest") > before
    await assert_consistent(world, engine, migrated_dsn, [*first, *second])
