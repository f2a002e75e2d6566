"""The settlement consumer end to end: Kafka -> Redis -> PostgreSQL, in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from conftest import Running
from pipeline_support import (
    Produced,
    World,
    assert_consistent,
    caught_up,
    make_events,
    produce,
    produce_events,
    wait_for,
)

from consumers import settle as settle_module
from consumers.settle import ConsumerOptions
from consumers.stages import settle_waves
from meter.engine.redis import RedisEngine, settle_pipelined
from meter.engine.types import UsageEvent
from meter.settings import Settings


async def _drained(settings: Settings) -> None:
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, settings.consumer_group, settings.usage_topic)

    await wait_for(done, what="consumer to catch up")


async def test_settles_every_event_once(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=5, members_per_org=6)
    await world.apply(engine)
    events = make_events(world, 1500)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    await produce_events(pipe_settings.kafka_bootstrap, pipe_settings.usage_topic, events)
    running.start(pipe_settings, engine)
    await _drained(pipe_settings)
    await running.stop_all()
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, events)

    conn = await asyncpg.connect(pipe_settings.postgres_dsn)
    try:
        flags = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE member_limited), count(*) FILTER (WHERE unfunded > 0),"
            " count(DISTINCT period_start) FROM settlements"
        )
        kinds = {r[0] for r in await conn.fetch("SELECT DISTINCT kind FROM settlement_lines")}
    finally:
        await conn.close()
    assert flags[0] > 0 and flags[1] > 0  # the world is small enough to hit limits and overage
    assert flags[2] == 1
    assert kinds == {"seat", "shared"}


async def test_duplicates_and_out_of_order(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=3, members_per_org=4, seed=7)
    await world.apply(engine)
    events = make_events(world, 300, seed=8)
    shuffled = list(reversed(events[:150])) + events[150:]
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, topic = pipe_settings.kafka_bootstrap, pipe_settings.usage_topic

    await produce_events(bootstrap, topic, shuffled)
    consumer = running.start(pipe_settings, engine)
    await _drained(pipe_settings)
    # The same events again, in the same batch as new ones and in batches of their own.
    again = events[::3] + make_events(world, 50, seed=9, prefix="late") + events[1::5]
    await produce_events(bootstrap, topic, again)
    await _drained(pipe_settings)
    await running.stop(consumer)

    first_seen: dict[str, Produced] = {}
    for e in [*shuffled, *again]:
        first_seen.setdefault(e.key, e)
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, list(first_seen.values()))


async def test_empty_and_foreign_records_do_not_stop_the_partition(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=1, members_per_org=2)
    await world.apply(engine)
    events = make_events(world, 20)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    await produce(
        pipe_settings.kafka_bootstrap,
        pipe_settings.usage_topic,
        [(b"org-0", None), (b"org-0", b"\xff\xfe"), *[(b"org-0", e.value) for e in events]],
    )
    running.start(pipe_settings, engine)
    await _drained(pipe_settings)
    await running.stop_all()
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, events)


async def test_a_key_sent_again_in_the_next_batches_settles_once(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    """Each event comes again a few records later, so most duplicates fall in the next batch
    or the one after: looked up in PostgreSQL while the batch before is still being settled or
    written, and with every result confirmed (gone from Redis) as soon as it is written. Each
    key settles once, whichever of the lookup, the batches in flight or Redis catches it."""
    world = World.build(n_orgs=2, members_per_org=4, seed=21)
    await world.apply(engine)
    events = make_events(world, 400, seed=22)
    stream = []
    for i, event in enumerate(events):
        stream.append(event)
        if i >= 7:
            stream.append(events[i - 7])
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    await produce_events(pipe_settings.kafka_bootstrap, pipe_settings.usage_topic, stream)
    options = ConsumerOptions(batch_max_records=10, confirm_max_keys=1, confirm_interval_s=0.0)
    consumer = running.start(pipe_settings, engine, options)
    await _drained(pipe_settings)
    await running.stop(consumer)
    assert consumer.settled == len(events)
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, events)


async def test_a_pipeline_that_fails_leaves_each_organization_to_settle_alone(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settling a batch's organizations in one pipeline only saves round trips: when it fails
    whole, each organization is settled alone, and every event once."""
    tried: list[int] = []

    async def broken(engine: RedisEngine, calls: list[object], *args: object, **kw: object) -> None:
        tried.append(len(calls))
        raise RuntimeError("the pipeline broke")

    monkeypatch.setattr(settle_module, "settle_pipelined", broken)
    world = World.build(n_orgs=4, members_per_org=3, seed=31)
    events = make_events(world, 300, seed=32)
    options = ConsumerOptions(batch_max_records=40)
    await _settle_after_seats(pipe_settings, engine, running, world, events, options)
    assert tried and max(tried) > 1


async def _settle_after_seats(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    world: World,
    events: list[Produced],
    options: ConsumerOptions,
) -> None:
    """Settle `events` in two goes: the first 50, whose first batch issues the period's seats
    (alone, organization by organization), then the rest, where the pipelines are tried. Every
    event must settle once, with the totals it should."""
    await world.apply(engine)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, topic = pipe_settings.kafka_bootstrap, pipe_settings.usage_topic
    await produce_events(bootstrap, topic, events[:50])
    consumer = running.start(pipe_settings, engine, options)
    await _drained(pipe_settings)
    await produce_events(bootstrap, topic, events[50:])
    await _drained(pipe_settings)
    await running.stop(consumer)
    assert consumer.settled == len(events)
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, events)


def test_waves_keep_organizations_whole_and_in_order() -> None:
    def call(org_id: str, n: int) -> tuple[str, list[UsageEvent]]:
        return org_id, [UsageEvent(f"k{i}", org_id, "m", 1, 0) for i in range(n)]

    calls = [call("a", 3), call("b", 1), call("c", 6), call("d", 2), call("e", 1)]
    waves = settle_waves(calls, 4)
    assert [[org for org, _ in wave] for wave in waves] == [["a", "b"], ["c"], ["d", "e"]]
    assert [c for wave in waves for c in wave] == calls
    assert settle_waves([], 4) == []
    assert [len(w) for w in settle_waves(calls, 1)] == [1, 1, 1, 1, 1]


async def test_a_batch_settles_in_waves_and_a_failed_wave_goes_alone(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's organizations go to Redis in waves, the next sent while the consumer sorts the
    last one's results; one organization a wave here, and every third wave fails whole (its
    organization then settles alone). Every event settles once, with the totals it should."""
    waves: list[list[str]] = []

    async def every_third_fails(
        engine: RedisEngine, calls: list[tuple[str, list[UsageEvent]]], *args: object, **kw: bool
    ) -> object:
        waves.append([org_id for org_id, _ in calls])
        if len(waves) % 3 == 0:
            raise RuntimeError("the pipeline broke")
        return await settle_pipelined(engine, calls, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(settle_module, "settle_pipelined", every_third_fails)
    world = World.build(n_orgs=5, members_per_org=3, seed=41)
    events = make_events(world, 600, seed=42)
    options = ConsumerOptions(batch_max_records=200, wave_events=1)
    await _settle_after_seats(pipe_settings, engine, running, world, events, options)
    assert waves and all(len(wave) == 1 for wave in waves)
    assert len(waves) >= 6  # several batches of several waves, two of them failed


async def test_the_next_batch_is_decoded_while_one_settles(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    """The consumer reads and decodes the next batch in the time it waits for PostgreSQL's
    lookup and for Redis: decoding goes on while a batch is prepared."""
    world = World.build(n_orgs=3, members_per_org=3, seed=31)
    await world.apply(engine)
    events = make_events(world, 200, seed=32)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap = pipe_settings.kafka_bootstrap
    await produce_events(bootstrap, pipe_settings.usage_topic, events)
    consumer = running.start(pipe_settings, engine, ConsumerOptions(batch_max_records=50))
    steps: list[str] = []
    decode, prepare = consumer.decoder, consumer._prepare

    def logged_decode(raw: bytes, at_ms: int) -> Any:
        steps.append("decode")
        return decode(raw, at_ms)

    later = make_events(world, 5, seed=36, prefix="later")
    hold = False

    async def logged_prepare(fetched: Any) -> Any:
        nonlocal hold
        steps.append("prepare")
        try:
            if hold:
                # More events come while this batch is prepared.
                hold = False
                await produce_events(bootstrap, pipe_settings.usage_topic, later)
                await asyncio.sleep(0.3)
            return await prepare(fetched)
        finally:
            steps.append("prepared")

    def decoded_during_each_prepare() -> list[int]:
        return [
            steps[start + 1 : steps.index("prepared", start)].count("decode")
            for start, step in enumerate(steps)
            if step == "prepare"
        ]

    consumer.decoder, consumer._prepare = logged_decode, logged_prepare  # type: ignore[method-assign]
    await _drained(pipe_settings)
    during = decoded_during_each_prepare()
    assert len(during) >= 4 and sum(during) >= 100, during

    # Caught up, the consumer does not read ahead: what comes while a batch is prepared is
    # polled after it.
    steps.clear()
    hold = True
    more = make_events(world, 5, seed=35, prefix="late")
    await produce_events(bootstrap, pipe_settings.usage_topic, more)
    await _drained(pipe_settings)
    await running.stop(consumer)
    assert not hold and steps.count("decode") == len(more) + len(later), steps
    assert not any(decoded_during_each_prepare()), steps
    assert consumer.settled == len(events) + len(more) + len(later)
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, [*events, *more, *later])


async def test_records_read_ahead_of_a_dropped_batch_are_read_again(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    """A batch dropped while it settles (a rebalance, a Redis that lost its data) sends the
    consumer back to the offsets PostgreSQL holds. The batch read ahead meanwhile is dropped
    too and read again: every event still settles, once."""
    world = World.build(n_orgs=3, members_per_org=3, seed=33)
    await world.apply(engine)
    events = make_events(world, 300, seed=34)
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    await produce_events(pipe_settings.kafka_bootstrap, pipe_settings.usage_topic, events)
    consumer = running.start(pipe_settings, engine, ConsumerOptions(batch_max_records=50))
    settle, resyncs = consumer._settle, 0

    async def settle_then_resync(*args: Any) -> Any:
        nonlocal resyncs
        result = await settle(*args)
        if resyncs < 3:
            await asyncio.sleep(0.1)  # the next batch is read ahead meanwhile
            resyncs += 1
            consumer._resync = True
        return result

    consumer._settle = settle_then_resync  # type: ignore[method-assign]
    await _drained(pipe_settings)
    await running.stop(consumer)
    assert resyncs == 3
    assert consumer.settled == len(events)
    await assert_consistent(world, engine, pipe_settings.postgres_dsn, events)
