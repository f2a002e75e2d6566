"""`meter archive --before YYYY-MM`: move closed months of settlements out of PostgreSQL.

`settlements` is partitioned by UTC month of period start
(schemas/migrations/0017_settlement_partitions.sql), and each settlement holds its lines
(0023_lines_in_settlements.sql). For each monthly partition wholly before the given month, in
one transaction per month:

1. lock the month's partition against writes (SHARE), and refuse when a period of the month
   may still take settlements (its end plus the organization's grace is not past);
2. verify the rows against `org_period_totals`, the totals reports read: per organization and
   period, the settlements not voided (count, credits, unfunded) and their lines (per kind) must
   equal the totals; refuse on any difference, naming the first ones;
3. write the rows to `settlements-YYYY-MM.jsonl.gz` in the archive directory (gzip'd JSON lines,
   settlements then lines, each with a `"table"` field), and `<file>.sha256` beside it;
4. add the lines' credits per bucket to `archived_bucket_drawn` (so the rebuild still knows what
   a bucket gave), delete the month's member runs (`settlement_runs`, what the member history
   reads), record the month in `settlement_archives`, detach the partition and drop it (or keep
   it detached, `--keep`).

A month already in `settlement_archives` is skipped, so running it again is safe; a run that
stopped half-way left its month attached and redoes it. `settlement_keys` keeps the identity of
archived settlements, so their redelivery still settles nothing. Reports and exports read the
totals tables, which archiving leaves alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]
import structlog

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.settings import Settings

log = structlog.get_logger("meter.archive")

FETCH_ROWS = 5000
"""Rows read per round trip while writing a file."""

DETACH_LOCK_TIMEOUT_S = 10.0
"""How long detaching waits for the parent tables' exclusive lock before giving up."""

_PARTITION = re.compile(r"^settlements_(\d{4})_(\d{2})$")

# -- SQL ----------------------------------------------------------------------------------------

MONTHLY_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'settlements'::regclass
"""

ARCHIVED = "SELECT month FROM settlement_archives WHERE month < $1 ORDER BY month"
DELETE_RUNS = "DELETE FROM settlement_runs WHERE period_start >= $1 AND period_start < $2"
"""The month's member runs (0025_member_runs.sql): the member history reads its settlements
through them. A scan of the runs, once a month archived; the runs have no index by month, which
would cost every write."""

DEFAULT_ROWS = "SELECT count(*) FROM settlements_default WHERE period_start < $1"

# Periods of the month that may still take settlements: by the settlements it holds, and by the
# totals (a period whose settlements were all voided still has its totals row).
STILL_OPEN = """
SELECT x.org_id, max(x.period_end) AS period_end FROM (
    SELECT org_id, period_end FROM {settlements}
    UNION ALL
    SELECT org_id, period_end FROM org_period_totals WHERE period_start >= $1 AND period_start < $2
) AS x JOIN organizations o USING (org_id)
WHERE x.period_end + make_interval(secs => o.grace_seconds) > now()
GROUP BY x.org_id ORDER BY x.org_id LIMIT 5
"""

_KINDS = ("seat", "personal", "shared", "on_demand")
_COMPARED = ("events", "credits", "unfunded", *_KINDS)

# Per organization and period: what the month's rows add up to (voided settlements are out of
# the totals) next to the totals; rows that differ.
MISMATCHES = f"""
WITH live AS (
    SELECT s.org_id, s.key, s.period_start, s.credits, s.unfunded FROM {{settlements}} s
    WHERE NOT EXISTS (SELECT 1 FROM voids v WHERE v.org_id = s.org_id AND v.event_key = s.key
                      AND v.voided AND NOT v.totals_pending)
), rows_ AS (
    SELECT org_id, period_start, count(*) AS events, sum(credits) AS credits,
           sum(unfunded) AS unfunded
    FROM live GROUP BY 1, 2
), lines AS (
    SELECT l.org_id, l.period_start,
           {", ".join(f"sum(l.amount) FILTER (WHERE l.kind = '{k}') AS {k}" for k in _KINDS)}
    FROM {{lines}} l JOIN live s USING (org_id, key, period_start)
    GROUP BY 1, 2
), got AS (
    SELECT r.org_id, r.period_start, r.events, r.credits, r.unfunded,
           {", ".join(f"coalesce(l.{k}, 0) AS {k}" for k in _KINDS)}
    FROM rows_ r LEFT JOIN lines l USING (org_id, period_start)
), want AS (
    SELECT org_id, period_start, {", ".join(_COMPARED)} FROM org_period_totals
    WHERE period_start >= $1 AND period_start < $2
)
SELECT org_id, period_start,
       {", ".join(f"coalesce(g.{c}, 0) AS got_{c}, coalesce(w.{c}, 0) AS want_{c}" for c in _COMPARED)}
FROM got g FULL JOIN want w USING (org_id, period_start)
WHERE ({", ".join(f"coalesce(g.{c}, 0)" for c in _COMPARED)})
   <> ({", ".join(f"coalesce(w.{c}, 0)" for c in _COMPARED)})
ORDER BY org_id, period_start
LIMIT 5
"""  # noqa: E501

COUNTS = "SELECT (SELECT count(*) FROM {settlements}), (SELECT count(*) FROM {lines} l)"

SETTLEMENT_ROWS = """
SELECT (jsonb_build_object('table', 'settlements') || (to_jsonb(s) - 'lines'))::text
FROM {settlements} s ORDER BY s.org_id, s.key
"""
LINE_ROWS = """
SELECT (jsonb_build_object('table', 'settlement_lines') || to_jsonb(l))::text
FROM {lines} l ORDER BY l.org_id, l.key, l.bucket_id
"""

ADD_BUCKET_DRAWN = """
INSERT INTO archived_bucket_drawn AS d (org_id, bucket_id, drawn)
SELECT org_id, bucket_id, sum(amount) FROM {lines} l GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn
"""

RECORD = """
INSERT INTO settlement_archives (month, file, sha256, settlements, lines, credits, kept)
VALUES ($1, $2, $3, $4, $5, (SELECT coalesce(sum(credits), 0) FROM {settlements}), $6)
RETURNING credits
"""


# -- errors and results -------------------------------------------------------------------------


class ArchiveError(Exception):
    """A month cannot be archived; nothing of it was changed."""

    code = "archive_refused"


class TotalsMismatch(ArchiveError):
    """The month's rows do not add up to the totals reports are served from."""

    code = "archive_totals_mismatch"


class LockTimeout(ArchiveError):
    """Other transactions held the settlement tables too long; run it again later."""

    code = "archive_lock_timeout"


class PeriodOpen(ArchiveError):
    """A period of the month may still take settlements."""

    code = "archive_period_open"


@dataclass(frozen=True, slots=True)
class MonthArchive:
    """One archived month: where its rows went and how many."""

    month: dt.date
    file: Path
    sha256: str
    settlements: int
    lines: int
    credits: int
    kept: bool


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    archived: list[MonthArchive]
    skipped: list[dt.date]
    """Months archived by an earlier run."""
    default_rows: int
    """Settlements before the cutoff in the DEFAULT partition, which archiving leaves alone."""


def parse_month(text: str) -> dt.date:
    """`YYYY-MM` to the first day of that month."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)")
    return dt.date(int(match[1]), int(match[2]), 1)


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _at(month: dt.date) -> dt.datetime:
    return dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)


def file_name(month: dt.date) -> str:
    return f"settlements-{month:%Y-%m}.jsonl.gz"


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """Rows written out of `total`: a bar with rows/s on a terminal, a plain line at each tenth
    otherwise."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._start = time.monotonic()
        self._shown = 0.0
        self._tenth = 0
        self.done = 0

    def _rate(self) -> float:
        return self.done / max(time.monotonic() - self._start, 1e-9)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._tty:
            now = time.monotonic()
            if now - self._shown >= 0.1 or self.done >= self._total:
                self._shown = now
                filled = 30 * min(self.done, self._total) // self._total
                self._stream.write(
                    f"\r{self._label} [{'#' * filled}{'.' * (30 - filled)}] "
                    f"{self.done}/{self._total} rows {self._rate():,.0f} rows/s"
                )
                self._stream.flush()
            return
        tenth = 10 * min(self.done, self._total) // self._total
        if tenth > self._tenth:
            self._tenth = tenth
            print(
                f"{self._label}: {self.done}/{self._total} rows ({tenth * 10}%), "
                f"{self._rate():,.0f} rows/s",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


class ArchiveFile:
    """A gzip'd JSON-lines file written through a temporary name, hashing the compressed bytes;
    `finish` syncs it, moves it in place and writes `<name>.sha256`. Blocking: called from a
    thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 (closed by finish)
        self._sha256 = hashlib.sha256()
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self, compresslevel=6, mtime=0)

    def write(self, data: bytes) -> int:
        """What the gzip stream writes: hashed, then written to disk."""
        self._sha256.update(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def add(self, lines: list[str]) -> None:
        self._gz.write("".join(line + "\n" for line in lines).encode())

    def finish(self) -> str:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        digest = self._sha256.hexdigest()
        os.replace(self._tmp, self.path)
        self.path.with_name(self.path.name + ".sha256").write_text(f"{digest}  {self.path.name}\n")
        return digest


# -- archiving ----------------------------------------------------------------------------------


async def archive(
    dsn: str,
    before: dt.date,
    directory: Path,
    *,
    keep: bool = False,
    progress: Callable[[str, int], Progress] | None = None,
) -> ArchiveReport:
    """Archive every month of settlements before `before` (the first day of a month) into
    `directory`. Raises `ArchiveError` for the first month it refuses (months before it stay
    archived)."""
    conn = await asyncpg.connect(dsn)
    try:
        cutoff = _at(before)
        skipped = [r[0] for r in await conn.fetch(ARCHIVED, before)]
        months = sorted(
            dt.date(int(m[1]), int(m[2]), 1)
            for r in await conn.fetch(MONTHLY_PARTITIONS)
            if (m := _PARTITION.match(r[0])) is not None
        )
        default_rows = int(await conn.fetchval(DEFAULT_ROWS, cutoff))
        done = []
        for month in months:
            if month >= before:
                continue
            done.append(await _archive_month(conn, month, directory, keep, progress))
        return ArchiveReport(done, skipped, default_rows)
    finally:
        await conn.close()


async def _archive_month(
    conn: asyncpg.Connection,
    month: dt.date,
    directory: Path,
    keep: bool,
    progress: Callable[[str, int], Progress] | None,
) -> MonthArchive:
    suffix = f"{month:%Y_%m}"
    tables = {"settlements": f"settlements_{suffix}", "lines": _lines_of(f"settlements_{suffix}")}
    lo, hi = _at(month), _at(_next_month(month))
    label = f"{month:%Y-%m}"
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        await conn.execute(f"LOCK TABLE {tables['settlements']} IN SHARE MODE")
        still_open = await conn.fetch(STILL_OPEN.format(**tables), lo, hi)
        if still_open:
            which = ", ".join(f"{r['org_id']} until {r['period_end']:%Y-%m-%d}" for r in still_open)
            raise PeriodOpen(f"{label}: periods still open or in their grace window ({which})")
        mismatches = await conn.fetch(MISMATCHES.format(**tables), lo, hi)
        if mismatches:
            raise TotalsMismatch(
                f"{label}: rows differ from org_period_totals: "
                + "; ".join(_mismatch(r) for r in mismatches)
            )
        settlements, lines = await conn.fetchrow(COUNTS.format(**tables))
        shown = progress(label, settlements + lines) if progress is not None else None
        path = directory / file_name(month)
        digest = await _write(conn, tables, path, shown)
        await conn.execute(ADD_BUCKET_DRAWN.format(**tables))
        await conn.execute(DELETE_RUNS, lo, hi)
        credits = await conn.fetchval(
            RECORD.format(**tables), month, str(path), digest, settlements, lines, keep
        )
        # Detaching locks the parent exclusively, and writers queue behind a waiting lock:
        # give up rather than stall settlement behind a long query.
        await conn.execute(f"SET LOCAL lock_timeout = '{int(DETACH_LOCK_TIMEOUT_S * 1000)}ms'")
        try:
            await conn.execute(f"ALTER TABLE settlements DETACH PARTITION {tables['settlements']}")
            if not keep:
                await conn.execute(f"DROP TABLE {tables['settlements']}")
        except asyncpg.LockNotAvailableError as exc:
            raise LockTimeout(f"{label}: the partitions could not be detached: {exc}") from exc
    log.info(
        "month archived", month=label, settlements=settlements, lines=lines, file=str(path),
        kept=keep,
    )  # fmt: skip
    return MonthArchive(month, path, digest, settlements, lines, int(credits), keep)


def _lines_of(partition: str) -> str:
    """The lines of a month's partition, as rows of `settlement_lines` (a subquery)."""
    return (
        "(SELECT s.key, s.org_id, l.bucket_id, l.kind, l.amount, s.period_start"
        f" FROM {partition} s CROSS JOIN LATERAL meter_lines(s.lines) AS l)"
    )


def _mismatch(r: asyncpg.Record) -> str:
    diffs = ", ".join(
        f"{c} {r['got_' + c]} vs {r['want_' + c]}"
        for c in _COMPARED
        if r["got_" + c] != r["want_" + c]
    )
    return f"{r['org_id']} period {r['period_start']:%Y-%m-%d}: {diffs}"


async def _write(
    conn: asyncpg.Connection, tables: dict[str, str], path: Path, shown: Progress | None
) -> str:
    """Write the month's rows to `path` and its `.sha256`; returns the file's sha256."""
    out = await asyncio.to_thread(ArchiveFile, path)
    for query in (SETTLEMENT_ROWS, LINE_ROWS):
        # A cursor closed by name: the partitions are detached after it, in this transaction.
        await conn.execute(f"DECLARE archive_rows NO SCROLL CURSOR FOR {query.format(**tables)}")
        # Each slice is compressed in a thread while the next one is fetched.
        pending: asyncio.Future[None] | None = None
        while rows := await conn.fetch(f"FETCH {FETCH_ROWS} FROM archive_rows"):
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(out.add, [r[0] for r in rows]))
            if shown is not None:
                shown.advance(len(rows))
        if pending is not None:
            await pending
        await conn.execute("CLOSE archive_rows")
    if shown is not None:
        shown.close()
    return await asyncio.to_thread(out.finish)


# -- command ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter archive --before YYYY-MM [--dir DIR] [--keep]`."""
    parser.add_argument(
        "--before", required=True, type=parse_month, metavar="YYYY-MM",
        help="archive the months before this one (at most the current month)",
    )  # fmt: skip
    parser.add_argument("--dir", type=Path, help="where the files go (default: DATA_DIR/archive)")
    parser.add_argument(
        "--keep", action="store_true", help="leave the partitions detached instead of dropping"
    )

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        current = dt.datetime.now(dt.UTC).date().replace(day=1)
        if args.before > current:
            print(
                f"meter archive: --before {args.before:%Y-%m} is after the current month",
                file=sys.stderr,
            )
            return 2
        directory = args.dir or settings.data_dir / "archive"
        async with provision(settings, only={"postgres"}) as services:
            await migrate(services.postgres_dsn)
            try:
                report = await archive(
                    services.postgres_dsn, args.before, directory, keep=args.keep,
                    progress=Progress,
                )  # fmt: skip
            except ArchiveError as exc:
                print(f"meter archive: {exc.code}: {exc}", file=sys.stderr)
                return 1
        for month in report.skipped:
            print(f"{month:%Y-%m}: archived before, skipped")
        for done in report.archived:
            print(
                f"{done.month:%Y-%m}: {done.settlements} settlements, {done.lines} lines, "
                f"{done.credits} credits -> {done.file} (sha256 {done.sha256})"
            )
        if report.default_rows:
            print(
                f"meter archive: {report.default_rows} settlements before {args.before:%Y-%m} "
                "are in the DEFAULT partition and were left there",
                file=sys.stderr,
            )
        return 0

    return handle
