"""Per-tenant idempotency: the same source + id in two organizations settles once in each."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from conftest import Running
from pipeline_support import (
    Produced,
    World,
    assert_consistent,
    caught_up,
    produce_events,
    read_topic,
    wait_for,
)

from meter.engine.redis import RedisEngine
from meter.migrate import discover, migrate
from meter.settings import Settings
from meter.store import ms_to_datetime
from schemas.events import encode_event


def _event(world: World, org_id: str, event_id: str, credits: int) -> Produced:
    value = encode_event(
        event_id=event_id,
        source="//shared-source",
        org_id=org_id,
        member_id="m-1",
        credits=credits,
        time_ms=world.now_ms,
    )
    return Produced(f"//shared-source {event_id}", org_id, "m-1", credits, world.now_ms, value)


async def test_same_source_and_id_settles_once_per_organization(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=2, members_per_org=2, seed=71)
    await world.apply(engine)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    usage, group = pipe_settings.usage_topic, pipe_settings.consumer_group

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, usage)

    # In one batch: both organizations' events are in the topic before the consumer starts.
    same_batch = [_event(world, "org-0", "a", 1_250_000), _event(world, "org-1", "a", 2_500_000)]
    await produce_events(bootstrap, usage, same_batch)
    consumer = running.start(pipe_settings, engine)
    await wait_for(done, what="the same-batch pair to settle")

    # In separate batches: the second organization's event comes after the first one's is
    # written (the other tenant ingested it first).
    first = _event(world, "org-0", "b", 3_000_000)
    await produce_events(bootstrap, usage, [first])
    await wait_for(done, what="the first organization's event to settle")
    second = _event(world, "org-1", "b", 700_000)
    await produce_events(bootstrap, usage, [second])
    await wait_for(done, what="the second organization's event to settle")

    # A true duplicate (same organization, same key) still settles once.
    await produce_events(bootstrap, usage, [second])
    await wait_for(done, what="the duplicate to be read")
    await running.stop(consumer)

    events = [*same_batch, first, second]
    assert consumer.settled == 4
    assert await read_topic(bootstrap, pipe_settings.dlq_topic) == []
    await assert_consistent(world, engine, dsn, [*events, second])


async def test_migration_keeps_existing_settlements(pg_dsn_clean: str, tmp_path: Path) -> None:
    """0011 keeps the settlements written before it, and afterwards another organization may
    settle the same key."""
    for migration in discover():
        if migration.version < "0011":
            shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(pg_dsn_clean, tmp_path)
    conn = await asyncpg.connect(pg_dsn_clean)
    try:
        t = ms_to_datetime(1_780_000_000_000)
        insert = (
            "INSERT INTO settlements (key, org_id, member_id, period_start, period_end,"
            " event_time, credits, unfunded) VALUES ('//s e-1', $1, 'm', $2, $2, $2, 5, 0)"
        )
        line = (
            "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount)"
            " VALUES ('//s e-1', $1, 'b', 'seat', 5)"
        )
        await conn.execute(insert, "org-a", t)
        await conn.execute(line, "org-a")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "org-b", t)

        assert "0011" in await migrate(pg_dsn_clean)
        await conn.execute(insert, "org-b", t)
        # Lines carry their settlement's period since 0017.
        line = (
            "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount, period_start)"
            " VALUES ('//s e-1', $1, 'b', 'seat', 5, $2)"
        )
        await conn.execute(line, "org-b", t)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "org-a", t)
        rows = await conn.fetch("SELECT org_id, key FROM settlements ORDER BY org_id")
        assert [tuple(r) for r in rows] == [("org-a", "//s e-1"), ("org-b", "//s e-1")]
        assert await conn.fetchval("SELECT count(*) FROM settlement_lines") == 2
    finally:
        await conn.close()
