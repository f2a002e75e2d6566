"""Reference 001 (subscription packages with resource points): monthly points in the organization's
pool, purchasable packs, a lapsed package (`expired`) makes its credits unusable, arrears
(`suspended`) block everything; points left at a period's end expire and are recorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from api.plans_support import DAY, check, ms_of, post, real_now, scheduler_for, settling, use_clock
from api.support import unique
from meter.api import App
from meter.engine.periods import add_months


async def test_package_plan(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    clock = use_clock(app, real_now() - 3 * DAY)
    org = unique("pkg")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Coze", "plan_id": "package"})
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "dev"})
    start = ms_of((await admin.get(f"/v1/orgs/{org}/seats")).json()["period_start"])
    pool = f"pool:{start}"
    assert (await check(admin, org, "dev", "10000"))["allowed"] is True
    assert (await check(admin, org, "dev", "10000.5"))["reason"] == "insufficient_credits"
    # A purchased pack of 1,000 points, valid 12 months.
    pack = {"code": unique("PACK"), "kind": "shared_credits", "credits": "1000",
            "validity_months": 12}  # fmt: skip
    await post(admin, "/v1/codes", pack)
    r = await post(admin, f"/v1/orgs/{org}/redemptions", {"code": pack["code"]})
    pack_id = r["grant"]["bucket_id"]
    assert (await check(admin, org, "dev", "11000"))["allowed"] is True

    async with settling(app, admin, new_topic) as s:
        used = await s.settle(org, "dev", "500")
        assert await s.lines(used["key"]) == [("shared", pool, 500)]
        # The package lapses: checks fail, usage is recorded but funded by nothing.
        r = await admin.patch(f"/v1/orgs/{org}", json={"status": "expired"})
        assert r.status_code == 200
        assert (await check(admin, org, "dev", "1"))["reason"] == "org_inactive"
        lapsed = await s.settle(org, "dev", "5")
        assert lapsed["unfunded"] == 5_000_000 and await s.lines(lapsed["key"]) == []
    await admin.patch(f"/v1/orgs/{org}", json={"status": "active"})
    assert (await check(admin, org, "dev", "10500"))["allowed"] is True
    # In arrears nothing is usable.
    await admin.patch(f"/v1/orgs/{org}", json={"status": "suspended"})
    assert (await check(admin, org, "dev", "1"))["reason"] == "org_inactive"
    await admin.patch(f"/v1/orgs/{org}", json={"status": "active"})

    # The next period: fresh points; the 9,500 left of the last ones expire and are recorded.
    scheduler = await scheduler_for(app, new_topic)
    await scheduler.tick()
    clock.ms = add_months(start, 1)
    report = await scheduler.tick()
    assert [(e.bucket_id, e.amount) for e in report.expiries] == [(pool, 9_500_000_000)]
    balances = (await admin.get(f"/v1/orgs/{org}/balances")).json()["balances"]
    assert balances == {pool: "9500", f"pool:{clock.ms}": "10000", pack_id: "1000"}
    assert (await check(admin, org, "dev", "11000"))["allowed"] is True
    assert (await check(admin, org, "dev", "11000.000001"))["allowed"] is False
    assert (await scheduler.tick()).expiries == []
    assert (
        await app.pool.fetchval("SELECT count(*) FROM expiry_entries WHERE org_id = $1", org) == 1
    )
