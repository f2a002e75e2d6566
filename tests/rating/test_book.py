"""Rate card versions in PostgreSQL: immutable, loaded once and reloaded on a new version."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from meter.errors import InvalidInput, NotFound
from meter.rating.book import CardCache, create_card, ensure_first_card, get_card, list_cards

BODY = {"unknown_model": "error", "models": {"m*": {"requests": {"micros_per_unit": 5}}}}


@pytest_asyncio.fixture(loop_scope="session")
async def pool(migrated_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    await p.execute("INSERT INTO plans (plan_id, name, period_kind) VALUES ('p', 'p', 'monthly')")
    await p.execute(
        "INSERT INTO organizations (org_id, name, plan_id, billing_anchor)"
        " VALUES ('o', 'o', 'p', now())"
    )
    try:
        yield p
    finally:
        await p.close()


async def test_versions_are_immutable(pool: asyncpg.Pool) -> None:
    stored = await create_card(pool, plan_id="p", org_id=None, effective_from_ms=0, body=BODY)
    with pytest.raises(asyncpg.RestrictViolationError):
        await pool.execute("UPDATE rate_cards SET note = 'x'")
    with pytest.raises(asyncpg.RestrictViolationError):
        await pool.execute("DELETE FROM rate_cards")
    assert (await get_card(pool, stored.card.version)).card == stored.card


async def test_create_refuses_bad_cards_and_unknown_scopes(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidInput):
        await create_card(pool, plan_id="p", org_id=None, effective_from_ms=0, body={"models": 1})
    with pytest.raises(NotFound):
        await create_card(pool, plan_id="q", org_id=None, effective_from_ms=0, body=BODY)
    with pytest.raises(NotFound):
        await create_card(pool, plan_id="p", org_id="x", effective_from_ms=0, body=BODY)
    assert await list_cards(pool, "p") == []


async def test_first_card_once(pool: asyncpg.Pool) -> None:
    await ensure_first_card(pool, "p", BODY, "first")
    await ensure_first_card(pool, "p", {"models": {}}, "second")
    (only,) = await list_cards(pool, "p")
    assert only.card.note == "first" and only.card.effective_from_ms == 0


async def test_cache_reloads_on_a_new_version(pool: asyncpg.Pool) -> None:
    cache = CardCache(check_interval_s=0.0)
    assert (await cache.refresh(pool)).card_for("p", "o", 10) is None
    v1 = await create_card(pool, plan_id="p", org_id=None, effective_from_ms=0, body=BODY)
    book = await cache.refresh(pool)
    assert book.card_for("p", "o", 10) == v1.card
    assert await cache.refresh(pool) is book  # nothing new: the same book
    v2 = await create_card(pool, plan_id="p", org_id="o", effective_from_ms=5, body=BODY)
    assert (await cache.refresh(pool)).card_for("p", "o", 10) == v2.card
    assert (await cache.card_for_org(pool, "o", 4)) == v1.card
    with pytest.raises(NotFound):
        await cache.card_for_org(pool, "nobody", 4)
