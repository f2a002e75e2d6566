"""Reference 002 (Team Plan with included requests): 300 requests per member per rolling 30-day
cycle, then on-demand usage up to a cap the admin sets per member, $0.15 a request, a charge due
at $2,000 of on-demand usage or at the cycle end, published on the billing topic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from api.plans_support import (
    DAY,
    check,
    ms_of,
    post,
    read_topic,
    real_now,
    scheduler_for,
    settling,
    use_clock,
)
from api.support import unique
from meter.api import App


async def test_requests_plan(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    clock = use_clock(app, real_now() - 10 * DAY)
    org = unique("req")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Banana", "plan_id": "requests"})
    clock.ms += 5 * DAY
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "dev"})
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()
    start, end = ms_of(seats["period_start"]), ms_of(seats["period_end"])
    assert end - start == 30 * DAY  # a rolling 30-day cycle from activation

    # 300 included requests, not prorated; no on-demand use until the admin sets a cap.
    clock.ms = real_now()
    assert (await check(admin, org, "dev", "300"))["allowed"] is True
    assert (await check(admin, org, "dev", "301"))["reason"] == "insufficient_credits"
    r = await admin.put(f"/v1/orgs/{org}/members/dev/on-demand-cap", json={"cap": "20000"})
    assert r.status_code == 200, r.text
    assert r.json()["granted"]["kind"] == "on_demand" and r.json()["granted"]["amount"] == "20000"
    assert (await check(admin, org, "dev", "20300"))["allowed"] is True
    # Past the on-demand cap the member is denied.
    assert (await check(admin, org, "dev", "20301"))["allowed"] is False

    scheduler = await scheduler_for(app, new_topic)
    async with settling(app, admin, new_topic) as s:
        # 14,000 on-demand requests cost $2,100: over the $2,000 threshold, a charge is due.
        first = await s.settle(org, "dev", "14300")
        assert first["unfunded"] == 0
        report = await scheduler.tick()
        assert [(c.reason, c.credits, c.amount_micros) for c in report.charges] == [
            ("threshold", 14_000_000_000, 2_100_000_000)
        ]
        assert report.published == 1
        second = await s.settle(org, "dev", "100")
        assert (await scheduler.tick()).charges == []  # $15 more: under the threshold
        # The rest of the cap is usable; beyond it, usage is not funded.
        third = await s.settle(org, "dev", "6000")
        assert third["unfunded"] == 100_000_000
    assert second["unfunded"] == 0

    # The cycle ends: what is left uncharged is due, and a new cycle starts afresh.
    clock.ms = end
    report = await scheduler.tick()
    assert report.started == [(org, end)]
    assert [(c.reason, c.credits, c.amount_micros) for c in report.charges] == [
        ("period_end", 6_000_000_000, 900_000_000)
    ]
    assert (await check(admin, org, "dev", "20300"))["allowed"] is True
    assert (await check(admin, org, "dev", "20301"))["allowed"] is False
    assert (await scheduler.tick()).charges == []

    events = await read_topic(app.services.kafka_bootstrap, scheduler.topic, 2)
    assert [e["_key"] for e in events] == [org, org]
    assert [e["type"] for e in events] == ["meter.charge_due.v1"] * 2
    assert [(e["data"]["reason"], e["data"]["amount_micros"]) for e in events] == [
        ("threshold", 2_100_000_000),
        ("period_end", 900_000_000),
    ]
    charges = (await admin.get(f"/v1/orgs/{org}/charges")).json()["charges"]
    assert [(c["reason"], c["credits"], c["published_at"] is not None) for c in charges] == [
        ("threshold", "14000", True),
        ("period_end", "6000", True),
    ]
