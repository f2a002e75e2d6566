"""The store's connections write a batch's instants as integers (`pg_instant`) and take and give
datetimes exactly as asyncpg's own codec does."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]

from meter.engine.types import Kind, Line, Period, Settlement
from meter.store import (
    OffsetAdvance,
    SettlementStore,
    ms_to_datetime,
    pg_instant,
    pg_instant_datetime,
)

INSTANTS_MS = (0, 946_684_800_000, 1_780_000_123_456, -86_400_001, 253_402_300_799_999)
DATETIMES = (
    dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 1, 12, 30),  # naive: local time, as asyncpg takes it
    dt.datetime.max,
    dt.datetime.min,
)


@contextlib.asynccontextmanager
async def _opened(dsn: str) -> AsyncIterator[tuple[SettlementStore, asyncpg.Connection]]:
    """A store, and a connection with asyncpg's own codecs."""
    store = SettlementStore(dsn)
    await store.open()
    plain = await asyncpg.connect(dsn)
    try:
        yield store, plain
    finally:
        await plain.close()
        await store.close()


async def test_integer_instants_and_datetimes_round_trip(migrated_dsn: str) -> None:
    async with _opened(migrated_dsn) as (store, plain), store.pool.acquire() as conn:
        for ms in INSTANTS_MS:
            got = await conn.fetchval("SELECT $1::timestamptz", pg_instant(ms))
            assert got == ms_to_datetime(ms) == pg_instant_datetime(pg_instant(ms))
            assert (
                await conn.fetchval(
                    "SELECT (extract(epoch FROM $1::timestamptz) * 1000)::bigint",
                    pg_instant(ms),
                )
                == ms
            )
        for value in DATETIMES:
            ours = await conn.fetchval("SELECT $1::timestamptz", value)
            theirs = await plain.fetchval("SELECT $1::timestamptz", value)
            assert ours == theirs and type(ours) is type(theirs)
            assert ours.tzinfo == theirs.tzinfo
            text = "SELECT $1::timestamptz::text"
            assert await conn.fetchval(text, value) == await plain.fetchval(text, value)
        day = dt.date(2026, 3, 1)
        assert await conn.fetchval("SELECT $1::timestamptz", day) == await plain.fetchval(
            "SELECT $1::timestamptz", day
        )
        assert await conn.fetchval("SELECT 'infinity'::timestamptz") == dt.datetime.max
        assert await conn.fetchval("SELECT '-infinity'::timestamptz") == dt.datetime.min
        arrays = "SELECT $1::timestamptz[]"
        values = [pg_instant(INSTANTS_MS[2]), DATETIMES[0]]
        assert await conn.fetchval(arrays, values) == [
            ms_to_datetime(INSTANTS_MS[2]),
            DATETIMES[0],
        ]


async def test_the_writer_exchanges_instants_as_integers(migrated_dsn: str) -> None:
    """The writer's connection sends and reads `timestamptz` as `pg_instant` integers, arrays
    too, and what it writes in a batch (direct and careful paths) reads back elsewhere as the
    instants the engine gave."""
    async with _opened(migrated_dsn) as (store, plain):
        async with store.writer.acquire() as conn:
            for ms in INSTANTS_MS:
                got = await conn.fetchval("SELECT $1::timestamptz", pg_instant(ms))
                assert got == pg_instant(ms)
                assert await plain.fetchval("SELECT $1::bigint::text", got) == str(pg_instant(ms))
            text = await conn.fetchval("SELECT $1::timestamptz[]::text", [pg_instant(0)])
            assert text == '{"1970-01-01 00:00:00+00"}'
        await store.load_offsets("g", "t", {0: 0})
        start, end = 1_780_000_000_000, 1_782_592_000_000
        period = Period(start, end)
        first = [
            Settlement(
                f"k{i}", "o", "m", 5, start + 1_234 + i, period, "g1", (Line("b", Kind.SEAT, 5),)
            )
            for i in range(3)
        ]
        late = Settlement("k9", "o", "m", 5, start - 7, period, "g1", (), 5, late=True)
        assert (
            await store.write_batch("g", "t", [(s, None) for s in first], [OffsetAdvance(0, 0, 3)])
            == 3
        )
        # k0 again: the careful path.
        again = [(first[0], None), (late, None)]
        assert await store.write_batch("g", "t", again, [OffsetAdvance(0, 3, 5)]) == 1
        rows = await plain.fetch(
            "SELECT s.key, s.period_start, s.period_end, s.event_time, k.period_start AS keyed"
            " FROM settlements s JOIN settlement_keys k USING (org_id, key) ORDER BY s.key"
        )
        assert [tuple(r) for r in rows] == [
            (s.key, ms_to_datetime(start), ms_to_datetime(end), ms_to_datetime(s.time_ms),
             ms_to_datetime(start))
            for s in [*first, late]
        ]  # fmt: skip
        day = await plain.fetchval("SELECT min(day) FROM member_daily_totals")
        assert day == ms_to_datetime(start - 7).date()
