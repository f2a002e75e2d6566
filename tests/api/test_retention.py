"""Retention: the period scheduler's tick deletes dead letters, webhook messages (with their
deliveries) and attempts older than 30 days, a bounded batch at a time, and keeps newer ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import httpx

from api.plans_support import scheduler_for
from api.support import make_org
from meter.admin import retention
from meter.api import App

INSERT_LETTER = """
INSERT INTO dead_letters (org_id, reason, detail, event, topic, partition, "offset", created_at)
VALUES ($1, 'unknown_member', '', '{}', 'retention.test', 0, $2, now() - make_interval(days => $3))
RETURNING id
"""
INSERT_MESSAGE = """
INSERT INTO webhook_messages (message_id, org_id, event_type, source, payload, created_at)
VALUES ($1, $2, 'dead_letter', $1, '{}', now() - make_interval(days => $3))
"""
INSERT_DELIVERY = """
INSERT INTO webhook_deliveries (message_id, endpoint_id, state) VALUES ($1, $2, 'succeeded')
"""
INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (message_id, endpoint_id, attempt, status_code, duration_ms, at)
VALUES ($1, $2, 1, 204, 3, now() - make_interval(days => $3))
RETURNING attempt_id
"""


async def test_tick_deletes_what_is_older_than_30_days_in_bounded_batches(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    org = await make_org(admin)
    r = await admin.post(
        f"/v1/orgs/{org}/webhooks",
        json={"url": "http://127.0.0.1:9/", "event_types": ["charge.due"]},
    )
    assert r.status_code == 201, r.text
    endpoint = r.json()["endpoint_id"]
    pool = app.pool
    ages = {"old": 31, "new": 29}
    letters: dict[str, list[int]] = {"old": [], "new": []}
    messages: dict[str, list[str]] = {"old": [], "new": []}
    attempts: dict[str, list[int]] = {"old": [], "new": []}
    offset = 0
    for age, days in ages.items():
        for i in range(3):
            offset += 1
            letters[age].append(await pool.fetchval(INSERT_LETTER, org, offset, days))
            message_id = f"msg_{org}_{age}_{i}"
            await pool.execute(INSERT_MESSAGE, message_id, org, days)
            await pool.execute(INSERT_DELIVERY, message_id, endpoint)
            attempts[age].append(await pool.fetchval(INSERT_ATTEMPT, message_id, endpoint, days))
            messages[age].append(message_id)

    async def ids(sql: str, arg: str) -> set[object]:
        return {r[0] for r in await pool.fetch(sql, arg)}

    async def left() -> tuple[set[object], ...]:
        return (
            await ids("SELECT id FROM dead_letters WHERE org_id = $1", org),
            await ids("SELECT message_id FROM webhook_messages WHERE org_id = $1", org),
            await ids("SELECT message_id FROM webhook_deliveries WHERE endpoint_id = $1", endpoint),
            await ids("SELECT attempt_id FROM webhook_attempts WHERE endpoint_id = $1", endpoint),
        )

    # A bounded call deletes the oldest rows first, at most `batch` of each table.
    purged = await retention.purge(pool, batch=2)
    assert (purged.dead_letters, purged.webhook_messages, purged.webhook_attempts) == (2, 2, 2)
    dead, msgs, deliveries, tries = await left()
    assert len(dead) == len(msgs) == len(deliveries) == len(tries) == 4
    assert set(letters["new"]) <= dead and set(messages["new"]) <= msgs == deliveries

    # The scheduler's tick deletes the rest of what expired, and nothing newer.
    scheduler = await scheduler_for(app, new_topic)
    report = await scheduler.tick()
    assert report.purged is not None and report.purged.total >= 3
    dead, msgs, deliveries, tries = await left()
    assert dead == set(letters["new"])
    assert msgs == deliveries == set(messages["new"])
    assert tries == set(attempts["new"])


async def test_tick_makes_the_partitions_ahead(
    app: App, new_topic: Callable[..., Awaitable[str]]
) -> None:
    # The partitions of two months ahead, empty, are dropped; the next tick makes them again.
    now = app.admin.clock()
    month = dt.datetime.fromtimestamp(now / 1000, dt.UTC).replace(day=1)
    ahead = (month + dt.timedelta(days=70)).strftime("%Y_%m")
    names = [f"settlements_{ahead}"]
    async with app.pool.acquire() as conn:
        for name in names:
            assert await conn.fetchval("SELECT count(*) FROM " + name) == 0
            await conn.execute("DROP TABLE " + name)
            assert await conn.fetchval("SELECT to_regclass($1)", name) is None
    scheduler = await scheduler_for(app, new_topic)
    await scheduler.tick()
    async with app.pool.acquire() as conn:
        for name in names:
            assert await conn.fetchval("SELECT to_regclass($1)::text", name) == name
    # Within the hour, a tick does not look again.
    async with app.pool.acquire() as conn:
        for name in names:
            await conn.execute("DROP TABLE " + name)
    await scheduler.tick()
    async with app.pool.acquire() as conn:
        assert await conn.fetchval("SELECT to_regclass($1)", names[0]) is None
        await conn.execute("SELECT meter_ensure_partitions(now(), 3)")
