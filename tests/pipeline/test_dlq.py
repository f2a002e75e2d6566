"""Poison messages go to the dead-letter topic with their bytes and a reason; replay."""

from __future__ import annotations

from conftest import Running
from pipeline_support import (
    Produced,
    World,
    assert_consistent,
    caught_up,
    dlq_reasons,
    make_events,
    produce,
    read_topic,
    wait_for,
)

from consumers.dlq import (
    MESSAGE,
    ORIGINAL_REASON,
    ORIGINAL_SIZE,
    PREFIX_BYTES,
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    TOO_LARGE,
    TRUNCATED,
    header,
    replay,
)
from meter.engine.redis import RedisEngine
from meter.engine.types import MemberConfig
from meter.settings import Settings
from schemas.events import encode_event


async def test_poison_is_dead_lettered_and_replayable(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    world = World.build(n_orgs=2, members_per_org=3)
    await world.apply(engine)
    good = make_events(world, 200)
    t = world.now_ms
    poison: list[tuple[bytes, bytes]] = [
        (b"org-0", b"not json at all"),
        (b"org-0", b'{"specversion": "1.0"}'),
        (b"org-0", good[0].value.replace(b'"credits":"', b'"credits":"-')),
        (b"org-1", encode_event(event_id="p1", source="//t", org_id="org-1", member_id="m-0",
                                credits=1, time_ms=t).replace(b'"0.000001"', b'"0.0000001"')),
        (b"org-9", encode_event(event_id="p2", source="//t", org_id="org-9", member_id="m-0",
                                credits=5, time_ms=t)),
        (b"org-1", encode_event(event_id="p3", source="//t", org_id="org-1", member_id="late-m",
                                credits=2_000_000, time_ms=t)),
    ]  # fmt: skip
    items = [(e.org_id.encode(), e.value) for e in good[:100]]
    items += poison
    items += [(e.org_id.encode(), e.value) for e in good[100:]]
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    usage, dlq, group = (
        pipe_settings.usage_topic,
        pipe_settings.dlq_topic,
        pipe_settings.consumer_group,
    )
    await produce(bootstrap, usage, items)
    consumer = running.start(pipe_settings, engine)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, usage)

    await wait_for(done, what="catch up")
    dead = await read_topic(bootstrap, dlq)
    assert dlq_reasons(dead) == {
        "invalid_json": 1,
        "invalid_schema": 1,
        "invalid_credits": 2,
        "unknown_org": 1,
        "unknown_member": 1,
    }
    assert sorted(r.value for r in dead) == sorted(v for _, v in poison)
    for r in dead:
        assert header(r.headers, SOURCE_TOPIC) == usage
        assert int(header(r.headers, SOURCE_PARTITION) or -1) >= 0
        assert int(header(r.headers, SOURCE_OFFSET) or -1) >= 0
        assert r.key in {k for k, _ in poison}
    await assert_consistent(world, engine, dsn, good)

    # The admin adds the missing member; replaying unknown_member settles it.
    member = MemberConfig("org-1", "late-m")
    world.members.append(member)
    await engine.put_member(member)
    report = await replay(bootstrap, dlq, usage, reasons={"unknown_member"})
    assert report.scanned == 6 and report.replayed == 1
    await wait_for(done, what="replay settled")
    await running.stop(consumer)
    replayed = Produced("//t p3", "org-1", "late-m", 2_000_000, t, poison[5][1])
    await assert_consistent(world, engine, dsn, [*good, replayed])
    assert len(await read_topic(bootstrap, dlq)) == 6


async def test_credits_beyond_the_engine_range_are_dead_lettered(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    """An event of more credits than the engine can count exactly is refused at decoding even
    when `max_event_credits` says more (settings are validated against the engine's range, but
    this one was not), goes to the dead-letter topic, and the rest of its organization's batch
    settles."""
    settings = pipe_settings.model_copy(update={"max_event_credits": 2**60})
    world = World.build(n_orgs=2, members_per_org=3, seed=5)
    await world.apply(engine)
    good = make_events(world, 120, seed=6)
    huge = encode_event(event_id="huge", source="//t", org_id="org-0", member_id="m-0",
                        credits=2**54, time_ms=world.now_ms)  # fmt: skip
    items = [(e.org_id.encode(), e.value) for e in good[:60]]
    items += [(b"org-0", huge)]
    items += [(e.org_id.encode(), e.value) for e in good[60:]]
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    await produce(bootstrap, settings.usage_topic, items)
    consumer = running.start(settings, engine)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, settings.consumer_group, settings.usage_topic)

    await wait_for(done, what="catch up")
    await running.stop(consumer)
    dead = await read_topic(bootstrap, settings.dlq_topic)
    assert dlq_reasons(dead) == {"invalid_credits": 1}
    assert dead[0].value == huge
    assert "too_large" in (header(dead[0].headers, MESSAGE) or "")
    assert consumer.settled == len(good)
    await assert_consistent(world, engine, dsn, good, dead_keys=["//t huge"])


async def test_oversized_record_is_dead_lettered_truncated(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    """A record just under what a default producer sends (1 MiB) makes a dead letter over it,
    which the producer refuses: the letter goes out truncated, with the original size and
    position, and the records after it on its partition settle."""
    world = World.build(n_orgs=2, members_per_org=3, seed=8)
    await world.apply(engine)
    good = make_events(world, 160, seed=9)
    oversized = b'{"specversion": "1.0", "pad": "' + b"x" * (1_048_400 - 33) + b'"}'
    assert len(oversized) == 1_048_400
    # Key org-0: every org-0 event after it is on the same partition.
    items = [(e.org_id.encode(), e.value) for e in good[:80]]
    items += [(b"org-0", oversized)]
    items += [(e.org_id.encode(), e.value) for e in good[80:]]
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    usage, dlq = pipe_settings.usage_topic, pipe_settings.dlq_topic
    await produce(bootstrap, usage, items)
    consumer = running.start(pipe_settings, engine)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, pipe_settings.consumer_group, usage)

    await wait_for(done, what="catch up past the oversized record")
    await running.stop(consumer)
    (letter,) = await read_topic(bootstrap, dlq)
    assert header(letter.headers, REASON) == TOO_LARGE
    assert header(letter.headers, TRUNCATED) == "1"
    assert header(letter.headers, ORIGINAL_REASON) == "event_too_large"
    assert header(letter.headers, ORIGINAL_SIZE) == str(len(oversized))
    assert header(letter.headers, SOURCE_TOPIC) == usage
    (source,) = [r for r in await read_topic(bootstrap, usage) if r.value == oversized]
    assert header(letter.headers, SOURCE_PARTITION) == str(source.partition)
    assert header(letter.headers, SOURCE_OFFSET) == str(source.offset)
    assert letter.key == b"org-0"
    assert letter.value == oversized[:PREFIX_BYTES]
    assert consumer.settled == len(good)
    await assert_consistent(world, engine, dsn, good)

    # It cannot be replayed: replay skips it and says so.
    report = await replay(bootstrap, dlq, usage)
    assert (report.scanned, report.replayed, report.truncated) == (1, 0, 1)
