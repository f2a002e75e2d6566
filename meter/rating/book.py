"""The rate cards in force, and their PostgreSQL side (`rate_cards`, migration 0020).

`CardBook` is pure: every version, indexed by scope, answering which card rates an event of an
organization on a plan at an instant. `CardCache` keeps one per process and reloads it when the
newest version in PostgreSQL changed (one small query, run at most every `check_interval_s`, or
per consumer batch that holds usage events); the organizations' plans are read with it.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.errors import InvalidInput, NotFound
from meter.rating.card import RateCard, card_from_json
from meter.rating.rate import Unrated

Scope = tuple[str, str | None]
"""(plan, organization or None for the plan's own card)."""


class CardBook:
    """Every card version, by scope and effective instant."""

    def __init__(self, cards: Iterable[RateCard], version: int = 0) -> None:
        by_scope: dict[Scope, list[RateCard]] = {}
        for card in cards:
            by_scope.setdefault((card.plan_id, card.org_id), []).append(card)
        for scoped in by_scope.values():
            scoped.sort(key=lambda c: (c.effective_from_ms, c.version))
        self._by_scope = by_scope
        self._starts = {s: [c.effective_from_ms for c in cs] for s, cs in by_scope.items()}
        self.version = version
        """The newest version this book holds (0: none)."""
        self.size = sum(len(cs) for cs in by_scope.values())

    def card_for(self, plan_id: str, org_id: str, time_ms: int) -> RateCard | None:
        """The card rating an event at `time_ms`: of the organization's override versions on
        this plan, else of the plan's own versions, the one with the latest `effective_from` at
        or before `time_ms` (the higher version when two start at the same instant)."""
        for scope in ((plan_id, org_id), (plan_id, None)):
            starts = self._starts.get(scope)
            if starts is None:
                continue
            i = bisect.bisect_right(starts, time_ms)
            if i:
                return self._by_scope[scope][i - 1]
        return None


# -- SQL -----------------------------------------------------------------------------------------

_COLUMNS = (
    "version, plan_id, org_id, (extract(epoch FROM effective_from) * 1000)::bigint, body, note"
)
INSERT_CARD = f"""
INSERT INTO rate_cards (plan_id, org_id, effective_from, body, note)
VALUES ($1, $2, to_timestamp($3::bigint / 1000.0), $4::jsonb, $5)
RETURNING {_COLUMNS}, created_at
"""
SELECT_CARDS = f"SELECT {_COLUMNS} FROM rate_cards ORDER BY version"
SELECT_PLAN_CARDS = f"""
SELECT {_COLUMNS}, created_at FROM rate_cards WHERE plan_id = $1 ORDER BY version
"""
SELECT_CARD = f"SELECT {_COLUMNS}, created_at FROM rate_cards WHERE version = $1"
NEWEST_VERSION = "SELECT count(*), coalesce(max(version), 0) FROM rate_cards"
ORG_PLANS = "SELECT org_id, plan_id FROM organizations WHERE org_id = ANY($1::text[])"
PLAN_EXISTS = "SELECT 1 FROM plans WHERE plan_id = $1"
ORG_EXISTS = "SELECT 1 FROM organizations WHERE org_id = $1"


def _card(row: Sequence[Any]) -> RateCard:
    body = row[4]
    return card_from_json(
        orjson.loads(body) if isinstance(body, str) else body,
        version=int(row[0]),
        plan_id=row[1],
        org_id=row[2],
        effective_from_ms=int(row[3]),
        note=row[5],
    )


@dataclass(frozen=True, slots=True)
class StoredCard:
    card: RateCard
    created_at_ms: int


def _stored(row: Sequence[Any]) -> StoredCard:
    return StoredCard(_card(row), int(row[6].timestamp() * 1000))


async def create_card(
    pool: asyncpg.Pool,
    *,
    plan_id: str,
    org_id: str | None,
    effective_from_ms: int,
    body: Mapping[str, Any],
    note: str = "",
) -> StoredCard:
    """Validate and store a new version; `NotFound` for an unknown plan or organization."""
    card_from_json(body, version=0, plan_id=plan_id, org_id=org_id, effective_from_ms=0)
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(PLAN_EXISTS, plan_id) is None:
            raise NotFound(f"no plan {plan_id!r}", code="unknown_plan")
        if org_id is not None and await conn.fetchval(ORG_EXISTS, org_id) is None:
            raise NotFound(f"no organization {org_id!r}", code="unknown_org")
        row = await conn.fetchrow(
            INSERT_CARD, plan_id, org_id, effective_from_ms, orjson.dumps(body).decode(), note
        )
    return _stored(row)


INSERT_FIRST_CARD = """
INSERT INTO rate_cards (plan_id, org_id, effective_from, body, note)
SELECT $1, NULL, to_timestamp(0), $2::jsonb, $3
WHERE NOT EXISTS (SELECT 1 FROM rate_cards WHERE plan_id = $1 AND org_id IS NULL)
"""


async def ensure_first_card(
    conn: asyncpg.Connection | asyncpg.Pool, plan_id: str, body: Mapping[str, Any], note: str
) -> None:
    """Give `plan_id` the card `body`, effective from 1970, unless it has a card already (a
    preset's first card, `meter.plans.presets.preset_rate_cards`)."""
    card_from_json(body, version=0, plan_id=plan_id, org_id=None, effective_from_ms=0)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            await ensure_first_card(c, plan_id, body, note)
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rate_cards:' || $1))", plan_id)
        await conn.execute(INSERT_FIRST_CARD, plan_id, orjson.dumps(body).decode(), note)


async def list_cards(pool: asyncpg.Pool, plan_id: str) -> list[StoredCard]:
    if await pool.fetchval(PLAN_EXISTS, plan_id) is None:
        raise NotFound(f"no plan {plan_id!r}", code="unknown_plan")
    return [_stored(r) for r in await pool.fetch(SELECT_PLAN_CARDS, plan_id)]


async def get_card(pool: asyncpg.Pool, version: int) -> StoredCard:
    row = await pool.fetchrow(SELECT_CARD, version) if 0 < version < 2**63 else None
    if row is None:
        raise NotFound(f"no rate card version {version}", code="unknown_rate_card")
    return _stored(row)


async def load_book(conn: asyncpg.Connection | asyncpg.Pool) -> CardBook:
    rows = await conn.fetch(SELECT_CARDS)
    cards = [_card(r) for r in rows]
    return CardBook(cards, max((c.version for c in cards), default=0))


class CardCache:
    """A process's `CardBook`, reloaded when PostgreSQL holds a newer version."""

    def __init__(self, check_interval_s: float = 1.0) -> None:
        self.book = CardBook(())
        self.check_interval_s = check_interval_s
        self._checked_at = float("-inf")
        self._plans: dict[str, tuple[str, float]] = {}

    async def refresh(
        self, conn: asyncpg.Connection | asyncpg.Pool, *, force: bool = False
    ) -> CardBook:
        """The book, reloaded first when the newest version changed (checked at most every
        `check_interval_s` unless `force`)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_interval_s:
            return self.book
        self._checked_at = now
        # Versions may commit out of order: the count catches one below the newest.
        count, newest = await conn.fetchrow(NEWEST_VERSION)
        if (count, newest) != (self.book.size, self.book.version):
            self.book = await load_book(conn)
        return self.book

    async def card_for_org(self, pool: asyncpg.Pool, org_id: str, time_ms: int) -> RateCard:
        """The card rating `org_id`'s usage at `time_ms` (the organization's plan is also
        remembered for `check_interval_s`); `NotFound` (`unknown_org`), `Unrated`."""
        book = await self.refresh(pool)
        now = time.monotonic()
        known = self._plans.get(org_id)
        if known is None or now - known[1] >= self.check_interval_s:
            plan_id = (await org_plans(pool, [org_id])).get(org_id)
            if plan_id is None:
                raise NotFound(f"organization {org_id!r} is not known", code="unknown_org")
            if len(self._plans) >= 65536:
                self._plans.clear()
            known = self._plans[org_id] = (plan_id, now)
        card = book.card_for(known[0], org_id, time_ms)
        if card is None:
            raise Unrated(f"plan {known[0]!r} has no rate card in force")
        return card


async def org_plans(
    conn: asyncpg.Connection | asyncpg.Pool, org_ids: Sequence[str]
) -> dict[str, str]:
    """Plan of each known organization among `org_ids`."""
    return {r[0]: r[1] for r in await conn.fetch(ORG_PLANS, list(org_ids))}


def check_effective_from(value: int) -> int:
    if not 0 <= value < 253402300800000:  # year 10000
        raise InvalidInput("effective_from is out of range", code="invalid_rate_card")
    return value
