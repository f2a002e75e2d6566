"""Batches settled while a write is held up are written together, exactly once."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    make_events,
    produce_events,
    wait_for,
)

from consumers.settle import Batch, ConsumerOptions, merge_batches
from meter.engine.redis import KIND_CODE, RedisEngine
from meter.engine.types import Kind, Line, Period, Settlement
from meter.settings import Settings
from meter.store import (
    BatchRows,
    Encoded,
    OffsetAdvance,
    RowsBuilder,
    batch_rows,
    by_identity,
    encoded,
    merge_rows,
    ms_to_datetime,
)

DAY_MS = 86_400_000
START = 1_796_083_200_000  # a period start, midnight UTC


def _encoded(key: str, org_id: str, member: str, at_ms: int, end_ms: int, amount: int) -> Encoded:
    """A settlement as the engine encodes it: a seat line and, for odd amounts, a pool line."""
    lines = [f"{org_id}-{member}-seat", "s", str(amount - amount % 2)]
    if amount % 2:
        lines += [f"{org_id}-pool", "h", "1"]
    enc = "\x1f".join(
        [member, str(amount), str(at_ms), str(START), str(end_ms), "g1", "0", "0", "", *lines]
    )
    return (key, org_id, enc, None, None)


def _batch(seq: int, offsets: list[OffsetAdvance], keys: list[str]) -> Batch:
    store = [_encoded(k, "org", "m", START + i, START + 30 * DAY_MS, 3) for i, k in enumerate(keys)]
    return Batch(
        seq=seq,
        generation=1,
        offsets=offsets,
        rows=batch_rows(store),
        keys_by_org={"org": list(keys)},
        records=len(keys),
        duplicates=1,
        dead=0,
        replayed=0,
        polled_at=float(seq),
        timings={"engine_ms": 1.0},
    )


def test_merged_batches_advance_each_partition_from_first_to_last() -> None:
    a = _batch(1, [OffsetAdvance(0, 10, 12), OffsetAdvance(1, 5, 6)], ["a", "b"])
    b = _batch(2, [OffsetAdvance(0, 12, 15)], ["c"])
    c = _batch(3, [OffsetAdvance(1, 6, 9), OffsetAdvance(2, 0, 4)], ["d"])
    merged = merge_batches([a, b, c])
    assert sorted(merged.offsets, key=lambda o: o.partition) == [
        OffsetAdvance(0, 10, 15),
        OffsetAdvance(1, 5, 9),
        OffsetAdvance(2, 0, 4),
    ]
    assert [row[0] for row in merged.rows.in_order()] == ["a", "b", "c", "d"]
    assert merged.keys_by_org == {"org": ["a", "b", "c", "d"]}
    assert (merged.seq, merged.records, merged.duplicates) == (3, 4, 3)
    assert merged.polled_at == 1.0
    assert merged.timings == {"engine_ms": 3.0}
    assert merge_batches([a]) is a
    everything = a.rows.settlements + b.rows.settlements + c.rows.settlements
    assert sorted(merged.rows.settlements) == sorted(everything)


def _sorted(rows: BatchRows) -> tuple[list[tuple[object, ...]], ...]:
    return sorted(rows.settlements), sorted(rows.totals)


def test_merged_rows_are_the_rows_of_the_merged_batches() -> None:
    """Rows built per batch and merged for one write are exactly those built for all the
    batches at once: same settlements, lines and keys, totals added up per member, billing
    group, period and day (two days, two organizations, a period end that moved later)."""
    end, later = START + 30 * DAY_MS, START + 31 * DAY_MS
    parts = [
        [
            _encoded(f"k{b}-{i}", f"o{i % 2}", f"m{i % 3}", START + (i % 2) * DAY_MS + b, end, i)
            for i in range(1, 40)
        ]
        for b in range(3)
    ]
    parts.append([_encoded("k-late", "o0", "m0", START + 5, later, 7)])
    merged = merge_rows([batch_rows(p) for p in parts])
    whole = batch_rows([item for p in parts for item in p])
    assert _sorted(merged) == _sorted(whole)
    # Written in (organization, key) order, the order of the unique indexes.
    identities = [(row[1], row[0]) for row in merged.settlements]
    assert identities == sorted(identities) and identities != sorted(identities, key=lambda i: i[1])
    assert whole.settlements == sorted(whole.settlements, key=by_identity)
    assert len(merged.totals) < sum(len(batch_rows(p).totals) for p in parts)


def test_rows_left_out_of_order_are_put_in_order_once_written() -> None:
    """The consumer leaves each batch's rows as they came (`rows(ordered=False)`); merged, or
    written alone, they are the rows built in order, with the same keys, runs, period starts."""
    end = START + 30 * DAY_MS
    parts = [
        [_encoded(f"k{9 - i}-{b}", f"o{i % 3}", f"m{i % 2}", START + i, end, i) for i in range(9)]
        for b in range(2)
    ]

    def unordered(items: list[Encoded]) -> BatchRows:
        builder = RowsBuilder()
        builder.add(items)
        return builder.rows(ordered=False)

    alone = unordered(parts[0])
    assert not alone.ordered and alone.settlements != batch_rows(parts[0]).settlements
    assert alone.in_order() == batch_rows(parts[0]).settlements and alone.ordered
    merged = merge_rows([unordered(p) for p in parts])
    whole = batch_rows([item for p in parts for item in p])
    assert merged.ordered and merged.settlements == whole.settlements
    assert merged.starts == whole.starts == {(START - 946_684_800_000) * 1000}
    assert {run: sorted(keys) for run, keys in merged.runs.items()} == {
        run: sorted(keys) for run, keys in whole.runs.items()
    }
    assert sorted(merged.drawn.items()) == sorted(whole.drawn.items()) and whole.drawn


def test_batch_rows_hold_each_settlement_and_its_totals() -> None:
    """Each settlement's record and its totals per kind, from the engine's encoding: a seat line
    of all the credits, one of part of them beside unfunded credits, a line of another kind whose
    amount is written differently from the credits, two lines, none, and flags."""
    period = Period(START, START + 30 * DAY_MS)
    seat, pool = Kind.SEAT, Kind.SHARED
    settlements = [
        Settlement("a", "o", "m1", 5, START + 1, period, "g1", (Line("s1", seat, 5),)),
        Settlement("b", "o", "m1", 5, START + 2, period, "g1", (Line("s1", seat, 3),), 2,
                   member_limited=True),
        Settlement("c", "o", "m2", 7, START + 3, period, "g2", (Line("p", pool, 7),),
                   reservation_id="r1"),
        Settlement("d", "o", "m2", 9, START + DAY_MS, period, "g2",
                   (Line("s2", seat, 4), Line("p", pool, 5)), late=True),
        Settlement("e", "o", "m1", 6, START + 4, period, "g1", (), 6, group_limited=True),
    ]  # fmt: skip
    # A line amount written with a leading zero is the same amount: taken as written.
    items = [
        (k, o, enc.replace("\x1fh\x1f7", "\x1fh\x1f07") if k == "c" else enc, a, r)
        for k, o, enc, a, r in encoded((s, None) for s in settlements)
    ]
    rows = batch_rows(items)

    def instant(ms: int) -> int:
        return (ms - 946_684_800_000) * 1000

    lines = {"c": "p\x1fh\x1f07"}

    def written(s: Settlement) -> str:
        return "\x1f".join(
            f"{ln.bucket_id}\x1f{KIND_CODE[ln.kind]}\x1f{ln.amount}" for ln in s.lines
        )

    assert rows.settlements == [
        (
            s.key, s.org_id, s.member_id, s.billing_group, instant(START),
            instant(START + 30 * DAY_MS), instant(s.time_ms), s.credits, s.unfunded,
            s.member_limited, s.group_limited, s.late, s.reservation_id, None, None,
            lines.get(s.key) or written(s),
        )
        for s in settlements
    ]  # fmt: skip
    day0, day1 = (ms_to_datetime(START + d * DAY_MS).date() for d in (0, 1))
    # (org, member, group, start, end, day, events, credits, seat, personal, shared, on_demand,
    # unfunded)
    assert sorted(rows.totals) == sorted(
        [
            ("o", "m1", "g1", instant(START), instant(START + 30 * DAY_MS), day0,
             3, 16, 8, 0, 0, 0, 8),
            ("o", "m2", "g2", instant(START), instant(START + 30 * DAY_MS), day0,
             1, 7, 0, 0, 7, 0, 0),
            ("o", "m2", "g2", instant(START), instant(START + 30 * DAY_MS), day1,
             1, 9, 4, 0, 5, 0, 0),
        ]
    )  # fmt: skip


async def test_batches_held_up_by_a_locked_total_are_written_together_once(
    pipe_settings: Settings, engine: RedisEngine, running: Running
) -> None:
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    dsn, topic = pipe_settings.postgres_dsn, pipe_settings.usage_topic
    world = World.build(n_orgs=4, members_per_org=5)
    await world.apply(engine)
    first = make_events(world, 50, prefix="w")
    await produce_events(pipe_settings.kafka_bootstrap, topic, first)
    options = ConsumerOptions(batch_max_records=50, write_max_records=2_000)
    consumer = running.start(pipe_settings, engine, options)

    async def settled_first() -> bool:
        return await caught_up(
            pipe_settings.kafka_bootstrap or "", dsn, pipe_settings.consumer_group, topic
        )

    await wait_for(settled_first, what="first events settled")
    writes_before = consumer.batches

    # Hold every write up on a lock of a total table while more batches are polled and settled.
    blocker = await asyncpg.connect(dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE member_period_totals IN EXCLUSIVE MODE")
        rest = make_events(world, 600, seed=3, prefix="x")
        await produce_events(pipe_settings.kafka_bootstrap, topic, rest)
        prepared = consumer._seq

        async def queued() -> bool:
            return consumer._seq >= prepared + 4

        await wait_for(queued, what="batches settled behind the held write")
        await tx.rollback()
    finally:
        await blocker.close()

    await wait_for(settled_first, what="every event settled")
    await running.stop_all()
    writes = consumer.batches - writes_before
    batches = consumer._seq - prepared
    assert writes < batches, (writes, batches)
    await assert_consistent(world, engine, dsn, [*first, *rest])
