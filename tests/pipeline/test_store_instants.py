"""The store's connections write a batch's instants as integers (`pg_instant`) and take and give
datetimes exactly as asyncpg's own codec does."""

from __future__ import annotations

import datetime as dt

import asyncpg  # type: ignore[import-untyped]

from meter.store import SettlementStore, ms_to_datetime, pg_instant, pg_instant_datetime

INSTANTS_MS = (0, 946_684_800_000, 1_780_000_123_456, -86_400_001, 253_402_300_799_999)
DATETIMES = (
    dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 1, 12, 30),  # naive: local time, as asyncpg takes it
    dt.datetime.max,
    dt.datetime.min,
)


async def test_integer_instants_and_datetimes_round_trip(migrated_dsn: str) -> None:
    store = SettlementStore(migrated_dsn)
    await store.open()
    plain = await asyncpg.connect(migrated_dsn)
    try:
        async with store.pool.acquire() as conn:
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
    finally:
        await plain.close()
        await store.close()
