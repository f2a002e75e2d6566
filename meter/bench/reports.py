"""`meter bench reports`: report reads at 10,000 members and 10 million settled events.

Reports read only the totals tables, so what decides their speed is the number of totals rows,
not the number of events. The benchmark writes, in a fresh database, exactly the totals rows the
settlement store would have written for `--events` settled events of `--members` members over
`--periods` monthly periods (the last one current): per member and billing group (10% of the
members reassigned mid-period, so under two groups), per member, per group, per organization,
per member and day, per organization and day. It does not settle the events one by one (that is
`meter bench pipeline`); `--settlements N` adds N rows to `settlements` as well, which no report
reads (the query plans are checked for it).

Then it times, on the current period:
- `export_s`: the whole CSV export, streamed and encoded (every row of the period);
- `member_totals_page_s`: one page of 100 member totals from the middle of the member list.
Each is the median of several runs; `*_first_s` is the first run. Target: each under 1 s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.admin.clock import from_ms, now_ms
from meter.engine.periods import period_at
from meter.engine.types import OrgConfig, OrgStatus, Period, PeriodKind
from meter.reports import Reports, stream_csv
from meter.reports import queries as q
from meter.settings import Settings

if TYPE_CHECKING:
    from meter.cli import Handler

ORG = "bench-org"
GROUPS = 20
ANCHOR = "2020-01-01T00:00:00Z"

SETUP = """
INSERT INTO plans (plan_id, name, period_kind) VALUES ('bench', 'Bench', 'monthly');
INSERT INTO organizations (org_id, name, plan_id, billing_anchor)
VALUES ('bench-org', 'Bench', 'bench', '2020-01-01T00:00:00Z');
INSERT INTO billing_groups (org_id, billing_group_id, name)
SELECT 'bench-org', 'g' || lpad(g::text, 2, '0'), 'Group ' || g
FROM generate_series(0, 19) AS g;
"""

# $1 members. Every 100th member has left; every 50th has a name that needs CSV quoting.
MEMBERS = """
INSERT INTO members (org_id, member_id, name, email, status, billing_group_id)
SELECT 'bench-org', 'm' || lpad(i::text, 6, '0'),
       CASE WHEN i % 50 = 0 THEN 'Surname ' || i || ', Given' ELSE 'Member ' || i END,
       'm' || i || '@example.com',
       CASE WHEN i % 100 = 99 THEN 'removed' ELSE 'active' END,
       'g' || lpad((i % 20)::text, 2, '0')
FROM generate_series(0, $1 - 1) AS i
"""

# $1 period start, $2 period end, $3 members, $4 mean events per member in this period.
# Members with i % 10 = 0 were reassigned: 30% of their usage under their previous group.
MEMBER_GROUPS = """
WITH base AS (
    SELECT i, 'm' || lpad(i::text, 6, '0') AS member_id,
           greatest(1, $4 + (i * 7919) % 11 - 5)::bigint AS events
    FROM generate_series(0, $3 - 1) AS i
), parts AS (
    SELECT i, member_id, 'g' || lpad((i % 20)::text, 2, '0') AS grp,
           CASE WHEN i % 10 = 0 THEN events - events * 3 / 10 ELSE events END AS events
    FROM base
    UNION ALL
    SELECT i, member_id, 'g' || lpad(((i + 1) % 20)::text, 2, '0'), events * 3 / 10
    FROM base WHERE i % 10 = 0 AND events * 3 / 10 > 0
), amounts AS (
    SELECT *, events * (1000000 + (i % 997) * 1000) AS credits FROM parts
)
INSERT INTO member_group_period_totals
    (org_id, period_start, billing_group, member_id, period_end,
     events, credits, seat, personal, shared, on_demand, unfunded)
SELECT 'bench-org', $1::timestamptz, grp, member_id, $2::timestamptz, events, credits,
       credits * 5 / 10, credits / 10, credits * 2 / 10, credits / 10,
       credits - credits * 5 / 10 - credits / 10 - credits * 2 / 10 - credits / 10
FROM amounts
"""

SUMS = """sum(events), sum(credits), sum(seat), sum(personal), sum(shared), sum(on_demand),
    sum(unfunded)"""

ROLLUPS = f"""
INSERT INTO member_period_totals
    (org_id, member_id, period_start, period_end, {q.TOTALS})
SELECT org_id, member_id, period_start, max(period_end), {SUMS}
FROM member_group_period_totals GROUP BY org_id, member_id, period_start;
INSERT INTO group_period_totals
    (org_id, billing_group, period_start, period_end, {q.TOTALS})
SELECT org_id, billing_group, period_start, max(period_end), {SUMS}
FROM member_group_period_totals GROUP BY org_id, billing_group, period_start;
INSERT INTO org_period_totals (org_id, period_start, period_end, {q.TOTALS})
SELECT org_id, period_start, max(period_end), {SUMS}
FROM member_group_period_totals GROUP BY org_id, period_start;
"""

# Each member's period totals spread exactly over the period's days (up to today).
_SPREAD = ", ".join(
    f"(t.{c} * (d + 1)) / n - (t.{c} * d) / n"
    for c in ("events", "credits", "seat", "personal", "shared", "on_demand", "unfunded")
)
DAILY = f"""
WITH days AS (
    SELECT period_start, count(*) OVER (PARTITION BY period_start) AS n,
           row_number() OVER (PARTITION BY period_start ORDER BY day) - 1 AS d, day
    FROM (
        SELECT period_start, generate_series(
                   (period_start AT TIME ZONE 'UTC')::date,
                   least((period_end AT TIME ZONE 'UTC')::date - 1, $1::date),
                   interval '1 day')::date AS day
        FROM org_period_totals
    ) AS s
)
INSERT INTO member_daily_totals (org_id, member_id, day, {q.TOTALS})
SELECT t.org_id, t.member_id, days.day, {_SPREAD}
FROM member_period_totals t JOIN days USING (period_start)
"""
ORG_DAILY = f"""
INSERT INTO org_daily_totals (org_id, day, {q.TOTALS})
SELECT org_id, day, {SUMS} FROM member_daily_totals GROUP BY org_id, day;
"""

# $1 rows, $2 period start, $3 period end, $4 members.
SETTLEMENTS = """
INSERT INTO settlements (key, org_id, member_id, billing_group, period_start, period_end,
                         event_time, credits, unfunded)
SELECT '//bench/' || n, 'bench-org', 'm' || lpad((n % $4)::text, 6, '0'),
       'g' || lpad((n % $4 % 20)::text, 2, '0'), $2::timestamptz, $3::timestamptz,
       $2::timestamptz + (n % 86400) * interval '1 second', 1000000, 0
FROM generate_series(1, $1) AS n
"""

COUNTS = """
SELECT (SELECT count(*) FROM member_group_period_totals) AS member_group_rows,
       (SELECT count(*) FROM member_period_totals) AS member_rows,
       (SELECT count(*) FROM member_daily_totals) AS member_daily_rows,
       (SELECT sum(events) FROM org_period_totals) AS events,
       (SELECT count(*) FROM settlements) AS settlement_rows
"""


def _periods(now: int, n: int) -> list[Period]:
    org = OrgConfig(ORG, OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms=1_577_836_800_000)
    out = [period_at(org, now)]
    while len(out) < n:
        out.append(period_at(org, out[-1].start_ms - 1))
    return out[::-1]


async def generate(
    conn: asyncpg.Connection, members: int, events: int, periods: int, settlements: int, now: int
) -> dict[str, int]:
    """Write the organization, its members and the totals rows; returns what was written."""
    await conn.execute(SETUP)
    await conn.execute(MEMBERS, members)
    spans = _periods(now, periods)
    mean = max(1, -(-events // (members * periods)))
    for p in spans:
        await conn.execute(MEMBER_GROUPS, from_ms(p.start_ms), from_ms(p.end_ms), members, mean)
    await conn.execute(ROLLUPS)
    await conn.execute(DAILY, from_ms(now).date())
    await conn.execute(ORG_DAILY)
    if settlements:
        current = spans[-1]
        await conn.execute(
            SETTLEMENTS, settlements, from_ms(current.start_ms), from_ms(current.end_ms), members
        )
    await conn.execute("ANALYZE")
    row = await conn.fetchrow(COUNTS)
    return {k: int(row[k]) for k in row.keys()}  # noqa: SIM118


async def _timed(runs: int, work: Any) -> tuple[float, float, Any]:
    times = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await work()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times), result


async def _reads_settlements(conn: asyncpg.Connection, sql: str, *args: Any) -> bool:
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
    return re.search(r"\bon settlements\b", plan) is not None


async def bench(
    dsn: str, members: int, events: int, periods: int, settlements: int, runs: int
) -> dict[str, Any]:
    now = now_ms()
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    try:
        written = await generate(conn, members, events, periods, settlements, now)
    finally:
        await conn.close()
    generate_s = time.perf_counter() - t0
    print(f"generated in {generate_s:.1f} s: {written}", file=sys.stderr, flush=True)

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        reports = Reports(pool, lambda: now)
        period = await reports.period(ORG, None)

        async def export() -> tuple[int, int]:
            size = lines = 0
            async for chunk in stream_csv(pool, ORG, period, None):
                size += len(chunk)
                lines += chunk.count(b"\n")
            return size, lines

        middle = f"m{members // 2:06d}"

        async def page() -> int:
            return len((await reports.members(ORG, None, after=middle, limit=100)).members)

        export_first, export_s, (size, lines) = await _timed(runs, export)
        page_first, page_s, page_rows = await _timed(runs * 4, page)
        async with pool.acquire() as conn:
            export_scans = await _reads_settlements(conn, q.EXPORT, ORG, period.start, None, True)
            page_scans = await _reads_settlements(
                conn, q.MEMBER_PAGE, ORG, period.start, middle, 101, True, None
            )
    finally:
        await pool.close()
    return {
        "generated": (
            f"totals rows as the settlement store writes them for {written['events']} events "
            f"of {members} members over {periods} periods; settlements rows: "
            f"{written['settlement_rows']}"
        ),
        "events": written["events"],
        "members": members,
        "member_group_period_rows": written["member_group_rows"],
        "member_daily_rows": written["member_daily_rows"],
        "settlement_rows": written["settlement_rows"],
        "generate_s": round(generate_s, 2),
        "export_rows": lines - 1,
        "export_bytes": size,
        "export_first_s": round(export_first, 4),
        "export_s": round(export_s, 4),
        "member_totals_page_rows": page_rows,
        "member_totals_page_first_s": round(page_first, 4),
        "member_totals_page_s": round(page_s, 4),
        "plans_read_settlements": export_scans or page_scans,
        "under_1s": export_s < 1.0 and page_s < 1.0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=10_000_000, help="settled events in all")
    parser.add_argument("--periods", type=int, default=3, help="monthly periods, last current")
    parser.add_argument(
        "--settlements", type=int, default=0, help="also write this many settlements rows"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs of the export")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter bench reports`."""
    add_arguments(parser)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import create_database, drop_database, provision, with_database

        async with provision(settings, only={"postgres"}) as services:
            name = f"meter_bench_{uuid.uuid4().hex[:8]}"
            admin_dsn = with_database(services.postgres_dsn, "postgres")
            await create_database(admin_dsn, name)
            try:
                dsn = with_database(services.postgres_dsn, name)
                await migrate(dsn)
                result = await bench(
                    dsn, args.members, args.events, args.periods, args.settlements, args.runs
                )
            finally:
                await drop_database(admin_dsn, name)
        for key, value in result.items():
            print(f"{key:>28}: {value}")
        if args.json:
            print(orjson.dumps(result).decode())
        return 0 if result["under_1s"] else 1

    return handle
