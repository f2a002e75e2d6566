"""The CSV export of a period: `Billing Group,Member Name,Email,Credits Consumption`.

One row per member and billing group the member's usage was attributed to in the period (a
member reassigned mid-period appears under each group), credits as decimals, no period column and
no money. In the current period, current members without usage are listed too, with 0, under
their current group; a historical period lists usage records only.

Rows are ordered by billing group name, billing group id, member name, member id, each in code
point order. The text is UTF-8, RFC 4180: CRLF line ends, a field is quoted when it holds a comma,
a double quote (doubled inside) or a line break.

Formula injection: names and emails are chosen by customers and the file is opened in
spreadsheets, which run a cell starting with `=`, `+`, `-` or `@` (or a tab or carriage return
before one) as a formula. Such a text cell is written with a single quote in front (`'=1+1`), as
OWASP recommends: the spreadsheet shows it as text. The credits column is a number the service
formats itself (`meter.money.format_credits`) and stays a number.

The rows come from a server-side cursor in a read-only repeatable-read transaction, fetched and
encoded a slice at a time, so memory stays flat however large the organization is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]

from meter.money import format_credits
from meter.reports import queries as q
from meter.reports.service import ReportingPeriod, Reports, billing_group_filter

HEADER = ("Billing Group", "Member Name", "Email", "Credits Consumption")
FETCH_ROWS = 2000
CHUNK_CHARS = 64 * 1024
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def text_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: with a single quote in front when it would
    otherwise start a formula, else unchanged."""
    return "'" + text if text.startswith(FORMULA_START) else text


async def stream_csv(
    pool: asyncpg.Pool, org_id: str, period: ReportingPeriod, billing_group: str | None
) -> AsyncIterator[bytes]:
    """The CSV of an already resolved period, in chunks of about `CHUNK_CHARS`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(q.EXPORT, org_id, period.start, billing_group, period.current)
        while rows := await cursor.fetch(FETCH_ROWS):
            writer.writerows(
                (text_cell(group), text_cell(name), text_cell(email), format_credits(credits))
                for group, name, email, credits in rows
            )
            if buffer.tell() >= CHUNK_CHARS:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()


async def export(
    reports: Reports, org_id: str, period: str | None, billing_group: str | None
) -> tuple[ReportingPeriod, str | None, AsyncIterator[bytes]]:
    """Validate the request (organization, period, billing group), then return the resolved
    period, the group filter and the CSV stream. Errors are raised here, before any byte."""
    resolved = await reports.period(org_id, period)
    group = billing_group_filter(billing_group)
    await reports.check_group(org_id, group)
    return resolved, group, stream_csv(reports.pool, org_id, resolved, group)


def file_name(org_id: str, period: ReportingPeriod, group: str | None) -> str:
    """`<org>_<period start date>[_<group id or Unassigned>].csv`."""
    parts = [org_id, period.start.date().isoformat()]
    if group is not None:
        parts.append(group or "Unassigned")
    return "_".join(parts) + ".csv"
