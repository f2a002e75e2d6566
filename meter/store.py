"""The PostgreSQL settlement store: settlements, their lines, period and daily totals, offsets.

`SettlementStore.write_batch` writes one consumer batch in one transaction:

1. advance the consumer offsets of the batch's partitions, each only from the offset the writer
   expects (a stale group member finds a different value and gets `OffsetConflict`, which rolls
   the whole transaction back);
2. COPY the settlements' keys into `settlement_keys`, then the settlements, each with its lines
   in its row (column `lines`, 0023), straight into their monthly partitions of `settlements`,
   with what the statement triggers of `settlements` would write for them (member runs, the
   shared pool's drawn credits and its alerts: `_insert_settlements`); and the batch's totals,
   summed per member, billing group, period and day, into a session-local staging table; one
   statement adds the staged totals to every total table with INSERT ... ON CONFLICT DO UPDATE,
   so each total row is touched once per batch;
3. when an (organization, key) is already present (the COPY fails with a unique violation: a
   duplicate the consumer could not see coming), the transaction is rolled back and written again
   the careful way: COPY into staging tables, move them with ON CONFLICT DO NOTHING, and add
   exactly the inserted rows to every total.

`record_void` records a void and takes its settlement back out of every total.

Settlements are identified by (organization, key) (0011_settlement_identity.sql): the same
source + id in two organizations are two events. `settlements` is partitioned by month of period
start (0017_settlement_partitions.sql; since 0023_lines_in_settlements.sql each row holds its
lines, which the view `settlement_lines` lists); the identity lives in the unpartitioned
`settlement_keys`, written first in every batch (its unique violation is what sends a batch down
the careful path), and the store has each month's partitions created ahead.

Tables: schemas/migrations/0002_settlements.sql, and the reporting totals of
0004_reports.sql (member x billing group x period, organization x day), voids of 0006_voids.sql.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import structlog

from meter.engine.redis import SEP, encode_settlement
from meter.engine.types import Kind, Line, Settlement, VoidResult

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""PostgreSQL's epoch: a `timestamptz` is an int64 of microseconds since it."""
PG_EPOCH_MS = 946_684_800_000
_MICROSECOND = dt.timedelta(microseconds=1)
_PG_INFINITY = (1 << 63) - 1
_PG_NEGATIVE_INFINITY = -(1 << 63)
_INFINITY = dt.datetime.max
_NEGATIVE_INFINITY = dt.datetime.min

log = structlog.get_logger("meter.store")


def ms_to_datetime(ms: int) -> dt.datetime:
    """Epoch milliseconds to an aware UTC datetime, without floats."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def pg_instant(ms: int) -> int:
    """Epoch milliseconds as a `timestamptz` value for the store's connections (microseconds
    since PostgreSQL's epoch): what the COPY records of a batch hold instead of datetimes."""
    return (ms - PG_EPOCH_MS) * 1000


def pg_instant_datetime(value: int | dt.datetime) -> dt.datetime:
    """A `timestamptz` value of a batch record (`pg_instant`, or a datetime) as a datetime."""
    if isinstance(value, dt.datetime):
        return value
    return PG_EPOCH + value * _MICROSECOND


def _encode_timestamptz(value: Any) -> tuple[int]:
    """`timestamptz` parameters and COPY values on the store's connections: an int is taken as
    microseconds since PostgreSQL's epoch (`pg_instant`, one integer to write where asyncpg's
    datetime conversion costs 0.6 us a value, a fifth of a COPY's client time); a datetime or a
    date converts as asyncpg's own codec does (a naive value is local time)."""
    if type(value) is int:
        return (value,)
    if type(value) is dt.date:
        value = dt.datetime(value.year, value.month, value.day).astimezone()
    if value == _INFINITY:
        return (_PG_INFINITY,)
    if value == _NEGATIVE_INFINITY:
        return (_PG_NEGATIVE_INFINITY,)
    return ((value.astimezone(dt.UTC) - PG_EPOCH) // _MICROSECOND,)


def _decode_timestamptz(value: tuple[int]) -> dt.datetime:
    """A `timestamptz` read on the store's connections: as asyncpg's own codec gives it."""
    (us,) = value
    if us == _PG_INFINITY:
        return _INFINITY
    if us == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return PG_EPOCH + dt.timedelta(microseconds=us)


class OffsetConflict(Exception):
    """The stored offset of a partition is not the one this writer expected: another group
    member has written it since. Nothing of the batch was written."""

    def __init__(self, partitions: Sequence[int]) -> None:
        super().__init__(f"stored offsets moved for partitions {sorted(partitions)}")
        self.partitions = tuple(partitions)


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """Move `partition` from `expected` (the stored next offset) to `next_offset`."""

    partition: int
    expected: int
    next_offset: int


# -- SQL ----------------------------------------------------------------------------------------

_STAGE_COLUMNS = (
    "key",
    "org_id",
    "member_id",
    "billing_group",
    "period_start",
    "period_end",
    "event_time",
    "credits",
    "unfunded",
    "member_limited",
    "group_limited",
    "late",
    "reservation_id",
    "attributes",
    "rating",
    "seat",
    "personal",
    "shared",
    "on_demand",
    "lines",
)
_KEY_COLUMNS = ("org_id", "key", "period_start")
_SETTLEMENT_COLUMNS = (*_STAGE_COLUMNS[:15], "lines")
"""The columns of `settlements` a batch writes (`settled_at` is the server's clock)."""
_TOTAL_COLUMNS = (
    "org_id",
    "member_id",
    "billing_group",
    "period_start",
    "period_end",
    "day",
    "events",
    "credits",
    "seat",
    "personal",
    "shared",
    "on_demand",
    "unfunded",
)

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_settlements (
    key text, org_id text, member_id text, billing_group text,
    period_start timestamptz, period_end timestamptz, event_time timestamptz,
    credits bigint, unfunded bigint,
    member_limited boolean, group_limited boolean, late boolean,
    reservation_id text, attributes jsonb, rating jsonb,
    seat bigint, personal bigint, shared bigint, on_demand bigint, lines text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_rated (
    org_id text, period_start timestamptz, member_id text, credits bigint, rating jsonb
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_totals (
    org_id text, member_id text, billing_group text,
    period_start timestamptz, period_end timestamptz, day date,
    events bigint, credits bigint, seat bigint, personal bigint, shared bigint,
    on_demand bigint, unfunded bigint
) ON COMMIT DELETE ROWS;
"""

# Settlements are identified by (org_id, key): the primary key of `settlement_keys` (0017),
# which outlives the archived months of the partitioned `settlements`.
EXISTING_KEYS = """
SELECT w.org_id, s.key FROM unnest($1::text[], $2::text[]) AS w(org_id, keys)
CROSS JOIN LATERAL (
    SELECT k.key FROM settlement_keys k
    WHERE k.org_id = w.org_id AND k.key = ANY (string_to_array(w.keys, E'\\x1e'))
    OFFSET 0
) AS s
"""
"""The settled keys among some: an array of organizations, and for each its keys joined by the
record separator (a key holds no control character). One string per organization costs asyncpg
a tenth of what an array of every key did. Each organization's keys are one index scan with an
array condition (`key = ANY`), not a join of one probe per key: PostgreSQL sorts the array and
walks the index once. For 20,000 keys of 100 organizations, none of them settled, among a million
settled ones, that took PostgreSQL 0.15-0.2 us a key against 1.55-1.65 for the join on
PostgreSQL 18, and 1.45 against 2.1 on PostgreSQL 15 (consumers/README.md, "Looking keys up").
`OFFSET 0` keeps the subquery a subquery: pulled up into a join, a table not yet analyzed (a new
install, or before autovacuum has got to it) was planned as a hash join over a sequential scan of
every settled key, each batch."""
KEY_SEP = "\x1e"

# The monthly partitions of a month and the two after it (0017_settlement_partitions.sql).
ENSURE_PARTITIONS = "SELECT meter_ensure_partitions($1, 3)"
PARTITIONS_AHEAD = 3

ENSURE_OFFSETS = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, $2, p, o FROM unnest($3::int[], $4::bigint[]) AS t(p, o)
ON CONFLICT (group_id, topic, partition) DO NOTHING
"""

LOAD_OFFSETS = """
SELECT partition, next_offset FROM consumer_offsets
WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int[])
"""

ADVANCE_OFFSETS = """
UPDATE consumer_offsets AS c
SET next_offset = w.next_offset, updated_at = now()
FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS w(partition, expected, next_offset)
WHERE c.group_id = $1 AND c.topic = $2 AND c.partition = w.partition
  AND c.next_offset = w.expected
RETURNING c.partition
"""

_SUMS = """count(*), sum(credits), sum(seat), sum(personal), sum(shared), sum(on_demand),
           sum(unfunded)"""
_ADD = """events = t.events + excluded.events, credits = t.credits + excluded.credits,
        seat = t.seat + excluded.seat, personal = t.personal + excluded.personal,
        shared = t.shared + excluded.shared, on_demand = t.on_demand + excluded.on_demand,
        unfunded = t.unfunded + excluded.unfunded"""
_TOTALS = "events, credits, seat, personal, shared, on_demand, unfunded"


def _add_totals(source: str, sums: str, day: str) -> str:
    """Data-modifying CTEs adding the rows of `source`, summed by `sums`, to every totals table;
    `day` is the UTC day of a source row."""
    upserts = {
        "member_totals": ("member_period_totals", "org_id, member_id, period_start", True),
        "group_totals": ("group_period_totals", "org_id, billing_group, period_start", True),
        "org_totals": ("org_period_totals", "org_id, period_start", True),
        "daily_totals": ("member_daily_totals", "org_id, member_id, day", False),
        "member_group_totals": (
            "member_group_period_totals",
            "org_id, period_start, billing_group, member_id",
            True,
        ),
        "org_daily_totals": ("org_daily_totals", "org_id, day", False),
    }
    ctes = []
    for name, (table, keys, by_period) in upserts.items():
        width = keys.count(",") + 1
        positions = ", ".join(str(i) for i in range(1, width + 1))
        select = keys.replace("day", f"{day} AS day") if "day" in keys else keys
        end_column, end_value = (", period_end", ", max(period_end)") if by_period else ("", "")
        ctes.append(
            f"""{name} AS (
    INSERT INTO {table} AS t ({keys}{end_column}, {_TOTALS})
    SELECT {select}{end_value}, {sums}
    FROM {source} GROUP BY {positions} ORDER BY {positions}
    ON CONFLICT ({keys}) DO UPDATE SET {_ADD}
)"""
        )
    return ", ".join(ctes)


def _add_model_totals(source: str) -> str:
    """Data-modifying CTEs adding the rated rows of `source` (columns org_id, period_start,
    member_id, credits, rating) to the totals by model and dimension (0022_model_totals.sql)."""
    return f"""model_totals AS (
    INSERT INTO model_period_totals AS t (org_id, period_start, member_id, model, events, credits)
    SELECT org_id, period_start, member_id, rating->>'model', count(*), sum(credits)
    FROM {source} WHERE rating IS NOT NULL
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (org_id, period_start, member_id, model) DO UPDATE
    SET events = t.events + excluded.events, credits = t.credits + excluded.credits
), model_dimension_totals AS (
    INSERT INTO model_dimension_period_totals AS t
        (org_id, period_start, member_id, model, dimension, quantity, credits)
    SELECT r.org_id, r.period_start, r.member_id, r.rating->>'model', l->>'dimension',
           sum((l->>'quantity')::numeric), sum((l->>'credits')::numeric)
    FROM {source} AS r, jsonb_array_elements(r.rating->'lines') AS l
    WHERE r.rating IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (org_id, period_start, member_id, model, dimension) DO UPDATE
    SET quantity = t.quantity + excluded.quantity, credits = t.credits + excluded.credits
)"""


MOVE_STAGED = f"""
WITH keys AS (
    INSERT INTO settlement_keys (org_id, key, period_start)
    SELECT org_id, key, period_start FROM stage_settlements
    ORDER BY org_id, key
    ON CONFLICT (org_id, key) DO NOTHING
    RETURNING org_id, key
), ins AS (
    INSERT INTO settlements (key, org_id, member_id, billing_group, period_start, period_end,
                             event_time, credits, unfunded, member_limited, group_limited, late,
                             reservation_id, attributes, rating, lines)
    SELECT DISTINCT ON (org_id, key) key, org_id, member_id, billing_group, period_start,
           period_end, event_time, credits, unfunded, member_limited, group_limited, late,
           reservation_id, attributes, rating, lines
    FROM stage_settlements JOIN keys USING (org_id, key)
    ORDER BY org_id, key
    RETURNING org_id, key
), fresh AS (
    SELECT s.* FROM stage_settlements s JOIN ins USING (org_id, key)
), {_add_totals("fresh", _SUMS, "(event_time AT TIME ZONE 'UTC')::date")},
rated AS (
    INSERT INTO stage_rated SELECT org_id, period_start, member_id, credits, rating
    FROM fresh WHERE rating IS NOT NULL
)
SELECT count(*) FROM ins
"""

# The rated settlements MOVE_STAGED inserted, added to the totals by model after the others.
ADD_RATED_TOTALS = f"""
WITH {_add_model_totals("stage_rated")}
SELECT 1
"""


_STAGED_SUMS = """sum(events), sum(credits), sum(seat), sum(personal), sum(shared),
           sum(on_demand), sum(unfunded)"""

# The staged totals (one row per member, billing group, period start and day of the batch) added
# to every total table: each total row is touched once per batch. Answers whether a void waits
# for its settlement (`APPLY_PENDING_VOIDS` is then due), which saves that statement's round
# trip in the usual write, where none waits. Run after the settlements are inserted, it sees
# every such void: one recorded later waits for the write to commit (`LOCK_SETTLEMENTS`).
ADD_STAGED_TOTALS = f"""
WITH {_add_totals("stage_totals", _STAGED_SUMS, "day")}
SELECT EXISTS (SELECT 1 FROM voids WHERE totals_pending)
"""

# Records sent as one string (`packed`): each record's fields `s.f[1]`, `s.f[2]`, ... (text), and
# a `pg_instant` field as a timestamptz. asyncpg checks every element of an array parameter
# against three abstract base classes, about 0.4 us a text element; one string costs it nothing.
_UNPACKED = """unnest(string_to_array($1::text, E'\\x1d')) AS r (record)
    CROSS JOIN LATERAL string_to_array(r.record, E'\\x1f') AS s (f)"""


def _unpacked_instant(field: str) -> str:
    return f"timestamptz '2000-01-01 00:00:00+00' + {field}::bigint * interval '1 microsecond'"


# The rated settlements of a batch written directly (`packed_rated`) added to the totals by
# model.
ADD_MODEL_TOTALS = f"""
WITH rated AS (
    SELECT s.f[1] AS org_id, {_unpacked_instant("s.f[2]")} AS period_start,
           s.f[3] AS member_id, s.f[4]::bigint AS credits, s.f[5]::jsonb AS rating
    FROM {_UNPACKED}
), {_add_model_totals("rated")}
SELECT 1
"""


# The statements that stand in for the triggers of `settlements` when a batch is copied into its
# partitions (`_insert_settlements`). A run's keys are joined by KEY_SEP. `settled_at` is the
# transaction's `now()`, as the settlements' own default.
LOCK_SETTLEMENTS_PARENT = "LOCK TABLE ONLY settlements IN ROW EXCLUSIVE MODE"
ATTACHED_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'settlements'::regclass AND c.relname = ANY ($1::text[])
"""
INSERT_RUNS = f"""
INSERT INTO settlement_runs (org_id, member_id, settled_at, period_start, keys)
SELECT s.f[1], s.f[2], now(), {_unpacked_instant("s.f[3]")}, string_to_array(s.f[4], E'\\x1e')
FROM {_UNPACKED}
"""
"""The runs of a write (`packed_runs`)."""
ADD_SHARED_DRAWN = """
INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ORDER BY 1, 2
ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn
"""
SHARED_POOL_ALERTS = (
    "SELECT alerts_shared_pool($1::text[], $2::timestamptz[], $3::timestamptz[], now())"
)


# -- rows ---------------------------------------------------------------------------------------

Encoded = tuple[str, str, str, str | None, str | None]
"""A settlement to write: key, organization, the engine's encoding of the rest
(`meter.engine.redis.encode_settlement`, as `settle_encoded` answers it), the free attributes
as JSON text (or None) and how a usage event was rated (`meter.rating.rate.Rating`) as JSON text
(None for an event that carried credits)."""

# Line kinds by their letter in the encoding: the slot of a totals row.
_CODE_SLOT = {"s": 2, "p": 3, "h": 4, "o": 5}
_FLAGS = {str(f): (bool(f & 1), bool(f & 2), bool(f & 4)) for f in range(8)}


def encoded(settlements: Iterable[tuple[Settlement, str | None]]) -> list[Encoded]:
    """Settlements (each with its attributes) in the form the store writes. Settlements that did
    not settle (no period, or a reason) are not storable."""
    out: list[Encoded] = []
    for s, attributes in settlements:
        enc = encode_settlement(s)
        if not enc:
            raise ValueError(f"settlement {s.key!r} did not settle")
        out.append((s.key, s.org_id, enc, attributes, None))
    return out


def stage_rows(settlements: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Settlement records (`BatchRows.settlements`) for the staging table: each with what its
    lines drew by kind (seat, personal, shared, on demand) before its lines."""
    rows: list[tuple[Any, ...]] = []
    for row in settlements:
        lines = row[-1]
        by_kind = [0, 0, 0, 0, 0, 0]
        f = lines.split(SEP)
        for i in range(0, len(f) - 2, 3):
            by_kind[_CODE_SLOT[f[i + 1]]] += int(f[i + 2])
        rows.append((*row[:-1], *by_kind[2:], lines))
    return rows


DAY_MS = 86_400_000


@dataclass(slots=True)
class BatchRows:
    """A batch as COPY records: settlements (each with its lines, in `by_identity` order), and
    totals summed per (org, member, billing group, period start, UTC day of the event time). The
    consumer builds them as each batch settles, off the write's critical path, and `merge_rows`
    joins the batches one transaction writes."""

    settlements: list[tuple[Any, ...]]
    totals: list[tuple[Any, ...]]
    runs: dict[tuple[str, str, int], list[str]] = field(default_factory=dict)
    """Keys settled per (org, member, period start): the write's member runs (0025)."""
    drawn: dict[tuple[str, str], int] = field(default_factory=dict)
    """Credits drawn per (org, shared bucket)."""
    drawn_periods: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per organization that drew from its shared pool, the latest period start and end of the
    settlements that drew."""
    rated: list[tuple[Any, ...]] = field(default_factory=list)
    """The settlements of usage events (with a rating), for the totals by model."""
    starts: set[int] = field(default_factory=set)
    """The period starts of the settlements."""
    ordered: bool = True
    """Whether `settlements` are in `by_identity` order yet (`in_order` puts them so)."""

    def in_order(self) -> list[tuple[Any, ...]]:
        """The settlements in `by_identity` order, sorted now if they were not."""
        if not self.ordered:
            sort_by_identity(self.settlements)
            self.ordered = True
        return self.settlements


by_identity = operator.itemgetter(1, 0)
"""The order a write inserts settlements in: by organization, then key, as the unique indexes
of `settlements` and `settlement_keys` are. One order for every writer, so two writers inserting
the same keys never wait on each other in a cycle; and each organization's rows go into the
indexes together, which costs PostgreSQL about a third less than an order by key alone, where
consecutive rows land in different organizations' parts of every index."""

_BY_KEY = operator.itemgetter(0)
_BY_ORG = operator.itemgetter(1)


def sort_by_identity(rows: list[tuple[Any, ...]]) -> None:
    """Sort settlement records in `by_identity` order, in place: by key, then (stably) by
    organization. Two sorts on strings cost about a quarter of one sort on (organization, key)
    pairs (20,000 records: 0.15 against 0.6 us a record), since a list sort compares keys that
    are all strings without the generic comparison a tuple's items need."""
    rows.sort(key=_BY_KEY)
    rows.sort(key=_BY_ORG)


def merge_rows(parts: Sequence[BatchRows]) -> BatchRows:
    """Several batches' rows as one write's: settlements in `by_identity` order again, totals of the
    same (org, member, billing group, period start, day) added up, each with the latest end
    seen for its organization's period start (as `batch_rows` gives them)."""
    if len(parts) == 1:
        return parts[0]  # (in order or not, as it is)
    settlements: list[tuple[Any, ...]] = []
    sums: dict[tuple[Any, ...], list[Any]] = {}
    ends: dict[tuple[Any, ...], Any] = {}
    for part in parts:
        settlements += part.settlements
        for row in part.totals:
            period = (row[0], row[3])
            if period not in ends or row[4] > ends[period]:
                ends[period] = row[4]
            group = (row[0], row[1], row[2], row[3], row[5])
            total = sums.get(group)
            if total is None:
                sums[group] = list(row)
                continue
            for i in range(6, len(row)):
                total[i] += row[i]
    for total in sums.values():
        total[4] = ends[total[0], total[3]]
    sort_by_identity(settlements)
    merged = BatchRows(settlements, [tuple(t) for t in sums.values()])
    for part in parts:
        merged.rated += part.rated
        merged.starts |= part.starts
        for run, keys in part.runs.items():
            merged.runs.setdefault(run, []).extend(keys)
        for bucket, amount in part.drawn.items():
            merged.drawn[bucket] = merged.drawn.get(bucket, 0) + amount
        for org_id, (start, end) in part.drawn_periods.items():
            _draw_period(merged.drawn_periods, org_id, start, end)
    return merged


def _draw_period(periods: dict[str, tuple[int, int]], org_id: str, start: int, end: int) -> None:
    """Keep, per organization, the latest period start and the latest period end seen."""
    known = periods.get(org_id)
    periods[org_id] = (start, end) if known is None else (max(known[0], start), max(known[1], end))


def batch_rows(items: Iterable[Encoded]) -> BatchRows:
    """COPY records of a batch for the direct write, built straight from the encoded results.
    Instants are `pg_instant` integers, which the store's connections write as they are."""
    builder = RowsBuilder()
    builder.add(items)
    return builder.rows()


class RowsBuilder:
    """`batch_rows` a slice of the batch at a time: `add` each slice in order, then `rows`. The
    consumer yields to its other tasks between slices, so the write in flight is not held up
    behind the whole batch."""

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []
        self._sums: dict[tuple[str, str, str, str, int], list[Any]] = {}
        """Per (org, member, billing group, period start, day): events, credits, seat, personal,
        shared, on_demand, unfunded, and the keys settled."""
        self._ends: dict[tuple[str, str], tuple[int, str]] = {}
        self._instants: dict[str, int] = {}
        self._periods: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._drawn: dict[tuple[str, str], int] = {}
        self._drawn_periods: dict[str, tuple[int, int]] = {}
        self._rated: list[tuple[Any, ...]] = []

    def add(self, items: Iterable[Encoded]) -> None:
        sums, periods, append = self._sums, self._periods, self._rows.append
        code_slot, flag_bits, sep = _CODE_SLOT, _FLAGS, SEP

        for key, org_id, enc, attributes, rating in items:
            f = enc.split(sep)
            member_id, amount, start, end_text, group = f[0], f[1], f[3], f[4], f[5]
            credits = int(amount)
            unfunded = 0 if f[6] == "0" else int(f[6])
            time_ms = int(f[2])
            # The period's instants, once per organization and period (most events of a batch
            # share a few), with the latest end seen for its start.
            period = periods.get((org_id, start, end_text))
            if period is None:
                period = periods[org_id, start, end_text] = self._period(org_id, start, end_text)
            group_key = (org_id, member_id, group, start, time_ms // DAY_MS)
            total = sums.get(group_key)
            if total is None:
                total = sums[group_key] = [0, 0, 0, 0, 0, 0, 0, []]
            total[0] += 1
            total[1] += credits
            total[6] += unfunded
            total[7].append(key)
            if len(f) == 12:
                # One line, as most settlements have, most often of all the credits: its amount
                # is then the same text, converted once.
                code, line = f[10], f[11]
                drawn = credits if line == amount else int(line)
                total[code_slot[code]] += drawn
                if code == "h":
                    self._draw(org_id, f[9], drawn, period)
                lines = f"{f[9]}{sep}{code}{sep}{line}"
            else:
                for i in range(10, len(f) - 1, 3):
                    code, drawn = f[i], int(f[i + 1])
                    total[code_slot[code]] += drawn
                    if code == "h":
                        self._draw(org_id, f[i - 1], drawn, period)
                lines = sep.join(f[9:])
            member_limited, group_limited, late = flag_bits[f[7]]
            row = (
                key, org_id, member_id, group, period[0], period[1],
                (time_ms - PG_EPOCH_MS) * 1000, credits, unfunded, member_limited,
                group_limited, late, f[8] or None, attributes, rating, lines,
            )  # fmt: skip
            append(row)
            if rating is not None:
                self._rated.append(row)

    def _draw(self, org_id: str, bucket_id: str, amount: int, period: tuple[int, int]) -> None:
        """A line drawn from the organization's shared pool."""
        drawn = self._drawn
        drawn[org_id, bucket_id] = drawn.get((org_id, bucket_id), 0) + amount
        _draw_period(self._drawn_periods, org_id, *period)

    def _period(self, org_id: str, start: str, end_text: str) -> tuple[int, int]:
        """A period's start and end as `pg_instant` integers; remembers the latest end seen for
        the organization's period start."""
        end = int(end_text)
        known = self._ends.get((org_id, start))
        if known is None or known[0] < end:
            self._ends[org_id, start] = (end, end_text)
        return self._instant(start), self._instant(end_text)

    def _instant(self, ms: str) -> int:
        value = self._instants.get(ms)
        if value is None:
            value = self._instants[ms] = (int(ms) - PG_EPOCH_MS) * 1000
        return value

    def rows(self, *, ordered: bool = True) -> BatchRows:
        """The batch's records: settlements in `by_identity` order (or as they came, when not
        `ordered`: the write puts them in order, once for all the batches it merges), totals per
        (org, member, billing group, period start, day) with the latest end seen for the
        period."""
        rows, ends, instants = self._rows, self._ends, self._instants
        if ordered:
            sort_by_identity(rows)
        totals: list[tuple[Any, ...]] = []
        runs: dict[tuple[str, str, int], list[str]] = {}
        days: dict[int, dt.date] = {}
        for (org_id, member_id, group, start, day), t in self._sums.items():
            date = days.get(day)
            if date is None:
                date = days[day] = ms_to_datetime(day * DAY_MS).date()
            end_text = ends[org_id, start][1]
            *sums, keys = t
            totals.append(
                (org_id, member_id, group, instants[start], instants[end_text], date, *sums)
            )
            run = (org_id, member_id, instants[start])
            known = runs.get(run)
            if known is None:
                runs[run] = list(keys)
            else:
                known += keys
        starts = {period[0] for period in self._periods.values()}
        return BatchRows(
            rows, totals, runs, self._drawn, self._drawn_periods, self._rated, starts, ordered
        )


# -- the store ----------------------------------------------------------------------------------


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a store connection does on going back to the pool: nothing more than asyncpg always
    does (roll back a transaction left open). asyncpg's default sends a reset query (unlock
    advisory locks, close cursors, unlisten, `RESET ALL`), a round trip of about 0.2 ms on an idle
    server, awaited by every write and lookup; the store's connections take no session lock and
    set nothing, so there is nothing to reset."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=_decode_timestamptz,
        format="tuple",
    )
    await conn.execute(CREATE_STAGING)


async def _init_writer(conn: asyncpg.Connection) -> None:
    """The writer's connection exchanges `timestamptz` as what it is on the wire, a 64-bit
    integer of microseconds since PostgreSQL's epoch (`pg_instant`), through asyncpg's own int8
    codec. The other store connections' codec takes an integer too, but as a Python call per
    value: three a settlement in a COPY, about 0.3 us of the 1.0 to 1.4 a COPY's client side
    costs. Only the writer gets this: the other connections serve readers that want datetimes
    (rate cards, dead letters, quarantine)."""
    await conn.set_builtin_type_codec("timestamptz", schema="pg_catalog", codec_name="int8")
    await conn.execute(CREATE_STAGING)


class SettlementStore:
    """Settlement writes and the reads the consumer needs. A connection of its own writes the
    batches (`write_rows`); the pool's other connections look up the keys of the next batch
    meanwhile, and serve the consumer's other reads and writes."""

    def __init__(self, dsn: str, *, command_timeout_s: float = 60.0) -> None:
        self._dsn = dsn
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncpg.Pool | None = None
        self._months: set[tuple[int, int]] = set()

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await self._create_pool(2, _init_connection)
        if self._writer is None:
            self._writer = await self._create_pool(1, _init_writer)

    async def _create_pool(
        self, size: int, init: Callable[[asyncpg.Connection], Awaitable[None]]
    ) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=size,
            init=init,
            reset=_keep_session,
            command_timeout=self._command_timeout_s,
        )

    async def close(self) -> None:
        pools = [p for p in (self._writer, self._pool) if p is not None]
        self._pool = self._writer = None
        for pool in pools:
            await pool.close()

    def terminate(self) -> None:
        """Drop every connection at once (abandoning whatever is in flight)."""
        pools = [p for p in (self._writer, self._pool) if p is not None]
        self._pool = self._writer = None
        for pool in pools:
            pool.terminate()

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("SettlementStore is not open")
        return self._pool

    @property
    def writer(self) -> asyncpg.Pool:
        """The writer's pool (one connection; instants are `pg_instant` integers there)."""
        if self._writer is None:
            raise RuntimeError("SettlementStore is not open")
        return self._writer

    async def _ensure_partitions(self, starts: Iterable[dt.datetime]) -> None:
        """Have the monthly partitions of the months of `starts` (and the months after them)
        created, once per month and store. Rows of a month without its partition go to the
        DEFAULT partition, so a failure here is logged and the write goes on."""
        months = {(s.year, s.month) for s in starts} - self._months
        for year, month in sorted(months):
            try:
                await self.pool.execute(
                    ENSURE_PARTITIONS, dt.datetime(year, month, 1, tzinfo=dt.UTC)
                )
            except asyncpg.PostgresError as exc:
                log.warning("partitions not created", month=f"{year}-{month:02}", error=str(exc))
                continue
            for ahead in range(PARTITIONS_AHEAD):
                y, m = divmod(year * 12 + month - 1 + ahead, 12)
                self._months.add((y, m + 1))

    async def existing_keys(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (organization, key) pairs among `keys` that are already settled."""
        if not keys:
            return set()
        by_org: dict[str, list[str]] = {}
        for org_id, key in keys:
            listed = by_org.get(org_id)
            if listed is None:
                by_org[org_id] = [key]
            else:
                listed.append(key)
        orgs = list(by_org)
        packed = [KEY_SEP.join(by_org[org_id]) for org_id in orgs]
        if sum(p.count(KEY_SEP) for p in packed) != len(keys) - len(orgs):
            raise ValueError("event keys must not contain control characters")
        await self.open()
        records = await self.pool.fetch(EXISTING_KEYS, orgs, packed)
        return {(r[0], r[1]) for r in records}

    async def load_offsets(
        self, group_id: str, topic: str, beginnings: Mapping[int, int]
    ) -> dict[int, int]:
        """Stored next offsets of the given partitions; a partition seen for the first time
        starts at its beginning offset (from `beginnings`) and is recorded so."""
        await self.open()
        partitions = sorted(beginnings)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                ENSURE_OFFSETS,
                group_id,
                topic,
                partitions,
                [beginnings[p] for p in partitions],
            )
            records = await conn.fetch(LOAD_OFFSETS, group_id, topic, partitions)
        return {int(r[0]): int(r[1]) for r in records}

    async def move_offsets(
        self, group_id: str, topic: str, offsets: Sequence[OffsetAdvance]
    ) -> None:
        """Move stored offsets outside the batch path (an offset outside its partition's log);
        `OffsetConflict` when one moved since it was read."""
        await self.open()
        async with self.pool.acquire() as conn, conn.transaction():
            await _advance(conn, group_id, topic, offsets)

    async def write_batch(
        self,
        group_id: str,
        topic: str,
        settlements: Sequence[tuple[Settlement, str | None]],
        offsets: Sequence[OffsetAdvance],
    ) -> int:
        """Write settlements (each with its attributes as JSON text, or None) and advance offsets
        in one transaction. Returns how many settlements were new. Raises `OffsetConflict`
        (nothing written) when fenced."""
        return await self.write_encoded(group_id, topic, encoded(settlements), offsets)

    async def write_encoded(
        self,
        group_id: str,
        topic: str,
        items: Sequence[Encoded],
        offsets: Sequence[OffsetAdvance],
    ) -> int:
        """`write_batch` of settlements in the engine's encoding."""
        return await self.write_rows(group_id, topic, batch_rows(items), offsets)

    async def write_rows(
        self, group_id: str, topic: str, rows: BatchRows, offsets: Sequence[OffsetAdvance]
    ) -> int:
        """`write_batch` of settlements as their COPY records (`batch_rows`): what the consumer
        holds once a batch settled, without the engine's encoding it was built from."""
        await self.open()
        if not rows.settlements:
            async with self.writer.acquire() as conn, conn.transaction():
                await _advance(conn, group_id, topic, offsets)
            return 0
        settlements = rows.in_order()
        starts = rows.starts or {r[4] for r in settlements}
        await self._ensure_partitions(pg_instant_datetime(start) for start in starts)
        keys = [(r[1], r[0], r[4]) for r in settlements]  # (while the sort left them in cache)
        try:
            async with self.writer.acquire() as conn, conn.transaction():
                await _advance(conn, group_id, topic, offsets)
                await conn.copy_records_to_table(
                    "settlement_keys", records=keys, columns=_KEY_COLUMNS
                )
                await _insert_settlements(conn, rows, starts)
                await conn.copy_records_to_table(
                    "stage_totals", records=rows.totals, columns=_TOTAL_COLUMNS
                )
                voids_pending = await conn.fetchval(ADD_STAGED_TOTALS)
                if rows.rated:
                    await conn.execute(ADD_MODEL_TOTALS, packed_rated(rows.rated))
                if voids_pending:
                    await _apply_pending_voids(conn)
                return len(rows.settlements)
        except asyncpg.UniqueViolationError:
            pass  # some keys are settled already: write again, skipping them
        staged = stage_rows(settlements)
        async with self.writer.acquire() as conn, conn.transaction():
            await _advance(conn, group_id, topic, offsets)
            await conn.copy_records_to_table(
                "stage_settlements", records=staged, columns=_STAGE_COLUMNS
            )
            inserted: int = await conn.fetchval(MOVE_STAGED)
            if inserted:
                await conn.execute(ADD_RATED_TOTALS)
                await _apply_pending_voids(conn)
            return inserted


def packed(records: Sequence[Sequence[object]]) -> str:
    """Records of fields as one string for a statement reading `_UNPACKED`: fields joined by the
    unit separator, records by the group separator. No field may hold either (ids, keys and JSON
    text hold no control character), which the separators' counts confirm."""
    text = "\x1d".join(["\x1f".join(map(str, record)) for record in records])
    fields = sum(len(record) for record in records)
    if text.count("\x1d") != len(records) - 1 or text.count("\x1f") != fields - len(records):
        raise ValueError("ids, keys and ratings must not contain control characters")
    return text


def packed_runs(runs: Mapping[tuple[str, str, int], list[str]]) -> str:
    """Member runs for `INSERT_RUNS`: organization, member, period start (`pg_instant`) and the
    keys joined by the record separator."""
    keys = [KEY_SEP.join(k) for k in runs.values()]
    if sum(k.count(KEY_SEP) for k in keys) != sum(len(k) for k in runs.values()) - len(keys):
        raise ValueError("event keys must not contain control characters")
    return packed([(*run, k) for run, k in zip(runs, keys, strict=True)])


def packed_rated(rated: Sequence[tuple[Any, ...]]) -> str:
    """Rated settlement records for `ADD_MODEL_TOTALS`: organization, period start
    (`pg_instant`), member, credits and rating (JSON text)."""
    return packed([(r[1], r[4], r[2], r[7], r[14]) for r in rated])


def partition_of(start: int) -> str:
    """The monthly partition of `settlements` a period start (`pg_instant`) belongs to
    (`meter_ensure_partitions` names them so)."""
    return f"settlements_{pg_instant_datetime(start):%Y_%m}"


async def _insert_settlements(conn: asyncpg.Connection, rows: BatchRows, starts: set[int]) -> None:
    """COPY a batch's settlements into their monthly partitions, then write what the statement
    triggers of `settlements` would have: the member runs and the shared pool's drawn credits
    and alerts (0023, 0025).

    Why not into `settlements`: PostgreSQL inserts a COPY into a partitioned table with
    statement triggers that read the inserted rows one row at a time, where into a plain table
    it inserts them a page at a time; and the triggers then read every row again. Written
    directly, the settlement path costs PostgreSQL 1 to 2 us an event less (consumers/README.md,
    "Into the partitions"). The runs and the draws are summed by the consumer as it builds the
    rows (`RowsBuilder`).

    The parent is locked first (ROW EXCLUSIVE, as an insert into it would be), so no partition
    is detached meanwhile (`meter archive` detaches under ACCESS EXCLUSIVE), and only
    partitions attached now are written. A month without one (archived, or not created) sends
    the whole batch through `settlements` and its triggers, as every other writer goes."""
    names = {start: partition_of(start) for start in starts}
    await conn.execute(LOCK_SETTLEMENTS_PARENT)
    attached = {r[0] for r in await conn.fetch(ATTACHED_PARTITIONS, list(set(names.values())))}
    if not attached.issuperset(names.values()):
        await conn.copy_records_to_table(
            "settlements", records=rows.settlements, columns=_SETTLEMENT_COLUMNS
        )
        return
    if len(attached) == 1:
        parts = {attached.pop(): rows.settlements}
    else:
        parts = {}
        for row in rows.settlements:
            parts.setdefault(names[row[4]], []).append(row)
    for name, records in parts.items():
        await conn.copy_records_to_table(name, records=records, columns=_SETTLEMENT_COLUMNS)
    if rows.runs:
        await conn.execute(INSERT_RUNS, packed_runs(rows.runs))
    if rows.drawn:
        drawn = sorted(rows.drawn.items())
        await conn.execute(
            ADD_SHARED_DRAWN,
            [b[0][0] for b in drawn],
            [b[0][1] for b in drawn],
            [b[1] for b in drawn],
        )
        periods = rows.drawn_periods
        await conn.execute(
            SHARED_POOL_ALERTS,
            list(periods),
            [p[0] for p in periods.values()],
            [p[1] for p in periods.values()],
        )


async def _apply_pending_voids(conn: asyncpg.Connection) -> None:
    """Take the settlements whose void came before them out of every total (`totals_pending`)."""
    voided = await conn.fetch(APPLY_PENDING_VOIDS)
    if voided:
        keys = [r["key"] for r in voided]
        await conn.execute(SUBTRACT_MODEL_TOTALS, keys, [r["org_id"] for r in voided])


async def _advance(
    conn: asyncpg.Connection, group_id: str, topic: str, offsets: Sequence[OffsetAdvance]
) -> None:
    """Advance the stored offsets; `OffsetConflict` when one moved since the writer read it."""
    if not offsets:
        return
    moved = await conn.fetch(
        ADVANCE_OFFSETS,
        group_id,
        topic,
        [o.partition for o in offsets],
        [o.expected for o in offsets],
        [o.next_offset for o in offsets],
    )
    done = {int(r[0]) for r in moved}
    missing = [o.partition for o in offsets if o.partition not in done]
    if missing:
        raise OffsetConflict(missing)


# -- voids --------------------------------------------------------------------------------------
# A void takes its settlement back out of every total (schemas/migrations/0006_voids.sql). `due`
# names the voided (key, org_id) pairs; the statement subtracts their settlements, with the
# per-kind split of their lines, grouped the way MOVE_STAGED adds them.

_SUB = """events = t.events - x.events, credits = t.credits - x.credits,
        seat = t.seat - x.seat, personal = t.personal - x.personal,
        shared = t.shared - x.shared, on_demand = t.on_demand - x.on_demand,
        unfunded = t.unfunded - x.unfunded"""
_X = "events, credits, seat, personal, shared, on_demand, unfunded"

_SUBTRACT = f"""
v AS (
    SELECT s.key COLLATE "default" AS key, s.org_id COLLATE "default" AS org_id,
           s.member_id COLLATE "default" AS member_id, s.billing_group, s.period_start,
           (s.event_time AT TIME ZONE 'UTC')::date AS day, s.credits, s.unfunded,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'seat'), 0) AS seat,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'personal'), 0) AS personal,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'shared'), 0) AS shared,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'on_demand'), 0) AS on_demand
    FROM due JOIN settlements s ON s.key = due.key AND s.org_id = due.org_id
    LEFT JOIN LATERAL meter_lines(s.lines) AS l ON true
    GROUP BY s.org_id, s.key, s.period_start
), member_totals AS (
    UPDATE member_period_totals AS t SET {_SUB}
    FROM (SELECT org_id, member_id, period_start, {_SUMS} FROM v GROUP BY 1, 2, 3)
        AS x (org_id, member_id, period_start, {_X})
    WHERE t.org_id = x.org_id AND t.member_id = x.member_id AND t.period_start = x.period_start
), group_totals AS (
    UPDATE group_period_totals AS t SET {_SUB}
    FROM (SELECT org_id, billing_group, period_start, {_SUMS} FROM v GROUP BY 1, 2, 3)
        AS x (org_id, billing_group, period_start, {_X})
    WHERE t.org_id = x.org_id AND t.billing_group = x.billing_group
      AND t.period_start = x.period_start
), org_totals AS (
    UPDATE org_period_totals AS t SET {_SUB}
    FROM (SELECT org_id, period_start, {_SUMS} FROM v GROUP BY 1, 2)
        AS x (org_id, period_start, {_X})
    WHERE t.org_id = x.org_id AND t.period_start = x.period_start
), daily_totals AS (
    UPDATE member_daily_totals AS t SET {_SUB}
    FROM (SELECT org_id, member_id, day, {_SUMS} FROM v GROUP BY 1, 2, 3)
        AS x (org_id, member_id, day, {_X})
    WHERE t.org_id = x.org_id AND t.member_id = x.member_id AND t.day = x.day
), member_group_totals AS (
    UPDATE member_group_period_totals AS t SET {_SUB}
    FROM (SELECT org_id, period_start, billing_group, member_id, {_SUMS} FROM v
          GROUP BY 1, 2, 3, 4)
        AS x (org_id, period_start, billing_group, member_id, {_X})
    WHERE t.org_id = x.org_id AND t.period_start = x.period_start
      AND t.billing_group = x.billing_group AND t.member_id = x.member_id
), org_daily_totals AS (
    UPDATE org_daily_totals AS t SET {_SUB}
    FROM (SELECT org_id, day, {_SUMS} FROM v GROUP BY 1, 2) AS x (org_id, day, {_X})
    WHERE t.org_id = x.org_id AND t.day = x.day
)
"""

VOID_TOTALS = f"""WITH due AS (SELECT $1::text AS key, $2::text AS org_id), {_SUBTRACT}
SELECT count(*) FROM v"""

APPLY_PENDING_VOIDS = f"""
WITH due AS (
    UPDATE voids AS w SET totals_pending = false
    FROM settlements s
    WHERE w.totals_pending AND s.key = w.event_key AND s.org_id = w.org_id
    RETURNING w.event_key AS key, w.org_id
), {_SUBTRACT}
SELECT key, org_id FROM v"""

# Voided settlements (arrays of keys and organizations) taken out of the totals by model. A
# statement of its own, after the other totals, as the batch writes add to them: both take the
# period totals' row locks first, then the model totals', so the two never wait on each other
# in a cycle.
SUBTRACT_MODEL_TOTALS = """
WITH due AS (SELECT * FROM unnest($1::text[], $2::text[]) AS d (key, org_id)),
rated AS (
    SELECT s.org_id COLLATE "default" AS org_id, s.period_start,
           s.member_id COLLATE "default" AS member_id, s.credits, s.rating
    FROM due JOIN settlements s ON s.key = due.key AND s.org_id = due.org_id
    WHERE s.rating IS NOT NULL
), model_totals AS (
    UPDATE model_period_totals AS t
    SET events = t.events - x.events, credits = t.credits - x.credits
    FROM (SELECT org_id, period_start, member_id, rating->>'model', count(*), sum(credits)
          FROM rated GROUP BY 1, 2, 3, 4)
        AS x (org_id, period_start, member_id, model, events, credits)
    WHERE t.org_id = x.org_id AND t.period_start = x.period_start
      AND t.member_id = x.member_id AND t.model = x.model
), model_dimension_totals AS (
    UPDATE model_dimension_period_totals AS t
    SET quantity = t.quantity - x.quantity, credits = t.credits - x.credits
    FROM (SELECT r.org_id, r.period_start, r.member_id, r.rating->>'model', l->>'dimension',
                 sum((l->>'quantity')::numeric), sum((l->>'credits')::numeric)
          FROM rated AS r, jsonb_array_elements(r.rating->'lines') AS l GROUP BY 1, 2, 3, 4, 5)
        AS x (org_id, period_start, member_id, model, dimension, quantity, credits)
    WHERE t.org_id = x.org_id AND t.period_start = x.period_start
      AND t.member_id = x.member_id AND t.model = x.model AND t.dimension = x.dimension
)
SELECT 1"""

SETTLEMENT_EXISTS = "SELECT 1 FROM settlements WHERE key = $1 AND org_id = $2"

# Makes settlement writers wait (and waits for them): the settlement either is visible after it,
# or is written after this transaction, by a batch that then sees the pending void.
LOCK_SETTLEMENTS = "LOCK TABLE settlements IN SHARE MODE"

# A void is recorded once; a request that found nothing to void may be followed by one that did.
UPSERT_VOID = """
INSERT INTO voids (org_id, event_key, requested_at, voided, returned, requested_by,
                   totals_pending)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
ON CONFLICT (org_id, event_key) DO UPDATE SET
    requested_at = excluded.requested_at, voided = excluded.voided,
    returned = excluded.returned, requested_by = excluded.requested_by,
    totals_pending = excluded.totals_pending
WHERE NOT voids.voided AND excluded.voided
RETURNING 1
"""

SELECT_VOID = "SELECT returned FROM voids WHERE org_id = $1 AND event_key = $2 AND voided"


def _returned_json(lines: Iterable[Line]) -> str:
    return orjson.dumps(
        [{"bucket_id": ln.bucket_id, "kind": ln.kind.value, "amount": ln.amount} for ln in lines]
    ).decode()


async def record_void(
    conn: asyncpg.Connection,
    org_id: str,
    key: str,
    result: VoidResult,
    at_ms: int,
    requested_by: str = "",
) -> bool:
    """Record what `engine.void` returned for `key`, and take the voided settlement out of every
    total, in one transaction. Idempotent: True only when this call recorded the void (a second
    void of the same key, or one that voided nothing, changes no total). On `conn`, inside the
    caller's transaction when it has one (this one is then a savepoint)."""
    async with conn.transaction():
        exists = await conn.fetchval(SETTLEMENT_EXISTS, key, org_id) is not None
        if result.voided and not exists:
            await conn.execute(LOCK_SETTLEMENTS)
            exists = await conn.fetchval(SETTLEMENT_EXISTS, key, org_id) is not None
        recorded = await conn.fetchval(
            UPSERT_VOID,
            org_id,
            key,
            ms_to_datetime(at_ms),
            result.voided,
            _returned_json(result.returned),
            requested_by,
            result.voided and not exists,
        )
        if recorded is None or not result.voided:
            return False
        if exists:
            await conn.execute(VOID_TOTALS, key, org_id)
            await conn.execute(SUBTRACT_MODEL_TOTALS, [key], [org_id])
        return True


async def recorded_void(conn: asyncpg.Connection, org_id: str, key: str) -> VoidResult | None:
    """The void PostgreSQL holds for `key` (as a duplicate), or None when it was never voided.
    Redis forgets void records when it loses its data; PostgreSQL keeps them."""
    returned = await conn.fetchval(SELECT_VOID, org_id, key)
    if returned is None:
        return None
    items = orjson.loads(returned) if isinstance(returned, str | bytes) else returned
    lines = tuple(Line(i["bucket_id"], Kind(i["kind"]), int(i["amount"])) for i in items)
    return VoidResult(key, True, lines, duplicate=True)
