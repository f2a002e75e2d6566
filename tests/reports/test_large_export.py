"""The export streams a large organization in slices, and agrees with the totals."""

from __future__ import annotations

import csv
import io

import asyncpg  # type: ignore[import-untyped]

from meter.admin.clock import now_ms
from meter.bench.reports import ORG, generate
from meter.money import parse_credits
from meter.reports import HEADER, Reports, stream_csv
from meter.reports.export import CHUNK_CHARS


async def test_large_export_streams_in_slices(migrated_dsn: str) -> None:
    now = now_ms()
    conn = await asyncpg.connect(migrated_dsn)
    try:
        written = await generate(conn, 3000, 300_000, 1, 0, now)
        total = await conn.fetchval("SELECT credits FROM org_period_totals")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=1)
    try:
        reports = Reports(pool, lambda: now)
        period = await reports.period(ORG, None)
        chunks = [c async for c in stream_csv(pool, ORG, period, None)]
        page = await reports.members(ORG, None, after="m001499", limit=2)
    finally:
        await pool.close()
    assert len(chunks) > 1
    assert all(len(c) <= CHUNK_CHARS * 2 for c in chunks)
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert tuple(rows[0]) == HEADER
    body = rows[1:]
    # Current period: usage rows (3,000 members, 300 of them under two groups); the 30 departed
    # members have usage, so nobody is added with zero.
    assert len(body) == written["member_group_rows"] == 3300
    assert sum(parse_credits(r[3]) for r in body) == total
    assert [(r[0], r[1]) for r in body] == sorted((r[0], r[1]) for r in body)
    assert any(r[1].startswith("Surname ") and "," in r[1] for r in body)
    assert [m.member_id for m in page.members] == ["m001500", "m001501"]
    assert page.next_after == "m001501"
