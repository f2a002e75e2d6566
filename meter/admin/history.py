"""Reads of what happened, page by page, newest first: an organization's alerts, a member's
settlements. PostgreSQL only (indexes of `0021_history_reads.sql`, and the runs of
`0025_member_runs.sql`).

A member's settlements page by `(settled_at, key)`; the cursor `next_before` is that pair of the
page's last item, opaque to the client (base64url of a JSON pair).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.admin.reads import DEFAULT_PAGE, org_exists, settlement_out
from meter.alerts import KINDS
from meter.errors import InvalidInput, NotFound
from meter.money import format_credits
from schemas import api

SELECT_ALERTS_PAGE = """
SELECT alert_id, subject_kind, subject_id, period_start, period_end, threshold, amount, reference,
       detail, created_at, published_at
FROM alerts WHERE org_id = $1 AND alert_id < $2
ORDER BY alert_id DESC LIMIT $3
"""
SELECT_MEMBER_EXISTS = "SELECT 1 FROM members WHERE org_id = $1 AND member_id = $2"
SELECT_MEMBER_SETTLEMENTS = """
SELECT s.*, b.name AS billing_group_name
FROM (
    SELECT r.settled_at, r.period_start, k.key
    FROM settlement_runs r CROSS JOIN LATERAL unnest(r.keys) AS k(key)
    WHERE r.org_id = $1 AND r.member_id = $2 AND r.settled_at <= $3
      AND (r.settled_at, k.key) < ($3, $4)
    ORDER BY r.settled_at DESC, k.key DESC LIMIT $5
) AS p
CROSS JOIN LATERAL (
    SELECT * FROM settlements
    WHERE org_id = $1 AND key = p.key AND period_start = p.period_start
    OFFSET 0
) AS s
LEFT JOIN billing_groups b ON b.org_id = $1 AND b.billing_group_id = s.billing_group
ORDER BY p.settled_at DESC, p.key DESC
"""
"""A page of a member's settlements: the member's runs (`settlement_runs`, one per write)
newest first, each run's keys in reverse byte order, then each settlement by its primary key
(`OFFSET 0` keeps that a lookup per key: joined, a table without statistics could be planned as
a scan of the organization's settlements)."""
SELECT_LINES_OF = """
SELECT key, bucket_id, kind, amount FROM settlement_lines
WHERE org_id = $1 AND key = any($2::text[])
"""
SELECT_VOIDS_OF = """
SELECT event_key, requested_at, returned FROM voids
WHERE org_id = $1 AND event_key = any($2::text[]) AND voided
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LAST_ID = 2**63 - 1


def _after_id(text: str | None) -> int:
    if text is None or text == "":
        return _LAST_ID
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput("after must be the next_after of a previous page", code="invalid_cursor")
    return int(text)


def _alert(row: asyncpg.Record) -> api.AlertOut:
    kind = row["subject_kind"]
    amount, reference = format_credits(row["amount"]), format_credits(row["reference"])
    limited = kind in ("member", "billing_group")
    return api.AlertOut(
        alert_id=row["alert_id"],
        kind=KINDS[kind],  # type: ignore[arg-type]
        member_id=row["subject_id"] if kind == "member" else None,
        billing_group_id=row["subject_id"] if kind == "billing_group" else None,
        threshold_percent=None if kind == "quarantine" else row["threshold"],
        used=amount if limited else None,
        limit=reference if limited else None,
        remaining=amount if kind == "shared_pool" else None,
        granted=reference if kind == "shared_pool" else None,
        reason=row["detail"] if kind == "quarantine" else None,
        period_start=row["period_start"],
        period_end=row["period_end"],
        created_at=row["created_at"],
        published_at=row["published_at"],
    )


async def alerts(
    db: asyncpg.Pool, org_id: str, *, after: str | None = None, limit: int = DEFAULT_PAGE
) -> api.AlertList:
    """The organization's alerts, newest first, those older than `after` (a `next_after`)."""
    await org_exists(db, org_id)
    rows = await db.fetch(SELECT_ALERTS_PAGE, org_id, _after_id(after), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return api.AlertList(
        alerts=[_alert(r) for r in rows],
        next_after=str(rows[-1]["alert_id"]) if more else None,
    )


def encode_before(settled_at: dt.datetime, key: str) -> str:
    """The cursor after which a page continues: `(settled_at, key)` of its last item."""
    micros = (settled_at - _EPOCH) // dt.timedelta(microseconds=1)
    return base64.urlsafe_b64encode(orjson.dumps([micros, key])).decode().rstrip("=")


def decode_before(text: str | None) -> tuple[dt.datetime, str]:
    """`(settled_at, key)` of a cursor; no cursor is after everything."""
    if text is None or text == "":
        return dt.datetime.max.replace(tzinfo=dt.UTC), ""
    try:
        pair: Any = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        micros, key = pair
        if type(micros) is not int or type(key) is not str or len(key) > 600:
            raise ValueError
        return _EPOCH + dt.timedelta(microseconds=micros), key
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidInput(
            "before must be the next_before of a previous page", code="invalid_cursor"
        ) from None


async def member_settlements(
    db: asyncpg.Pool,
    org_id: str,
    member_id: str,
    *,
    before: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> api.SettlementList:
    """The member's settlements, newest first, with their lines and voids (as one settlement
    is read); 404 `member_not_found` for a member the organization never had."""
    at, key = decode_before(before)
    await org_exists(db, org_id)
    if await db.fetchval(SELECT_MEMBER_EXISTS, org_id, member_id) is None:
        raise NotFound("member not found", code="member_not_found")
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(SELECT_MEMBER_SETTLEMENTS, org_id, member_id, at, key, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        keys = [r["key"] for r in rows]
        lines: dict[str, list[asyncpg.Record]] = {k: [] for k in keys}
        voids: dict[str, asyncpg.Record] = {}
        if keys:
            for line in await conn.fetch(SELECT_LINES_OF, org_id, keys):
                lines[line["key"]].append(line)
            voids = {v["event_key"]: v for v in await conn.fetch(SELECT_VOIDS_OF, org_id, keys)}
    last = rows[-1] if more else None
    return api.SettlementList(
        settlements=[settlement_out(r, lines[r["key"]], voids.get(r["key"])) for r in rows],
        next_before=None if last is None else encode_before(last["settled_at"], last["key"]),
    )
