"""Settlements partitioned by month (0017) and `meter archive`: the migration keeps an existing
install's rows, the store settles into monthly partitions, archiving writes exactly the rows of a
closed month to its file, refuses when they do not add up to the totals, and reports of archived
months still answer from the totals."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import random
import shutil
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from meter import archive as arc
from meter.engine.types import Kind, Line, Period, Settlement, VoidResult
from meter.migrate import discover, migrate
from meter.rebuild import SELECT_LEFT
from meter.reports.export import export
from meter.reports.service import Reports
from meter.settings import Settings
from meter.store import OffsetAdvance, SettlementStore, record_void

MONTHS = [dt.datetime(2026, m, 1, tzinfo=dt.UTC) for m in (1, 2, 3, 4)]
KINDS = (Kind.SEAT, Kind.PERSONAL, Kind.SHARED, Kind.ON_DEMAND)


def ms(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1000


def period_of(i: int) -> Period:
    start = MONTHS[i]
    end = MONTHS[i + 1] if i + 1 < len(MONTHS) else dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    return Period(ms(start), ms(end))


def settlement(rng: random.Random, i: int, key: str | None = None) -> Settlement:
    org = f"org-{i % 2}"
    month = rng.randrange(len(MONTHS))
    period = period_of(month)
    lines = tuple(
        Line(f"{org}-b{j}", KINDS[j], rng.randrange(1, 5_000_000))
        for j in sorted(rng.sample(range(4), rng.randrange(1, 4)))
    )
    unfunded = rng.choice((0, 0, 300_000))
    return Settlement(
        key=key or f"//s e{i}",
        org_id=org,
        member_id=f"m{rng.randrange(5)}",
        credits=sum(line.amount for line in lines) + unfunded,
        time_ms=period.start_ms + rng.randrange(20) * 86_400_000,
        period=period,
        billing_group=rng.choice(("", "g1")),
        lines=lines,
        unfunded=unfunded,
    )


async def seed_orgs(conn: asyncpg.Connection, grace_seconds: int = 0) -> None:
    await conn.execute(
        "INSERT INTO plans (plan_id, name, period_kind) VALUES ('p', 'p', 'monthly')"
    )
    for org in ("org-0", "org-1"):
        await conn.execute(
            "INSERT INTO organizations (org_id, name, plan_id, billing_anchor, grace_seconds)"
            " VALUES ($1, $1, 'p', $2, $3)",
            org, MONTHS[0], grace_seconds,
        )  # fmt: skip


async def settle(dsn: str, items: list[Settlement]) -> int:
    store = SettlementStore(dsn)
    try:
        offset = (await store.load_offsets("g", "t", {0: 0}))[0]
        advance = [OffsetAdvance(0, offset, offset + len(items))]
        return await store.write_batch("g", "t", [(s, None) for s in items], advance)
    finally:
        await store.close()


async def rows(conn: asyncpg.Connection, query: str) -> list[dict[str, Any]]:
    out = []
    for r in await conn.fetch(query):
        out.append(orjson.loads(r[0]))
    return out


SETTLEMENTS_JSON = "SELECT (to_jsonb(s) - 'lines')::text FROM settlements s ORDER BY org_id, key"
LINES_JSON = "SELECT to_jsonb(l)::text FROM settlement_lines l ORDER BY org_id, key, bucket_id"


def in_months(items: list[dict[str, Any]], months: set[str]) -> list[dict[str, Any]]:
    return [r for r in items if r["period_start"][:7] in months]


async def test_migration_moves_an_existing_install(pg_dsn_clean: str, tmp_path: Path) -> None:
    for migration in discover():
        if migration.version < "0017":
            shutil.copy(migration.path, tmp_path / migration.path.name)
    await migrate(pg_dsn_clean, tmp_path)
    conn = await asyncpg.connect(pg_dsn_clean)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        await seed_orgs(conn)
        rng = random.Random(7)
        items = [settlement(rng, i) for i in range(300)]
        for s in items:  # as the store of 0016 wrote them
            await conn.execute(
                "INSERT INTO settlements (key, org_id, member_id, billing_group, period_start,"
                " period_end, event_time, credits, unfunded) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " $8, $9)",
                s.key, s.org_id, s.member_id, s.billing_group,
                dt.datetime.fromtimestamp(s.period.start_ms / 1000, dt.UTC),  # type: ignore[union-attr]
                dt.datetime.fromtimestamp(s.period.end_ms / 1000, dt.UTC),  # type: ignore[union-attr]
                dt.datetime.fromtimestamp(s.time_ms / 1000, dt.UTC), s.credits, s.unfunded,
            )  # fmt: skip
            for line in s.lines:
                await conn.execute(
                    "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    s.key, s.org_id, line.bucket_id, line.kind.value, line.amount,
                )  # fmt: skip
        before_s = await rows(conn, SETTLEMENTS_JSON)
        before_l = await rows(conn, LINES_JSON)
        shared_before = await conn.fetch("SELECT * FROM shared_bucket_drawn ORDER BY 1, 2")

        for migration in discover():
            if migration.version == "0017":
                shutil.copy(migration.path, tmp_path / migration.path.name)
        assert await migrate(pg_dsn_clean, tmp_path) == ["0017"]

        assert await rows(conn, SETTLEMENTS_JSON) == before_s
        starts = {(r["org_id"], r["key"]): r["period_start"] for r in before_s}
        after_l = await rows(conn, LINES_JSON)
        assert after_l == [{**r, "period_start": starts[r["org_id"], r["key"]]} for r in before_l]
        # Every row is in its month's partition, none in the default ones.
        for month in MONTHS:
            n = await conn.fetchval(f"SELECT count(*) FROM settlements_{month:%Y_%m}")
            assert n == sum(1 for r in before_s if r["period_start"][:7] == f"{month:%Y-%m}")
            assert n > 0
        assert await conn.fetchval("SELECT count(*) FROM settlements_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM settlement_lines_default") == 0
        keys = await conn.fetch("SELECT org_id, key FROM settlement_keys ORDER BY 1, 2")
        assert [tuple(k) for k in keys] == [(r["org_id"], r["key"]) for r in before_s]
        assert await conn.fetch("SELECT * FROM shared_bucket_drawn ORDER BY 1, 2") == shared_before
    finally:
        await conn.close()

    # The store settles on top; a redelivery in another period is still a duplicate.
    rng = random.Random(8)
    fresh = [settlement(rng, 1000 + i) for i in range(20)]
    await migrate(pg_dsn_clean)  # the later migrations: the store of today writes
    assert await settle(pg_dsn_clean, fresh) == 20
    first = items[0]
    moved = dataclasses.replace(first, period=period_of(3), late=True)
    assert await settle(pg_dsn_clean, [moved]) == 0
    conn = await asyncpg.connect(pg_dsn_clean)
    try:
        assert await conn.fetchval("SELECT count(*) FROM settlements") == 320
        shared = await conn.fetchval("SELECT sum(drawn) FROM shared_bucket_drawn")
        lines = await conn.fetchval(
            "SELECT sum(amount) FROM settlement_lines WHERE kind = 'shared'"
        )
        assert shared == lines  # the shared-pool trigger runs on the partitioned table
        # Every settlement is in exactly one member run (0025 made them for the rows it found,
        # the trigger for those written since), with its member, settled_at and period start.
        runs = await conn.fetch(
            "SELECT r.org_id, r.member_id, r.settled_at, r.period_start, k.key"
            " FROM settlement_runs r CROSS JOIN LATERAL unnest(r.keys) AS k(key)"
        )
        settled = await conn.fetch(
            "SELECT org_id, member_id, settled_at, period_start, key FROM settlements"
        )
        assert sorted(tuple(r) for r in runs) == sorted(tuple(r) for r in settled)
    finally:
        await conn.close()


async def _settled_world(dsn: str) -> list[Settlement]:
    conn = await asyncpg.connect(dsn)
    try:
        await seed_orgs(conn)
    finally:
        await conn.close()
    rng = random.Random(11)
    items = [settlement(rng, i) for i in range(400)]
    assert await settle(dsn, items[:250]) == 250
    assert await settle(dsn, items[200:]) == 150  # 50 already settled
    return items


def read_archive(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


async def test_archive_writes_the_rows_and_reports_still_answer(
    migrated_dsn: str, tmp_path: Path
) -> None:
    items = await _settled_world(migrated_dsn)
    conn = await asyncpg.connect(migrated_dsn)
    await conn.execute("SET TimeZone = 'UTC'")
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    try:
        voided = next(s for s in items if s.period == period_of(0))
        void = VoidResult(voided.key, True, voided.lines)
        assert await record_void(conn, voided.org_id, voided.key, void, ms(MONTHS[1]))
        all_s = await rows(conn, SETTLEMENTS_JSON)
        all_l = await rows(conn, LINES_JSON)
        reports = Reports(pool)
        before = {
            (org, m): await reports.org_totals(org, f"{MONTHS[m]:%Y-%m-%d}")
            for org in ("org-0", "org-1")
            for m in range(4)
        }
        _, _, stream = await export(reports, "org-0", f"{MONTHS[0]:%Y-%m-%d}", None)
        csv_before = b"".join([chunk async for chunk in stream])
        # A long-lived shared bucket drawn from in every month: what the rebuild finds left.
        for org in ("org-0", "org-1"):
            await conn.execute(
                "INSERT INTO credit_grants (org_id, bucket_id, kind, amount, valid_from,"
                " expires_at) VALUES ($1, $1 || '-b2', 'shared', 10000000000, $2, $3)",
                org, MONTHS[0], dt.datetime(2099, 1, 1, tzinfo=dt.UTC),
            )  # fmt: skip
        left = {
            org: await conn.fetch(SELECT_LEFT + " ORDER BY 1", org, MONTHS[0])
            for org in ("org-0", "org-1")
        }
        assert all(r["left_"] < 10_000_000_000 for rs in left.values() for r in rs)
        drawn = await conn.fetch(
            "SELECT org_id, bucket_id, sum(amount) FROM settlement_lines"
            " WHERE period_start < $1 GROUP BY 1, 2 ORDER BY 1, 2",
            MONTHS[2],
        )

        report = await arc.archive(migrated_dsn, dt.date(2026, 3, 1), tmp_path)

        assert [a.month for a in report.archived] == [dt.date(2026, 1, 1), dt.date(2026, 2, 1)]
        for done in report.archived:
            month = f"{done.month:%Y-%m}"
            content = read_archive(done.file)
            tables = [r.pop("table") for r in content]
            got_s = [r for r, t in zip(content, tables, strict=True) if t == "settlements"]
            got_l = [r for r, t in zip(content, tables, strict=True) if t == "settlement_lines"]
            assert len(got_s) + len(got_l) == len(content)
            assert got_s == in_months(all_s, {month})
            assert got_l == in_months(all_l, {month})
            assert (done.settlements, done.lines) == (len(got_s), len(got_l))
            digest = hashlib.sha256(done.file.read_bytes()).hexdigest()
            assert done.sha256 == digest
            sidecar = done.file.with_name(done.file.name + ".sha256").read_text()
            assert sidecar == f"{digest}  {done.file.name}\n"
            assert (
                await conn.fetchval("SELECT to_regclass($1)", f"settlements_{done.month:%Y_%m}")
                is None
            )
        # What stays is the later months; the totals and the keys stay whole.
        assert await rows(conn, SETTLEMENTS_JSON) == in_months(all_s, {"2026-03", "2026-04"})
        assert await conn.fetchval("SELECT count(*) FROM settlement_keys") == 400
        # The member history's runs of the archived months went with them.
        runs = await conn.fetch("SELECT DISTINCT period_start FROM settlement_runs ORDER BY 1")
        assert [r[0] for r in runs] == [MONTHS[2], MONTHS[3]]
        kept = await conn.fetch("SELECT * FROM archived_bucket_drawn ORDER BY 1, 2")
        assert [tuple(r) for r in kept] == [tuple(r) for r in drawn]
        for org, was in left.items():
            assert await conn.fetch(SELECT_LEFT + " ORDER BY 1", org, MONTHS[0]) == was
        for (org, m), totals in before.items():
            assert await reports.org_totals(org, f"{MONTHS[m]:%Y-%m-%d}") == totals
            assert totals.totals.events > 0
        _, _, stream = await export(reports, "org-0", f"{MONTHS[0]:%Y-%m-%d}", None)
        assert b"".join([chunk async for chunk in stream]) == csv_before

        # Again: nothing left to do; archived months are not recreated by the store.
        again = await arc.archive(migrated_dsn, dt.date(2026, 3, 1), tmp_path)
        assert again.archived == []
        assert again.skipped == [dt.date(2026, 1, 1), dt.date(2026, 2, 1)]
        # A redelivered event of an archived month settles nothing.
        archived_one = next(s for s in items if s.period == period_of(1))
        assert await settle(migrated_dsn, [archived_one]) == 0
        assert await conn.fetchval("SELECT count(*) FROM settlements") == len(
            in_months(all_s, {"2026-03", "2026-04"})
        )
    finally:
        await pool.close()
        await conn.close()


async def test_archive_refuses_rows_that_differ_from_the_totals(
    migrated_dsn: str, tmp_path: Path, settings: Settings
) -> None:
    await _settled_world(migrated_dsn)
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(
            "UPDATE org_period_totals SET credits = credits + 1"
            " WHERE org_id = 'org-1' AND period_start = $1",
            MONTHS[1],
        )
        with pytest.raises(arc.TotalsMismatch, match="org-1 period 2026-02-01: credits"):
            await arc.archive(migrated_dsn, dt.date(2026, 3, 1), tmp_path / "direct")

        # The command says so and exits nonzero; January went, February stays as it was.
        parser = argparse.ArgumentParser()
        handle = arc.configure(parser)
        args = parser.parse_args(["--before", "2026-03", "--dir", str(tmp_path / "cli")])
        local = settings.model_copy(update={"postgres_dsn": migrated_dsn})
        assert await handle(args, local) == 1
        assert await conn.fetchval("SELECT to_regclass('settlements_2026_02')") is not None
        assert await conn.fetchval("SELECT count(*) FROM settlements_2026_02") > 0
        assert await conn.fetchval("SELECT to_regclass('settlements_2026_01')") is None
        archived = await conn.fetch("SELECT month FROM settlement_archives")
        assert [r[0] for r in archived] == [dt.date(2026, 1, 1)]
        assert not (tmp_path / "cli" / arc.file_name(dt.date(2026, 2, 1))).exists()
    finally:
        await conn.close()


async def test_archive_refuses_a_month_whose_period_is_in_its_grace(
    migrated_dsn: str, tmp_path: Path
) -> None:
    await _settled_world(migrated_dsn)
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(
            "UPDATE organizations SET grace_seconds = 3650 * 86400 WHERE org_id = 'org-0'"
        )
        with pytest.raises(arc.PeriodOpen, match="org-0"):
            await arc.archive(migrated_dsn, dt.date(2026, 2, 1), tmp_path, keep=True)
        assert await conn.fetchval("SELECT count(*) FROM settlement_archives") == 0
        assert await conn.fetchval("SELECT to_regclass('settlements_2026_01')") is not None
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'settlements_2026_01'::regclass"
            )
            == 1
        )
    finally:
        await conn.close()


def test_months_are_parsed_strictly() -> None:
    assert arc.parse_month("2026-03") == dt.date(2026, 3, 1)
    for bad in ("2026-13", "2026-3", "march", "2026-03-01"):
        with pytest.raises(ValueError):
            arc.parse_month(bad)


async def test_partitions_ahead_take_the_rows_of_the_default_partition(migrated_dsn: str) -> None:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        t = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
        await conn.execute(
            "INSERT INTO settlements (key, org_id, member_id, period_start, period_end,"
            " event_time, credits, unfunded) VALUES ('k', 'o', 'm', $1, $1, $1, 5, 0)",
            t,
        )
        await conn.execute(
            "INSERT INTO settlement_lines (key, org_id, bucket_id, kind, amount, period_start)"
            " VALUES ('k', 'o', 'b', 'seat', 5, $1)",
            t,
        )
        assert await conn.fetchval("SELECT count(*) FROM settlements_default") == 1
        await conn.execute(
            "INSERT INTO settlement_archives (month, file, sha256, settlements, lines, credits,"
            " kept) VALUES ('2031-02-01', 'f', 'x', 0, 0, 0, false)"
        )
        # January and March (February is archived).
        assert await conn.fetchval("SELECT meter_ensure_partitions($1, 3)", t) == 2
        assert await conn.fetchval("SELECT meter_ensure_partitions($1, 3)", t) == 0
        assert await conn.fetchval("SELECT to_regclass('settlements_2031_02')") is None
        assert await conn.fetchval("SELECT count(*) FROM settlements_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM settlements_2031_01") == 1
        assert await conn.fetchval("SELECT lines FROM settlements_2031_01") == "b\x1fs\x1f5"
        assert await conn.fetchval("SELECT count(*) FROM settlements_2031_03") == 0
    finally:
        await conn.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    tty = _Terminal()
    bar = arc.Progress("2026-01", 100, tty)
    for _ in range(10):
        bar.advance(10)
    bar.close()
    assert tty.getvalue().startswith("\r2026-01 [")
    assert "100/100 rows" in tty.getvalue() and "rows/s" in tty.getvalue()
    assert tty.getvalue().endswith("\n")

    log = io.StringIO()
    plain = arc.Progress("2026-01", 100, log)
    for _ in range(20):
        plain.advance(5)
    plain.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[-1].startswith("2026-01: 100/100 rows (100%), ")


async def test_archive_gives_up_when_the_tables_stay_busy(
    migrated_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _settled_world(migrated_dsn)
    monkeypatch.setattr(arc, "DETACH_LOCK_TIMEOUT_S", 0.2)
    reader = await asyncpg.connect(migrated_dsn)
    conn = await asyncpg.connect(migrated_dsn)
    try:
        busy = reader.transaction()
        await busy.start()
        await reader.fetchval("SELECT count(*) FROM settlements")  # a long report, say
        with pytest.raises(arc.LockTimeout):
            await arc.archive(migrated_dsn, dt.date(2026, 2, 1), tmp_path)
        assert await conn.fetchval("SELECT count(*) FROM settlement_archives") == 0
        assert await conn.fetchval("SELECT count(*) FROM settlements_2026_01") > 0
        await busy.rollback()
        report = await arc.archive(migrated_dsn, dt.date(2026, 2, 1), tmp_path)
        assert [a.month for a in report.archived] == [dt.date(2026, 1, 1)]
    finally:
        await reader.close()
        await conn.close()
