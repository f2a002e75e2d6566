"""Reference 004 (redemption codes): seat-month balance, monthly codes valid 3 months, annual codes
returned in 12 monthly installments clamped to month ends, single use, seats paid from the balance
at each period start (prorated when joining), `no_seat` when a seat cannot be paid; a year of
periods run by the scheduler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx

from api.plans_support import DAY, check, ms_of, post, real_now, scheduler_for, settling, use_clock
from api.support import client_for, make_billing_key, make_key, unique
from meter.admin.clock import to_ms
from meter.api import App
from meter.engine.periods import add_months

MAR_31 = to_ms(datetime(2025, 3, 31, 9, 30, tzinfo=UTC))


async def test_annual_code_and_a_year_of_seats(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    clock = use_clock(app, MAR_31)
    org = unique("codes")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Teams", "plan_id": "teams"})
    r = await admin.put(f"/v1/orgs/{org}/seat-billing", json={"seat_billing": "balance"})
    assert r.status_code == 200, r.text
    org_admin = await make_key(admin, org, "org_admin")
    billing = await make_billing_key(admin)
    annual = {"code": unique("ANNUAL"), "kind": "seat_months_annual", "seat_months": 24}
    assert (await admin.post("/v1/codes", json={**annual, "seat_months": 18})).status_code == 422
    await post(admin, "/v1/codes", annual)
    async with client_for(app, org_admin) as client:
        # Only platform keys register and redeem codes: a customer cannot fund itself.
        assert (await client.post("/v1/codes", json=annual)).status_code == 403
        r = await client.post(f"/v1/orgs/{org}/redemptions", json={"code": annual["code"]})
        assert r.status_code == 403, r.text
    async with client_for(app, billing) as client:
        redemption = await post(client, f"/v1/orgs/{org}/redemptions", {"code": annual["code"]})
        again = await client.post(f"/v1/orgs/{org}/redemptions", json={"code": annual["code"]})
    assert again.status_code == 409 and again.json()["error"]["code"] == "code_already_redeemed"

    # Bought on Mar 31: the next installment returns on Apr 30, then May 31, ..., Feb 28.
    lots = redemption["lots"]
    returns = [lot["available_from"][:10] for lot in lots]
    assert returns[:4] == ["2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30"]
    assert returns[10:] == ["2026-01-31", "2026-02-28"]
    assert {lot["amount"] for lot in lots} == {"2"}
    assert [ms_of(lot["expires_at"]) for lot in lots] == [
        add_months(ms_of(lot["available_from"]), 3) for lot in lots
    ]
    balance = (await admin.get(f"/v1/orgs/{org}/seat-balance")).json()
    assert (balance["available"], balance["frozen"]) == ("2", "22")

    # Members at the period start each consume one seat-month and get the full 3,000 credits.
    for member in ("ann", "bob"):
        await post(admin, f"/v1/orgs/{org}/members", {"member_id": member})
    assert (await admin.get(f"/v1/orgs/{org}/seat-balance")).json()["available"] == "0"
    assert (await check(admin, org, "ann", "3000"))["allowed"] is True

    # A member added at the midpoint finds no balance: no seat, checks denied `no_seat`.
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()
    start, end = ms_of(seats["period_start"]), ms_of(seats["period_end"])
    clock.ms = (start + end) // 2
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "cat"})
    assert (await check(admin, org, "cat", "1"))["reason"] == "no_seat"
    # A monthly code redeemed now pays her half seat-month: 1,500 credits, 0.5 left.
    monthly = {"code": unique("MONTHLY"), "kind": "seat_months_monthly", "seat_months": 1}
    await post(admin, "/v1/codes", monthly)
    r = await post(admin, f"/v1/orgs/{org}/redemptions", {"code": monthly["code"]})
    assert ms_of(r["lots"][0]["expires_at"]) == add_months(clock.ms, 3)
    assert (await check(admin, org, "cat", "1500"))["allowed"] is True
    assert (await check(admin, org, "cat", "1500.000001"))["allowed"] is False
    seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()["seats"]
    assert {x["member_id"]: x["fraction"] for x in seats} == {"ann": "1", "bob": "1", "cat": "0.5"}
    assert (await admin.get(f"/v1/orgs/{org}/seat-balance")).json()["available"] == "0.5"

    # A year of periods. Each start returns 2 seat-months: the two oldest seats are paid (the
    # 0.5 carried over goes first, being the soonest to expire), cat's is not. After the last
    # installment nothing pays a whole seat.
    scheduler = await scheduler_for(app, new_topic)
    for k in range(1, 13):
        clock.ms = add_months(MAR_31, k)
        report = await scheduler.tick()
        assert report.started == [(org, clock.ms)]
        seats = (await admin.get(f"/v1/orgs/{org}/seats")).json()
        assert ms_of(seats["period_start"]) == clock.ms
        paid = sorted(x["member_id"] for x in seats["seats"])
        reasons = [(await check(admin, org, m, "3000"))["reason"] for m in ("ann", "bob", "cat")]
        if k < 12:
            assert paid == ["ann", "bob"], (k, paid)
            assert reasons == [None, None, "no_seat"], k
        else:
            assert paid == [] and reasons == ["no_seat"] * 3
    balance = (await admin.get(f"/v1/orgs/{org}/seat-balance")).json()
    assert balance["frozen"] == "0" and balance["available"] == "0.5"
    # Unused seat credits of every ended period were recorded as expired.
    expired = await app.pool.fetch(
        "SELECT bucket_id, amount FROM expiry_entries WHERE org_id = $1 AND kind = 'seat'", org
    )
    assert len([e for e in expired if e["bucket_id"].startswith("seat:ann:")]) == 12
    assert {e["amount"] for e in expired if e["bucket_id"].startswith("seat:ann:")} == {
        3_000_000_000
    }


async def test_unpaid_seat_usage_is_not_funded(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    use_clock(app, real_now() - 3 * DAY)
    org = unique("unpaid")
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Teams", "plan_id": "teams"})
    await admin.put(f"/v1/orgs/{org}/seat-billing", json={"seat_billing": "balance"})
    monthly = {"code": unique("M"), "kind": "seat_months_monthly", "seat_months": 1}
    await post(admin, "/v1/codes", monthly)
    await post(admin, f"/v1/orgs/{org}/redemptions", {"code": monthly["code"]})
    for member in ("ann", "bob"):
        await post(admin, f"/v1/orgs/{org}/members", {"member_id": member})
    assert (await check(admin, org, "bob", "1"))["reason"] == "no_seat"
    async with settling(app, admin, new_topic) as s:
        paid = await s.settle(org, "ann", "10")
        unpaid = await s.settle(org, "bob", "10")
    assert paid["unfunded"] == 0
    assert unpaid["unfunded"] == 10_000_000
    # Seat-month codes need an organization paying its seats from a balance.
    other = unique("external")
    await post(admin, "/v1/orgs", {"org_id": other, "name": "Card", "plan_id": "teams"})
    code = {"code": unique("M"), "kind": "seat_months_monthly", "seat_months": 1}
    await post(admin, "/v1/codes", code)
    r = await admin.post(f"/v1/orgs/{other}/redemptions", json={"code": code["code"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "seat_months_not_accepted"
    r = await admin.put(f"/v1/orgs/{other}/seat-billing", json={"seat_billing": "card"})
    assert r.status_code == 422
