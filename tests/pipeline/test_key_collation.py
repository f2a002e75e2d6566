"""The identity columns of the settlement tables compare bytes (0024_identity_collation.sql): the
columns, every partition of `settlements` (those there and those made later) and the indexes
built on them carry the "C" collation, whatever the database's default collation is."""

from __future__ import annotations

import datetime as dt
import re

import asyncpg  # type: ignore[import-untyped]

from meter.admin import queries
from meter.admin.history import SELECT_LINES_OF, SELECT_MEMBER_SETTLEMENTS
from meter.admin.reads import SELECT_SETTLEMENT, SELECT_SETTLEMENT_LINES
from meter.rating.rerate import RATED_IN_WINDOW
from meter.rebuild import SELECT_LEFT
from meter.store import (
    APPLY_PENDING_VOIDS,
    EXISTING_KEYS,
    SETTLEMENT_EXISTS,
    SUBTRACT_MODEL_TOTALS,
    VOID_TOTALS,
)

IDENTITY = {
    "settlement_keys": ("org_id", "key"),
    "settlements": ("org_id", "key", "member_id"),
    "settlement_runs": ("org_id", "member_id", "keys"),
}

COLUMN_COLLATIONS = """
SELECT c.relname, a.attname, coll.collname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
WHERE c.oid = ANY($1::regclass[]) AND a.attname = ANY($2::text[]) AND a.attnum > 0
"""

# Each key column of each index of the given tables, with its collation.
INDEX_COLLATIONS = """
SELECT i.indexrelid::regclass::text AS index, a.attname, coll.collname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indcollation::oid[]) AS k(attnum, coll_oid)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
LEFT JOIN pg_collation coll ON coll.oid = k.coll_oid
WHERE i.indrelid = ANY($1::regclass[]) AND a.atttypid = 'text'::regtype
"""


async def _tables(conn: asyncpg.Connection) -> list[str]:
    partitions = await conn.fetch(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'settlements'::regclass"
    )
    return ["settlement_keys", "settlement_runs", "settlements", *(r[0] for r in partitions)]


async def test_identity_columns_and_their_indexes_compare_bytes(migrated_dsn: str) -> None:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        # A month far ahead: its partition is made now, after the migration.
        await conn.execute("SELECT meter_ensure_partitions('2031-05-01T00:00:00Z', 1)")
        tables = await _tables(conn)
        assert "settlements_2031_05" in tables and "settlements_default" in tables

        columns = await conn.fetch(
            COLUMN_COLLATIONS, tables, ["org_id", "key", "member_id", "billing_group", "keys"]
        )
        seen = {(r["relname"], r["attname"]): r["collname"] for r in columns}
        for table in tables:
            named = IDENTITY.get(table, IDENTITY["settlements"])
            for column in named:
                assert seen[table, column] == "C", (table, column)
        # The other text columns keep the database's default (reports order by them).
        assert seen["settlements", "billing_group"] == "default"

        indexes = await conn.fetch(INDEX_COLLATIONS, tables)
        names = {r["index"] for r in indexes}
        assert {"settlement_keys_pkey", "settlements_pkey", "settlement_runs_member"} <= names
        assert "settlements_2031_05_pkey" in names
        for r in indexes:
            assert r["collname"] == "C", (r["index"], r["attname"])

        # Ordered by bytes: uppercase before lowercase, as the indexes and the history cursor are.
        await conn.execute(
            "INSERT INTO settlement_keys (org_id, key, period_start) VALUES"
            " ('o', 'a', now()), ('o', 'B', now()), ('o', '_', now())"
        )
        keys = await conn.fetch("SELECT key FROM settlement_keys WHERE org_id = 'o' ORDER BY key")
        assert [r[0] for r in keys] == ["B", "_", "a"]
        # Compared with a column of the default collation, no COLLATE clause is needed.
        joined = await conn.fetchval(
            "SELECT count(*) FROM settlement_keys k JOIN"
            " (SELECT 'a'::text AS key UNION ALL SELECT 'B') AS d ON d.key = k.key"
        )
        assert joined == 2
    finally:
        await conn.close()


# Statements that read the identity columns of `settlements` and look the values up in other
# tables (totals, model totals, voids, billing groups), or find settlements and their lines by
# organization and key (or organization alone), with arguments.
def _lookups() -> dict[str, tuple[str, tuple[object, ...]]]:
    now = dt.datetime(2031, 5, 10, tzinfo=dt.UTC)
    return {
        "void_totals": (VOID_TOTALS, ("k", "o")),
        "apply_pending_voids": (APPLY_PENDING_VOIDS, ()),
        "subtract_model_totals": (SUBTRACT_MODEL_TOTALS, (["k"], ["o"])),
        "member_settlements": (SELECT_MEMBER_SETTLEMENTS, ("o", "m", now, "k", 50)),
        "settlement": (SELECT_SETTLEMENT, ("o", "k")),
        "rated_in_window": (RATED_IN_WINDOW, ("o", now - dt.timedelta(days=30), now)),
        "settlement_lines": (SELECT_SETTLEMENT_LINES, ("o", "k")),
        "lines_of": (SELECT_LINES_OF, ("o", ["k", "l"])),
        "admin_settlement": (queries.SELECT_SETTLEMENT, ("k", "o")),
        "admin_settlement_lines": (queries.SELECT_SETTLEMENT_LINES, ("k", "o")),
        "settlement_exists": (SETTLEMENT_EXISTS, ("k", "o")),
        "rebuild_left": (SELECT_LEFT, ("o", now)),
        "existing_keys": (EXISTING_KEYS, (["o", "p"], ["k\x1el", "k"])),
    }


_OWN_COLUMN_CAST = re.compile(
    r"\((org_id|member_id|key|event_key|billing_group_id)\)::text|COLLATE \"C\""
)


async def test_values_read_from_settlements_are_looked_up_by_index(migrated_dsn: str) -> None:
    """With sequential scans priced out, every table these statements reach is read through an
    index, and no index is scanned with its own column compared in another collation: a "C"
    value compared with a column of the default collation would make that column a filter
    over the rows of whatever the index could still narrow to (a void's period, say)."""
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute("SET enable_seqscan = off")
        wrong: dict[str, str] = {}
        for name, (statement, args) in _lookups().items():
            async with conn.transaction():
                plan = [r[0] for r in await conn.fetch("EXPLAIN " + statement, *args)]
            # A scanned table's own column cast to another collation (shown unqualified, as
            # `(org_id)::text`), or compared with a value of the "C" collation: its index could
            # not serve the comparison.
            if any("Seq Scan" in line for line in plan) or any(
                "Filter" in line and _OWN_COLUMN_CAST.search(line) for line in plan
            ):
                wrong[name] = "\n".join(plan)
        assert sorted(wrong) == [], wrong
    finally:
        await conn.close()


async def test_shared_pool_alerts_read_the_grants_by_index(migrated_dsn: str) -> None:
    """`alerts_shared_pool` called with organization ids of the "C" collation (as the settlement
    triggers call it) reads only that organization's grants: its organization is an index
    condition, not a filter over every organization's grants."""
    fetched = "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'credit_grants'"
    setup = [
        "INSERT INTO plans (plan_id, name, period_kind) VALUES ('p', 'p', 'monthly')",
        "INSERT INTO organizations (org_id, name, plan_id, billing_anchor)"
        " VALUES ('o1', 'o1', 'p', now()), ('o2', 'o2', 'p', now())",
        "INSERT INTO credit_grants (org_id, bucket_id, kind, amount, valid_from, expires_at)"
        " SELECT CASE WHEN i = 0 THEN 'o1' ELSE 'o2' END, 'b' || i, 'shared', 100,"
        " now() - interval '1 day', now() + interval '1 day' FROM generate_series(0, 50) AS i",
        "SET LOCAL enable_seqscan = off",
        'CREATE TEMP TABLE given (org_id text COLLATE "C", s timestamptz, e timestamptz)'
        " ON COMMIT DROP",
        "INSERT INTO given VALUES ('o1', now(), now() + interval '1 day')",
    ]
    conn = await asyncpg.connect(migrated_dsn)
    tx = conn.transaction()  # rolled back: nothing stays
    await tx.start()
    try:
        for statement in setup:
            await conn.execute(statement)
        before = await conn.fetchval(fetched)
        await conn.fetchval(
            "SELECT alerts_shared_pool(array_agg(org_id), array_agg(s), array_agg(e), now())"
            " FROM given"
        )
        after = await conn.fetchval(fetched)
    finally:
        await tx.rollback()
        await conn.close()
    assert after - before == 1  # o1's one grant, not o2's fifty


async def test_keys_are_looked_up_as_one_array_condition_per_organization(
    migrated_dsn: str,
) -> None:
    """The consumer's key lookup (`EXISTING_KEYS`) scans `settlement_keys` once per organization
    with all its keys as one index condition (`key = ANY`), not one probe per key joined, and
    not a join over a sequential scan: even when the table holds rows it has no statistics of
    yet (a new install, before autovacuum analyzes it), which was planned as a hash join."""
    conn = await asyncpg.connect(migrated_dsn)
    tx = conn.transaction()  # rolled back: nothing stays
    await tx.start()
    try:
        await conn.execute(
            "INSERT INTO settlement_keys (org_id, key, period_start)"
            " SELECT 'o' || i % 100, 'k' || i, now() FROM generate_series(1, 20000) AS i"
        )
        orgs = [f"o{i}" for i in range(100)]
        keys = ["\x1e".join(f"k{i}-{j}" for j in range(10)) for i in range(100)]
        plan = [r[0] for r in await conn.fetch("EXPLAIN " + EXISTING_KEYS, orgs, keys)]
    finally:
        await tx.rollback()
        await conn.close()
    conditions = [line for line in plan if "Index Cond" in line]
    assert len(conditions) == 1, plan
    assert "org_id = " in conditions[0] and "key = ANY" in conditions[0], plan
    assert plan[0].startswith("Nested Loop"), plan
    assert not any("Seq Scan" in line or "Hash" in line for line in plan), plan
