"""Reference 000 (Teams / Enterprise plans): 3,000 seat credits a month, prorated mid-period seats,
Shared Add-on Credits valid 3 months, consumption order seat -> personal -> shared, per-member
shared-usage limits, seats billed for the whole cycle; Enterprise seats without credits, member
limit required, billing groups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from api.plans_support import (
    DAY,
    check,
    ms_of,
    post,
    real_now,
    settling,
    use_clock,
)
from api.support import FAR, client_for, make_billing_key, unique
from meter.api import App
from meter.engine.periods import add_months


async def test_teams_plan(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    presets = (await admin.get("/v1/plan-presets")).json()["presets"]
    teams = next(p for p in presets if p["plan_id"] == "teams")
    assert teams["seat_credits"] == "3000" and teams["limit_policy"] == "shared"

    clock = use_clock(app, real_now() - 20 * DAY)
    org = unique("teams")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Qoder", "plan_id": "teams"})
    billing = await make_billing_key(admin)
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "ann"})
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()
    start, end = ms_of(seats["period_start"]), ms_of(seats["period_end"])
    assert end == add_months(start, 1)

    # A member joining at the midpoint of the cycle gets 1,500 of the 3,000 credits.
    clock.ms = (start + end) // 2
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "bob"})
    assert (await check(admin, org, "bob", "1500"))["allowed"] is True
    assert (await check(admin, org, "bob", "1500.000001"))["reason"] == "insufficient_credits"
    assert (await check(admin, org, "ann", "3000"))["allowed"] is True

    # Shared Add-on Credits: 2,000 credits from a redemption code, valid 3 months, single use.
    code = {"code": unique("SHARED"), "kind": "shared_credits", "credits": "2000"}
    await post(admin, "/v1/codes", code)
    async with client_for(app, billing) as client:
        r = await post(client, f"/v1/orgs/{org}/redemptions", {"code": code["code"]})
        assert r["grant"]["kind"] == "shared" and r["grant"]["amount"] == "2000"
        assert ms_of(r["grant"]["expires_at"]) == add_months(clock.ms, 3)
        again = await client.post(f"/v1/orgs/{org}/redemptions", json={"code": code["code"]})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "code_already_redeemed"
        r = await client.post(f"/v1/orgs/{org}/redemptions", json={"code": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_code"
    await post(admin, f"/v1/orgs/{org}/grants", {
        "bucket_id": "ann-addon", "kind": "personal", "member_id": "ann", "amount": "100",
        "expires_at": FAR,
    })  # fmt: skip

    # Consumption order: the seat quota, then personal add-ons, then the shared pool.
    async with settling(app, admin, new_topic) as s:
        first = await s.settle(org, "ann", "3050")
        second = await s.settle(org, "ann", "100")
        seat_id = f"seat:ann:{start}"
        assert await s.lines(first["key"]) == [
            ("seat", seat_id, 3000),
            ("personal", "ann-addon", 50),
        ]
        pool = f"redeem:{r_code_id(code['code'])}"
        assert await s.lines(second["key"]) == [("personal", "ann-addon", 50), ("shared", pool, 50)]
        # A per-member limit on shared credits: bob may use 10 of the pool.
        r = await admin.patch(f"/v1/orgs/{org}/members/bob", json={"member_limit": "10"})
        assert r.status_code == 200
        assert (await check(admin, org, "bob", "1510"))["allowed"] is True
        assert (await check(admin, org, "bob", "1511"))["reason"] == "member_limit_reached"
        over = await s.settle(org, "bob", "1520")
        assert over["unfunded"] == 10_000_000 and over["member_limited"] is True

    # A seat occupied in the cycle stays billed for it when the member leaves.
    assert (await admin.delete(f"/v1/orgs/{org}/members/bob")).status_code == 204
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()["seats"]
    assert [(x["member_id"], x["fraction"]) for x in seats] == [("ann", "1"), ("bob", "0.5")]
    r = await admin.post(
        f"/v1/orgs/{org}/billing-groups", json={"billing_group_id": "x", "name": "x"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "billing_groups_not_allowed"


def r_code_id(code: str) -> str:
    from meter.plans.redemption import code_id

    return code_id(code)


async def test_enterprise_plan(app: App, admin: httpx.AsyncClient) -> None:
    use_clock(app, real_now())
    org = unique("ent")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Corp", "plan_id": "enterprise"})
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "eve"})
    # Seats carry no credits; the shared pool pays everything.
    assert (await admin.get(f"/v1/orgs/{org}/grants")).json()["grants"] == []
    await post(
        admin, f"/v1/orgs/{org}/grants", {"kind": "shared", "amount": "2000", "expires_at": FAR}
    )
    # A member without a limit of their own may not use credits.
    assert (await check(admin, org, "eve", "1"))["reason"] == "member_limit_reached"
    await admin.patch(f"/v1/orgs/{org}/members/eve", json={"member_limit": "500"})
    result = await check(admin, org, "eve", "500")
    assert result["allowed"] is True and result["member_remaining"] == "500"
    await post(admin, f"/v1/orgs/{org}/billing-groups",
               {"billing_group_id": "eng", "name": "Eng", "period_limit": "100"})  # fmt: skip
    await admin.patch(f"/v1/orgs/{org}/members/eve", json={"billing_group_id": "eng"})
    assert (await check(admin, org, "eve", "101"))["reason"] == "group_limit_reached"
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()["seats"]
    assert [(x["member_id"], x["billing"]) for x in seats] == [("eve", "external")]
