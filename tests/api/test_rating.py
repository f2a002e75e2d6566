"""Rate cards over the API (billing scope, immutable versions), and check / reserve with a usage
estimate rated by the organization's card."""

from __future__ import annotations

from typing import Any

import httpx

from api.support import client_for, make_billing_key, make_org
from meter.api import App

CARD: dict[str, Any] = {
    "effective_from": "2020-01-01T00:00:00Z",
    "unknown_model": "error",
    "models": {
        "gpt-4o*": {
            "input_tokens": {"micros_per_million": 2_500_000},
            "output_tokens": {"micros_per_million": 10_000_000},
        },
        "gpt-4o": {"input_tokens": {"micros_per_unit": 1_000_000}},
    },
    "note": "list prices",
}


async def _plan_of(admin: httpx.AsyncClient, org: str) -> str:
    r = await admin.get(f"/v1/orgs/{org}")
    plan: str = r.json()["plan_id"]
    return plan


async def test_cards_are_created_listed_and_read(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    plan = await _plan_of(admin, org)
    billing = client_for(app, await make_billing_key(admin))
    async with billing:
        r = await billing.post(f"/v1/plans/{plan}/rate-cards", json=CARD)
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["plan_id"] == plan and first["org_id"] is None
        assert first["models"] == CARD["models"] and first["note"] == "list prices"
        override = {**CARD, "org_id": org, "unknown_model": "default",
                    "default": {"requests": {"micros_per_unit": 7}}}  # fmt: skip
        r = await billing.post(f"/v1/plans/{plan}/rate-cards", json=override)
        assert r.status_code == 201, r.text
        second = r.json()
        assert second["version"] > first["version"] and second["org_id"] == org
        r = await billing.get(f"/v1/plans/{plan}/rate-cards")
        assert [c["version"] for c in r.json()["rate_cards"]] == [
            first["version"],
            second["version"],
        ]
        r = await billing.get(f"/v1/rate-cards/{first['version']}")
        assert r.status_code == 200 and r.json() == first
        # No edit route: a version is immutable.
        r = await billing.put(f"/v1/rate-cards/{first['version']}", json=CARD)
        assert r.status_code == 405
        r = await billing.get("/v1/rate-cards/999999999")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_rate_card"
        r = await billing.get("/v1/plans/no-such-plan/rate-cards")
        assert r.status_code == 404
        for bad in [
            {**CARD, "models": {"m": {"tokens": {"micros_per_unit": 1}}}},
            {**CARD, "models": {"m": {"requests": {"micros_per_unit": 1.5}}}},
            {**CARD, "models": {"m": {"requests": {"micros_per_unit": -1}}}},
            {**CARD, "models": {"m": {"requests": {}}}},
            {**CARD, "unknown_model": "default"},
            {**CARD, "effective_from": "2020-01-01T00:00:00"},
            {**CARD, "org_id": "no-such-org"},
        ]:
            r = await billing.post(f"/v1/plans/{plan}/rate-cards", json=bad)
            assert r.status_code in (404, 422), (bad, r.text)


async def test_check_and_reserve_in_usage_terms(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    plan = await _plan_of(admin, org)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "alice"})
    r = await admin.post(
        f"/v1/orgs/{org}/grants",
        json={"kind": "shared", "amount": "1", "expires_at": "2099-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    usage = {"model": "gpt-4o-mini", "input_tokens": 100_000, "output_tokens": 50_000}
    # No card yet: the usage cannot be priced.
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "usage": usage})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unrated", r.text
    r = await admin.post(f"/v1/plans/{plan}/rate-cards", json=CARD)
    assert r.status_code == 201, r.text
    app.cards.check_interval_s = 0.0
    # 100k * 2.5 + 50k * 10 = 750,000 micro-credits: fits in the 1 credit granted.
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "usage": usage})
    assert r.status_code == 200, r.text
    assert r.json()["allowed"] is True
    r = await admin.post(
        "/v1/reserve",
        json={"org_id": org, "member_id": "alice", "usage": usage, "reservation_id": "r1"},
    )
    assert r.json()["allowed"] is True
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "usage": usage})
    assert r.json()["allowed"] is False and r.json()["reason"] == "insufficient_credits"
    assert r.json()["available"]["shared"] == "0.25"
    # Exact name beats the pattern: gpt-4o input at 1 credit per token.
    exact = {"model": "gpt-4o", "input_tokens": 1}
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "usage": exact})
    assert r.json()["allowed"] is False
    for bad in [
        {"usage": usage, "credits": "1"},
        {},
        {"usage": {"model": "gpt-4o", "tokens": 1}},
        {"usage": {"model": "gpt-4o", "input_tokens": -1}},
        {"usage": {"model": "gpt-4o"}},
    ]:
        r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", **bad})
        assert r.status_code == 422, (bad, r.text)
    r = await admin.post(
        "/v1/check",
        json={"org_id": org, "member_id": "alice", "usage": {"model": "llama", "requests": 1}},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unrated"
    r = await admin.post(
        "/v1/check", json={"org_id": "no-org", "member_id": "alice", "usage": usage}
    )
    assert r.status_code == 200 and r.json()["reason"] == "unknown_org", r.text


async def test_preset_plans_come_with_their_rate_card(app: App, admin: httpx.AsyncClient) -> None:
    r = await admin.get("/v1/plans/requests/rate-cards")
    assert r.status_code == 200, r.text
    (card,) = r.json()["rate_cards"]
    assert card["default"] == {"requests": {"micros_per_unit": 1_000_000}}
    r = await admin.get("/v1/plans/teams/rate-cards")
    (teams,) = r.json()["rate_cards"]
    assert "EXAMPLE" in teams["note"]
    # A plan made from the `requests` preset: one request = one credit, whatever the model.
    org = await make_org(admin, plan={"preset": "requests", "name": "Requests"})
    plan = await _plan_of(admin, org)
    r = await admin.get(f"/v1/plans/{plan}/rate-cards")
    assert [c["models"] for c in r.json()["rate_cards"]] == [{}]
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "alice"})
    await admin.post(
        f"/v1/orgs/{org}/grants",
        json={"kind": "shared", "amount": "2", "expires_at": "2099-01-01T00:00:00Z"},
    )
    usage = {"model": "any-model", "requests": 2}
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "usage": usage})
    assert r.status_code == 200, r.text
    assert r.json()["allowed"] is True
    # 300 included requests and 2 shared credits: 1,000 requests are more than that.
    r = await admin.post(
        "/v1/check",
        json={"org_id": org, "member_id": "alice", "usage": {**usage, "requests": 1000}},
    )
    assert r.json()["reason"] is not None


async def test_usage_by_model_route(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    r = await admin.get(f"/v1/orgs/{org}/reports/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org_id"] == org and body["models"] == [] and body["member_id"] is None
    r = await admin.get(f"/v1/orgs/{org}/reports/models?member_id=alice&period=current")
    assert r.status_code == 200 and r.json()["member_id"] == "alice"
    for query in ["?bogus=1", "?period=yesterday", "?member_id=a&member_id=b"]:
        r = await admin.get(f"/v1/orgs/{org}/reports/models{query}")
        assert r.status_code == 422, (query, r.text)
    r = await admin.get("/v1/orgs/no-such-org/reports/models")
    assert r.status_code == 404
