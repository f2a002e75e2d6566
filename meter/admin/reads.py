"""Reads a client needs to understand its account: organizations, buckets with their grants, seats
with their credits, one settlement by event key, dead letters. PostgreSQL, plus Redis for what
buckets have left. No writes here.

Unassigned is spelled one way in these answers: billing group id `null`, name `Unassigned`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.admin.clock import from_ms, to_ms
from meter.engine.types import UNASSIGNED, Engine
from meter.errors import InvalidInput, NotFound
from meter.money import format_credits
from meter.plans.seats import seat_bucket_id
from schemas import api
from schemas.events import split_event_key

UNASSIGNED_NAME = "Unassigned"
MAX_PAGE = 1000
DEFAULT_PAGE = 100

SELECT_ORGS_PAGE = """
SELECT * FROM organizations
WHERE org_id > $1 AND ($2::text IS NULL OR status = $2)
ORDER BY org_id LIMIT $3
"""
SELECT_ORG_EXISTS = "SELECT 1 FROM organizations WHERE org_id = $1"
SELECT_GRANTS = """
SELECT bucket_id, kind, member_id, amount, valid_from, expires_at, revoked_at
FROM credit_grants WHERE org_id = $1 ORDER BY expires_at, bucket_id
"""
SELECT_SEAT_GRANTS = """
SELECT bucket_id, amount FROM credit_grants WHERE org_id = $1 AND bucket_id = any($2::text[])
"""
SELECT_SETTLEMENT = """
SELECT s.*, b.name AS billing_group_name
FROM settlements s
LEFT JOIN billing_groups b ON b.org_id = $1 AND b.billing_group_id = s.billing_group
WHERE s.org_id = $1 AND s.key = $2
"""
SELECT_SETTLEMENT_LINES = """
SELECT bucket_id, kind, amount FROM settlement_lines WHERE org_id = $1 AND key = $2
ORDER BY bucket_id
"""
SELECT_VOID = """
SELECT requested_at, returned FROM voids WHERE org_id = $1 AND event_key = $2 AND voided
"""
SELECT_DEAD_LETTERS = """
SELECT * FROM dead_letters
WHERE ($1::text IS NULL OR org_id = $1) AND ($2::text IS NULL OR reason = $2) AND id < $3
ORDER BY id DESC LIMIT $4
"""

_KIND_ORDER = {"seat": 0, "personal": 1, "shared": 2, "on_demand": 3}


def page_limit(text: str | None) -> int:
    """A `limit` query parameter: 1..`MAX_PAGE`, default `DEFAULT_PAGE`."""
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text[:7]) <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer in 1..{MAX_PAGE}", code="invalid_limit")
    return int(text)


def _cursor(text: str | None) -> int:
    if text is None or text == "":
        return 2**63 - 1
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput("after must be the next_after of a previous page", code="invalid_cursor")
    return int(text)


async def org_exists(db: asyncpg.Pool, org_id: str) -> None:
    if await db.fetchval(SELECT_ORG_EXISTS, org_id) is None:
        raise NotFound("organization not found", code="org_not_found")


def _org(row: asyncpg.Record) -> api.Org:
    return api.Org(**{name: row[name] for name in api.Org.model_fields})


async def list_orgs(db: asyncpg.Pool, status: str | None, after: str, limit: int) -> api.OrgList:
    """Organizations by id after `after`, optionally only those of one status."""
    if status is not None and status not in ("active", "expired", "suspended"):
        raise InvalidInput("status must be active, expired or suspended", code="invalid_query")
    rows = await db.fetch(SELECT_ORGS_PAGE, after, status, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return api.OrgList(
        orgs=[_org(r) for r in rows], next_after=rows[-1]["org_id"] if more else None
    )


async def buckets(
    db: asyncpg.Pool, engine: Engine, org_id: str, now_ms: int, *, show_all: bool
) -> api.Balances:
    """Every bucket's credits left (`balances`, the original map) and, per bucket, its grant
    (`buckets`): expired, revoked and empty ones only when `show_all`."""
    await org_exists(db, org_id)
    left = await engine.balances(org_id, now_ms)
    rows = await db.fetch(SELECT_GRANTS, org_id)
    now = from_ms(now_ms)
    out: list[api.BucketBalance] = []
    for r in rows:
        remaining = left.get(r["bucket_id"], 0)
        hidden = r["expires_at"] <= now or r["revoked_at"] is not None or remaining <= 0
        if hidden and not show_all:
            continue
        out.append(
            api.BucketBalance(
                bucket_id=r["bucket_id"],
                kind=r["kind"],
                member_id=r["member_id"],
                valid_from=r["valid_from"],
                expires_at=r["expires_at"],
                granted=format_credits(r["amount"]),
                left=format_credits(remaining),
                revoked_at=r["revoked_at"],
            )
        )
    return api.Balances(
        balances={k: format_credits(v) for k, v in sorted(left.items())}, buckets=out
    )


async def seat_credits(
    db: asyncpg.Pool, engine: Engine, org_id: str, seats: api.SeatList, now_ms: int
) -> api.SeatList:
    """`seats` with each seat's bucket id, credits granted and credits left."""
    start_ms = to_ms(seats.period_start)
    ids = {s.member_id: seat_bucket_id(s.member_id, start_ms) for s in seats.seats}
    granted = {
        r["bucket_id"]: r["amount"]
        for r in await db.fetch(SELECT_SEAT_GRANTS, org_id, list(ids.values()))
    }
    left = await engine.balances(org_id, now_ms) if granted else {}
    out = []
    for seat in seats.seats:
        bucket = ids[seat.member_id]
        amount = granted.get(bucket)
        extra: dict[str, Any] = {}
        if amount is not None:
            extra = {
                "bucket_id": bucket,
                "credits": format_credits(amount),
                "left": format_credits(left.get(bucket, 0)),
            }
        out.append(seat.model_copy(update=extra))
    return seats.model_copy(update={"seats": out})


def event_key_of(query: dict[str, str]) -> str:
    """The settlement key named by `?key=` or by `?source=&id=`."""
    key = query.get("key")
    source, ident = query.get("source"), query.get("id")
    if key is not None and (source is not None or ident is not None):
        raise InvalidInput("give key, or source and id, not both", code="invalid_query")
    if key is None:
        if not source or not ident:
            raise InvalidInput("give key, or source and id", code="invalid_query")
        key = f"{source} {ident}"
    if len(key) > 600 or " " not in key:
        raise InvalidInput("key is `<source> <id>`, at most 600 characters", code="invalid_query")
    return key


def _lines(items: Any) -> list[api.SettlementLineOut]:
    lines = [
        api.SettlementLineOut(
            bucket_id=i["bucket_id"], kind=i["kind"], amount=format_credits(int(i["amount"]))
        )
        for i in items
    ]
    return sorted(lines, key=lambda ln: (_KIND_ORDER.get(ln.kind, 9), ln.bucket_id))


async def settlement(db: asyncpg.Pool, org_id: str, key: str) -> api.SettlementOut:
    """What the event `key` drew; 404 `settlement_not_found` until its batch is written."""
    await org_exists(db, org_id)
    row = await db.fetchrow(SELECT_SETTLEMENT, org_id, key)
    if row is None:
        raise NotFound("no settlement with this key (yet)", code="settlement_not_found")
    lines = await db.fetch(SELECT_SETTLEMENT_LINES, org_id, key)
    void = await db.fetchrow(SELECT_VOID, org_id, key)
    return settlement_out(row, lines, void)


def settlement_out(
    row: asyncpg.Record, lines: Any, void: asyncpg.Record | None
) -> api.SettlementOut:
    """A settlement row (with `billing_group_name`), its lines and its void as the API shows
    them."""
    void_out = None
    if void is not None:
        returned = void["returned"]
        items = orjson.loads(returned) if isinstance(returned, str | bytes) else returned
        void_out = api.SettlementVoidOut(voided_at=void["requested_at"], returned=_lines(items))
    key = row["key"]
    source, ident = split_event_key(key)
    unassigned = row["billing_group"] == UNASSIGNED
    return api.SettlementOut(
        key=key,
        source=source,
        id=ident,
        member_id=row["member_id"],
        billing_group_id=None if unassigned else row["billing_group"],
        billing_group_name=UNASSIGNED_NAME if unassigned else row["billing_group_name"],
        credits=format_credits(row["credits"]),
        buckets=_lines(lines),
        unfunded=format_credits(row["unfunded"]),
        member_limited=row["member_limited"],
        group_limited=row["group_limited"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        event_time=row["event_time"],
        late=row["late"],
        reservation_id=row["reservation_id"],
        settled_at=row["settled_at"],
        void=void_out,
        rating=_json(row["rating"]),
    )


def _json(value: Any) -> Any:
    """A jsonb column as asyncpg gives it (text, unless a codec decoded it)."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def dead_letters(
    db: asyncpg.Pool,
    org_id: str | None,
    *,
    reason: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> api.DeadLetterList:
    """Dead letters newest first (of one organization, or all when `org_id` is None)."""
    if org_id is not None:
        await org_exists(db, org_id)
    rows = await db.fetch(SELECT_DEAD_LETTERS, org_id, reason, _cursor(after), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return api.DeadLetterList(
        dead_letters=[
            api.DeadLetterOut(**{name: row[name] for name in api.DeadLetterOut.model_fields})
            for row in rows
        ],
        next_after=str(rows[-1]["id"]) if more else None,
    )


def redeemed_at_ms(value: dt.datetime, now_ms: int) -> int:
    """The instant of a back-dated redemption, checked against the window; 422
    `redeemed_at_out_of_range` outside it."""
    at = to_ms(value)
    window_ms = api.REDEEMED_AT_WINDOW_DAYS * 86_400_000
    if at > now_ms:
        raise InvalidInput("redeemed_at is in the future", code="redeemed_at_out_of_range")
    if at < now_ms - window_ms:
        raise InvalidInput(
            f"redeemed_at is more than {api.REDEEMED_AT_WINDOW_DAYS} days ago",
            code="redeemed_at_out_of_range",
        )
    return at


SELECT_KNOWN_MEMBERS = """
SELECT o.org_id, m.member_id
FROM organizations o
LEFT JOIN members m ON m.org_id = o.org_id AND m.member_id = any($2::text[])
    AND m.status = 'active'
WHERE o.org_id = any($1::text[])
"""


async def unknown_members(
    db: asyncpg.Pool, pairs: list[tuple[int, str, str]]
) -> list[dict[str, Any]]:
    """Of `(index, org, member)`, those whose organization or active member does not exist, as
    error details (`index`, `org_id`, `member_id`, `type`: `unknown_org` or `unknown_member`)."""
    if not pairs:
        return []
    orgs = sorted({org for _, org, _ in pairs})
    members = sorted({member for _, _, member in pairs})
    known_orgs: set[str] = set()
    known: set[tuple[str, str]] = set()
    for row in await db.fetch(SELECT_KNOWN_MEMBERS, orgs, members):
        known_orgs.add(row["org_id"])
        if row["member_id"] is not None:
            known.add((row["org_id"], row["member_id"]))
    out = []
    for index, org, member in pairs:
        if org not in known_orgs:
            kind = "unknown_org"
        elif (org, member) not in known:
            kind = "unknown_member"
        else:
            continue
        out.append({"index": index, "org_id": org, "member_id": member, "type": kind})
    return out
