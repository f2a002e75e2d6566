"""The settlement store's batch write: the direct COPY path and the careful path it falls back to
when some keys are settled already, both leaving every total equal to a recomputation from the
settlements and their lines."""

from __future__ import annotations

import random

import asyncpg  # type: ignore[import-untyped]
import pytest

from meter.engine.types import Kind, Line, Period, Settlement
from meter.store import DAY_MS, OffsetAdvance, OffsetConflict, SettlementStore

T0 = 1_780_000_000_000 - 1_780_000_000_000 % DAY_MS
PERIODS = (Period(T0 - 20 * DAY_MS, T0 + 10 * DAY_MS), Period(T0 + 10 * DAY_MS, T0 + 40 * DAY_MS))
KINDS = (Kind.SEAT, Kind.PERSONAL, Kind.SHARED, Kind.ON_DEMAND)

_SUMS = (
    "count(*), sum(credits), sum(seat), sum(personal), sum(shared), sum(on_demand), sum(unfunded)"
)
_PER_KEY = """
    SELECT s.*, (s.event_time AT TIME ZONE 'UTC')::date AS day, k.* FROM settlements s
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(amount) FILTER (WHERE kind = 'seat'), 0) AS seat,
               coalesce(sum(amount) FILTER (WHERE kind = 'personal'), 0) AS personal,
               coalesce(sum(amount) FILTER (WHERE kind = 'shared'), 0) AS shared,
               coalesce(sum(amount) FILTER (WHERE kind = 'on_demand'), 0) AS on_demand
        FROM settlement_lines l WHERE l.org_id = s.org_id AND l.key = s.key
    ) AS k
"""
TOTALS = {
    "member_period_totals": ("org_id", "member_id", "period_start"),
    "group_period_totals": ("org_id", "billing_group", "period_start"),
    "org_period_totals": ("org_id", "period_start"),
    "member_daily_totals": ("org_id", "member_id", "day"),
    "member_group_period_totals": ("org_id", "period_start", "billing_group", "member_id"),
    "org_daily_totals": ("org_id", "day"),
}
COLUMNS = "events, credits, seat, personal, shared, on_demand, unfunded"


def settlement(rng: random.Random, i: int) -> Settlement:
    org = f"org-{i % 2}"
    period = PERIODS[rng.randrange(2)]
    time_ms = period.start_ms + rng.randrange(3) * DAY_MS + rng.randrange(DAY_MS)
    lines = tuple(
        Line(f"{org}-b{j}", KINDS[j], rng.randrange(1, 5_000_000))
        for j in sorted(rng.sample(range(4), rng.randrange(4)))
    )
    unfunded = rng.choice((0, 0, 700_000))
    return Settlement(
        key=f"//s e{i}",
        org_id=org,
        member_id=f"m{rng.randrange(4)}",
        credits=sum(line.amount for line in lines) + unfunded,
        time_ms=time_ms,
        period=period,
        billing_group=rng.choice(("", "g1", "g2")),
        lines=lines,
        unfunded=unfunded,
        member_limited=rng.random() < 0.2,
        reservation_id=rng.choice((None, f"r{i}")),
    )


async def assert_totals_recomputed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for table, by in TOTALS.items():
            cols = ", ".join(by)
            stored = await conn.fetch(f"SELECT {cols}, {COLUMNS} FROM {table} ORDER BY {cols}")
            fresh = await conn.fetch(
                f"SELECT {cols}, {_SUMS} FROM ({_PER_KEY}) AS x GROUP BY {cols} ORDER BY {cols}"
            )
            assert [tuple(r) for r in stored] == [tuple(r) for r in fresh], table
            assert stored, table
        # The member runs hold each settlement's key once, under its member and period, one
        # run per write (settled_at); the shared pool's drawn credits are its lines' sums.
        runs = await conn.fetch(
            "SELECT org_id, member_id, period_start, settled_at, count(*) AS runs,"
            " array_agg(k ORDER BY k) AS keys"
            " FROM settlement_runs, unnest(keys) AS k GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        )
        settled = await conn.fetch(
            "SELECT org_id, member_id, period_start, settled_at, array_agg(key ORDER BY key)"
            " FROM settlements GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        )
        assert [(*r[:4], r["keys"]) for r in runs] == [tuple(r) for r in settled]
        per_run = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM settlement_runs"
            " GROUP BY org_id, member_id, period_start, settled_at HAVING count(*) > 1) AS x"
        )
        assert per_run == 0
        drawn = await conn.fetch(
            "SELECT org_id, bucket_id, drawn FROM shared_bucket_drawn ORDER BY 1, 2"
        )
        lines = await conn.fetch(
            "SELECT org_id, bucket_id, sum(amount) FROM settlement_lines WHERE kind = 'shared'"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert [tuple(r) for r in drawn] == [tuple(r) for r in lines] and lines
    finally:
        await conn.close()


async def test_direct_and_careful_writes_keep_totals(migrated_dsn: str) -> None:
    rng = random.Random(11)
    batch = [settlement(rng, i) for i in range(400)]
    store = SettlementStore(migrated_dsn)
    try:
        await store.load_offsets("g", "t", {0: 0})
        # All new: the direct path.
        first = [(s, '{"model": "m"}' if s.member_limited else None) for s in batch[:250]]
        assert await store.write_batch("g", "t", first, [OffsetAdvance(0, 0, 250)]) == 250
        await assert_totals_recomputed(migrated_dsn)
        # Half of it settled already: only the new ones count, once.
        mixed = [(s, None) for s in batch[150:]]
        assert await store.write_batch("g", "t", mixed, [OffsetAdvance(0, 250, 500)]) == 150
        await assert_totals_recomputed(migrated_dsn)
        # Nothing new: offsets still advance, no total moves.
        assert await store.write_batch("g", "t", mixed[:10], [OffsetAdvance(0, 500, 510)]) == 0
        await assert_totals_recomputed(migrated_dsn)
        # A writer expecting an old offset is fenced and writes nothing.
        extra = [(settlement(rng, 1000), None)]
        try:
            await store.write_batch("g", "t", extra, [OffsetAdvance(0, 250, 600)])
        except OffsetConflict as exc:
            assert exc.partitions == (0,)
        else:
            raise AssertionError("a stale offset must be fenced")
        assert await store.load_offsets("g", "t", {0: 0}) == {0: 510}
        pool = await asyncpg.connect(migrated_dsn)
        try:
            count = await pool.fetchval("SELECT count(*) FROM settlements")
            attributes = await pool.fetchval(
                "SELECT count(*) FROM settlements WHERE attributes ->> 'model' = 'm'"
            )
            # Each settlement's identity, with its own period start.
            keys = await pool.fetchval("SELECT count(*) FROM settlement_keys")
            matched = await pool.fetchval(
                "SELECT count(*) FROM settlement_keys JOIN settlements"
                " USING (org_id, key, period_start)"
            )
        finally:
            await pool.close()
        assert count == keys == matched == 400
        assert attributes == sum(1 for s, a in first if a is not None) > 0
        await assert_totals_recomputed(migrated_dsn)
    finally:
        await store.close()


async def test_existing_keys_are_the_settled_ones_of_each_organization(migrated_dsn: str) -> None:
    rng = random.Random(13)
    batch = [settlement(rng, i) for i in range(60)]
    store = SettlementStore(migrated_dsn)
    try:
        await store.load_offsets("g", "t", {0: 0})
        written = [(s, None) for s in batch[:40]]
        assert await store.write_batch("g", "t", written, [OffsetAdvance(0, 0, 40)]) == 40
        settled = {(s.org_id, s.key) for s in batch[:40]}
        # The same key in the other organization is another event, not settled.
        asked = [(s.org_id, s.key) for s in batch] + [("org-9", batch[0].key)]
        asked += [(s.org_id.replace("0", "x").replace("1", "0").replace("x", "1"), s.key)
                  for s in batch[:40]]  # fmt: skip
        rng.shuffle(asked)
        expected = settled & set(asked)
        assert await store.existing_keys(asked) == expected
        assert await store.existing_keys([("org-0", "//s none")]) == set()
        with pytest.raises(ValueError, match="control characters"):
            await store.existing_keys([("org-0", "//s a\x1e//s b")])
    finally:
        await store.close()


async def test_each_settlement_holds_its_lines_and_the_view_lists_them(migrated_dsn: str) -> None:
    rng = random.Random(12)
    batch = [settlement(rng, i) for i in range(120)]
    assert any(len(s.lines) > 1 for s in batch) and any(not s.lines for s in batch)
    store = SettlementStore(migrated_dsn)
    try:
        await store.load_offsets("g", "t", {0: 0})
        direct = [(s, None) for s in batch[:80]]
        assert await store.write_batch("g", "t", direct, [OffsetAdvance(0, 0, 80)]) == 80
        careful = [(s, None) for s in batch[60:]]  # 20 settled already: the careful path
        assert await store.write_batch("g", "t", careful, [OffsetAdvance(0, 80, 140)]) == 40
    finally:
        await store.close()
    conn = await asyncpg.connect(migrated_dsn)
    try:
        for s in batch:
            stored = await conn.fetchval(
                "SELECT lines FROM settlements WHERE org_id = $1 AND key = $2", s.org_id, s.key
            )
            assert stored == "\x1f".join(
                f"{ln.bucket_id}\x1f{_CODE[ln.kind]}\x1f{ln.amount}" for ln in s.lines
            )
            listed = await conn.fetch(
                "SELECT bucket_id, kind, amount, period_start FROM settlement_lines"
                " WHERE org_id = $1 AND key = $2",
                s.org_id,
                s.key,
            )
            assert [(r[0], r[1], r[2]) for r in listed] == [
                (ln.bucket_id, ln.kind.value, ln.amount) for ln in s.lines
            ]
            assert all(r[3].timestamp() * 1000 == s.period.start_ms for r in listed)  # type: ignore[union-attr]
        # A line inserted through the view is appended to its settlement; a bad one is refused.
        s = next(s for s in batch if not s.lines)
        await conn.execute(
            "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount)"
            " VALUES ($1, $2, 'extra', 'on_demand', 7)",
            s.key,
            s.org_id,
        )
        assert (
            await conn.fetchval(
                "SELECT lines FROM settlements WHERE org_id = $1 AND key = $2", s.org_id, s.key
            )
            == "extra\x1fo\x1f7"
        )
        for bad in ("'b', 'gift', 7", "'b', 'seat', 0", "E'b\\x1fc', 'seat', 7"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount)"
                    f" VALUES ($1, $2, {bad})",
                    s.key,
                    s.org_id,
                )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount)"
                " VALUES ('//s nowhere', 'org-0', 'b', 'seat', 7)"
            )
    finally:
        await conn.close()


_CODE = {Kind.SEAT: "s", Kind.PERSONAL: "p", Kind.SHARED: "h", Kind.ON_DEMAND: "o"}


async def test_store_connections_go_back_to_the_pool_without_a_reset(migrated_dsn: str) -> None:
    """Releasing a store connection costs no round trip: asyncpg's reset query (`RESET ALL` and
    the rest) is not sent, so a session setting outlives the release."""
    store = SettlementStore(migrated_dsn)
    await store.open()
    try:
        async with store.pool.acquire() as conn:
            await conn.execute("SET application_name = 'meter-store-test'")
            pid = conn.get_server_pid()
        async with store.pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await conn.fetchval("SHOW application_name") == "meter-store-test"
    finally:
        await store.close()


async def test_a_month_without_its_partition_is_written_through_the_parent(
    migrated_dsn: str,
) -> None:
    """Settlements go into their monthly partition only while it is attached: once a month's
    partition is detached (as `meter archive` does), a batch of that month is written through
    `settlements` and its triggers (into the DEFAULT partition here), never into the detached
    table."""
    rng = random.Random(17)
    batch = [settlement(rng, i) for i in range(40)]
    store = SettlementStore(migrated_dsn)
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await store.load_offsets("g", "t", {0: 0})
        first = [(s, None) for s in batch[:20]]
        assert await store.write_batch("g", "t", first, [OffsetAdvance(0, 0, 20)]) == 20
        months = await conn.fetch(
            "SELECT DISTINCT to_char(period_start AT TIME ZONE 'UTC', 'YYYY_MM') FROM settlements"
        )
        assert len(months) == 2
        detached = f"settlements_{months[0][0]}"
        before = await conn.fetchval(f"SELECT count(*) FROM {detached}")
        await conn.execute(f"ALTER TABLE settlements DETACH PARTITION {detached}")
        rest = [(s, None) for s in batch[20:]]
        assert await store.write_batch("g", "t", rest, [OffsetAdvance(0, 20, 40)]) == 20
        assert await conn.fetchval(f"SELECT count(*) FROM {detached}") == before
        assert await conn.fetchval("SELECT count(*) FROM settlements_default") > 0
        assert await conn.fetchval("SELECT count(*) FROM settlement_keys") == 40
        new_keys = [s.key for s, _ in rest]
        runs = await conn.fetchval(
            "SELECT count(DISTINCT k) FROM settlement_runs, unnest(keys) AS k WHERE k = ANY ($1)",
            new_keys,
        )
        assert runs == 20
    finally:
        await conn.close()
        await store.close()
