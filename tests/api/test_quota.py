"""Administration over HTTP feeding the quota hot path: check, reserve, release."""

from __future__ import annotations

import httpx

from api.support import make_org
from meter.api import App


async def test_check_reserve_release(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "alice", "name": "Alice"})
    assert r.status_code == 201, r.text
    r = await admin.post(
        f"/v1/orgs/{org}/grants",
        json={"kind": "shared", "amount": "10.5", "expires_at": "2099-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text

    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "credits": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allowed"] is True and body["reason"] is None
    assert body["available"]["shared"] == "10.5"
    assert body["member_remaining"] is None and body["period_end"] is not None

    r = await admin.post(
        "/v1/reserve",
        json={"org_id": org, "member_id": "alice", "credits": 10, "reservation_id": "r1"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["allowed"] is True and r.json()["reservation_id"] == "r1"
    assert r.json()["reservation_expires_at"] is not None

    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "credits": 1})
    assert r.json() | {"available": None} == r.json() | {"available": None}
    assert r.json()["allowed"] is False
    assert r.json()["reason"] == "insufficient_credits"
    assert r.json()["available"]["shared"] == "0.5"

    r = await admin.post("/v1/release", json={"org_id": org, "reservation_id": "r1"})
    assert r.json() == {"released": True}
    r = await admin.post("/v1/release", json={"org_id": org, "reservation_id": "r1"})
    assert r.json() == {"released": False}
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "alice", "credits": "10.5"})
    assert r.json()["allowed"] is True

    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "bob", "credits": 1})
    assert r.json()["reason"] == "unknown_member"


async def test_credits_are_exact(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m"})
    for credits in ["0.0000001", "-1", "1e-7", "abc", True, None]:
        r = await admin.post(
            "/v1/check", json={"org_id": org, "member_id": "m", "credits": credits}
        )
        assert r.status_code == 422, (credits, r.text)
    raw = b'{"org_id": "%s", "member_id": "m", "credits": 0.10000000000000000555}' % org.encode()
    r = await admin.post("/v1/check", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    raw = b'{"org_id": "%s", "member_id": "m", "credits": 0.000001}' % org.encode()
    r = await admin.post("/v1/check", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
