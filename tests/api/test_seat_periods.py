"""No correctness waits on the scheduler: an organization whose period starts seconds after its
creation draws from the new period's seats at once, through the real consumer and the API's
checks, whether the scheduler never runs or is down across the boundary; a threshold charge is
on the billing topic seconds after the settlement that crossed it, with the scheduler's period
poll at its default."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from api.plans_support import check, iso, post, read_topic, real_now, scheduler_for, settling
from api.support import unique
from meter.admin import scheduler as period_scheduler
from meter.admin.clock import to_ms
from meter.api import App
from meter.engine.types import MICRO

BOUNDARY_IN_MS = 3_000
SEAT = 3_000 * MICRO
"""Seat credits of a period on the `teams` preset."""


async def org_near_boundary(admin: httpx.AsyncClient, members: tuple[str, ...]) -> tuple[str, int]:
    """A `teams` organization whose next period starts `BOUNDARY_IN_MS` after now (its anchor:
    the instants before it are period -1), with seated members. Returns (org, boundary ms)."""
    org = unique("edge")
    boundary = real_now() + BOUNDARY_IN_MS
    body = {"org_id": org, "name": "Edge", "plan_id": "teams", "billing_anchor": iso(boundary)}
    await post(admin, "/v1/orgs", body)
    for member in members:
        await post(admin, f"/v1/orgs/{org}/members", {"member_id": member})
    return org, boundary


async def past(instant_ms: int) -> None:
    """Wait until the real clock is past `instant_ms`."""
    await asyncio.sleep(max(0, instant_ms - real_now() + 5) / 1000)
    assert real_now() > instant_ms


async def redis_equals_postgres(app: App, org: str) -> dict[str, int]:
    """Every bucket Redis holds has what PostgreSQL says is left: granted minus settled."""
    rows = await app.pool.fetch(
        """
        SELECT g.bucket_id, g.amount - coalesce(sum(l.amount), 0) AS left
        FROM credit_grants g LEFT JOIN settlement_lines l
            ON l.org_id = g.org_id AND l.bucket_id = g.bucket_id
        WHERE g.org_id = $1 GROUP BY g.bucket_id, g.amount
        """,
        org,
    )
    stored = {r["bucket_id"]: r["left"] for r in rows}
    live = await app.pool.fetch(
        "SELECT bucket_id FROM credit_grants WHERE org_id = $1 AND expires_at > now()", org
    )
    held = await app.engine.balances(org, real_now())
    assert {r["bucket_id"] for r in live} <= set(held)
    assert held == {b: stored[b] for b in held}
    return held


async def test_org_created_seconds_before_its_boundary_without_scheduler(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    drawn, checked = (
        await org_near_boundary(admin, ("alice",)),
        await org_near_boundary(admin, ("bob",)),
    )
    (org, boundary), (checked_org, checked_boundary) = drawn, checked
    async with settling(app, admin, new_topic) as s:
        await past(max(boundary, checked_boundary))
        # No scheduler anywhere: the consumer issues the new period's seat before settling.
        row = await s.settle(org, "alice", "10")
        assert row["unfunded"] == 0
        assert to_ms(row["period_start"]) == boundary
        assert await s.lines(row["key"]) == [("seat", f"seat:alice:{boundary}", 10)]
    # A check right after the boundary sees the new seat (the API issues it on the first one).
    body = await check(admin, checked_org, "bob", "3000")
    assert body["allowed"] is True, body
    assert body["available"]["seat"] == "3000"
    assert body["period_end"] is not None
    assert (await check(admin, org, "alice", "2990"))["allowed"] is True
    assert (await check(admin, org, "alice", "2990.000001"))["allowed"] is False
    await redis_equals_postgres(app, org)
    issued = await app.pool.fetch(
        "SELECT org_id, period_start FROM seat_periods WHERE org_id = ANY($1::text[])"
        " ORDER BY org_id, period_start",
        [org, checked_org],
    )
    assert len(issued) == 4  # each organization: the period of its creation, then the next


async def test_scheduler_down_across_the_boundary(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    members = ("m1", "m2", "m3")
    org, boundary = await org_near_boundary(admin, members)
    scheduler = await scheduler_for(app, new_topic)
    before = await scheduler.tick()  # up before the boundary ...
    assert (org, boundary) not in before.started
    async with settling(app, admin, new_topic) as s:
        await past(boundary)  # ... then down across it
        rows = [await s.settle(org, m, "7") for m in members]
        assert [r["unfunded"] for r in rows] == [0, 0, 0]
        assert [(await check(admin, org, m, "2993"))["allowed"] for m in members] == [True] * 3
        after = await scheduler.tick()  # back: nothing issued twice
        assert (org, boundary) in after.started
        rows.append(await s.settle(org, "m1", "1"))
    assert rows[-1]["unfunded"] == 0
    occupancy = await app.pool.fetch(
        "SELECT member_id FROM seat_occupancy WHERE org_id = $1 AND period_start = $2"
        " ORDER BY member_id",
        org,
        rows[0]["period_start"],
    )
    assert [r["member_id"] for r in occupancy] == list(members)
    grants = await app.pool.fetch(
        "SELECT bucket_id, amount FROM credit_grants WHERE org_id = $1 AND valid_from >= $2"
        " ORDER BY bucket_id",
        org,
        rows[0]["period_start"],
    )
    assert [(g["bucket_id"], g["amount"]) for g in grants] == [
        (f"seat:{m}:{boundary}", SEAT) for m in members
    ]
    held = await redis_equals_postgres(app, org)
    assert [held[f"seat:{m}:{boundary}"] for m in members] == [
        SEAT - 8 * MICRO,
        SEAT - 7 * MICRO,
        SEAT - 7 * MICRO,
    ]


async def listening(app: App, channel: str, timeout_s: float = 20.0) -> None:
    """Wait until a session of this test's database listens on `channel`."""
    deadline = time.monotonic() + timeout_s
    while not await app.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
        f'LISTEN "{channel}"',
    ):
        assert time.monotonic() < deadline, f"nobody listens on {channel}"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Servers:
    postgres_dsn: str
    redis_url: str
    kafka_bootstrap: str


async def test_threshold_charge_published_within_seconds(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    plan = unique("ondemand")
    await post(admin, "/v1/plans", {"preset": "requests", "plan_id": plan})
    org = unique("charge")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Charged", "plan_id": plan})
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "dev"})
    r = await admin.put(f"/v1/orgs/{org}/members/dev/on-demand-cap", json={"cap": "20000"})
    assert r.status_code == 200, r.text

    topic = await new_topic(partitions=1, prefix="billing")
    settings = app.settings.model_copy(update={"billing_topic": topic})
    servers = Servers(app.services.postgres_dsn, app.services.redis_url, settings.kafka_bootstrap)
    # The scheduler as `meter scheduler` runs it: period poll at its default (60 s).
    component = asyncio.create_task(period_scheduler.run_component(settings, servers))  # type: ignore[arg-type]
    try:
        async with settling(app, admin, new_topic) as s:
            await listening(app, "meter_charges")
            # 300 included, then 14,000 on-demand requests at $0.15: $2,100, over $2,000.
            row = await s.settle(org, "dev", "14300")
            assert row["unfunded"] == 0
            # Within read_topic's deadline (20 s), well before the period poll's 60 s.
            events = await read_topic(settings.kafka_bootstrap, topic, 1)
    finally:
        component.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await component
    assert [(e["_key"], e["type"]) for e in events] == [(org, "meter.charge_due.v1")]
    assert (events[0]["data"]["reason"], events[0]["data"]["amount_micros"]) == (
        "threshold",
        2_100_000_000,
    )
