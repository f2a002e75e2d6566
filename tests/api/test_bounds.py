"""Credits beyond the engine's exact range are refused at the API's every door, and grants can be
revoked: the revocation holds in Redis, in PostgreSQL, after a reconcile and after a rebuild."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import redis.asyncio as aioredis

from api.support import FAR, client_for, make_key, make_org
from meter.admin import queries as q
from meter.admin.clock import from_ms, now_ms
from meter.admin.reconcile import reconcile_org
from meter.api import App
from meter.api.routes import ROUTES
from meter.engine.types import MAX_AMOUNT
from meter.money import format_credits
from meter.rebuild import clear_org, rebuild_org

TOO_LARGE = "9007199255"
"""Credits whose micro-credits are just past `MAX_AMOUNT`."""
LARGEST = format_credits(MAX_AMOUNT)


def credit_doors() -> list[tuple[str, str, str]]:
    """(method, path, field) of every request body field that is credits."""
    out = []
    for route in ROUTES:
        if route.request is None:
            continue
        for name, info in route.request.model_fields.items():
            if "function _credits" in repr(info.annotation) + repr(info.metadata):
                out.append((route.method, route.path, name))
    return out


def too_large_fields(response: httpx.Response) -> set[str]:
    details = response.json()["error"].get("details", [])
    return {d["loc"] for d in details if d["type"] == "too_large"}


async def test_every_credit_field_is_bounded_by_the_engine(admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    doors = credit_doors()
    assert len(doors) >= 14  # plans (5), members (2), billing groups (2), grants, codes, cap, quota
    for method, path, field in doors:
        url = path.format(org_id=org, member_id="m", billing_group_id="g")
        r = await admin.request(method, url, json={field: TOO_LARGE})
        assert r.status_code == 422, (method, path, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
        assert too_large_fields(r) == {field}, (method, path, r.text)
        r = await admin.request(method, url, json={field: LARGEST})
        assert field not in too_large_fields(r), (method, path, r.text)


async def test_org_admin_cannot_set_limits_the_engine_cannot_hold(
    app: App, admin: httpx.AsyncClient
) -> None:
    org = await make_org(admin)
    async with client_for(app, await make_key(admin, org, "org_admin")) as client:
        r = await client.post(f"/v1/orgs/{org}/members", json={"member_id": "a"})
        assert r.status_code == 201, r.text
        for method, url, body in [
            ("PATCH", f"/v1/orgs/{org}/members/a", {"member_limit": TOO_LARGE}),
            ("POST", f"/v1/orgs/{org}/members", {"member_id": "b", "member_limit": TOO_LARGE}),
            ("POST", f"/v1/orgs/{org}/billing-groups",
             {"billing_group_id": "g", "name": "G", "period_limit": 9007199255}),
        ]:  # fmt: skip
            r = await client.request(method, url, json=body)
            assert r.status_code == 422 and too_large_fields(r), r.text
        # Grants need a platform key; the bound holds for them too.
        r = await admin.post(
            f"/v1/orgs/{org}/grants",
            json={"kind": "shared", "amount": TOO_LARGE, "expires_at": FAR},
        )
        assert r.status_code == 422 and too_large_fields(r), r.text
        r = await client.patch(f"/v1/orgs/{org}/members/a", json={"member_limit": LARGEST})
        assert r.status_code == 200 and r.json()["member_limit"] == LARGEST, r.text
        r = await client.post(
            "/v1/check", json={"org_id": org, "member_id": "a", "credits": TOO_LARGE}
        )
        assert r.status_code == 422 and too_large_fields(r) == {"credits"}, r.text


async def _check(admin: httpx.AsyncClient, org: str, credits: Any) -> dict[str, Any]:
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "a", "credits": credits})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_revoke_a_grant(app: App, admin: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    # A grace window: the rebuild puts back buckets expired within it, the revoked one included.
    org = await make_org(admin, grace_seconds=3600)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a"})
    grants = f"/v1/orgs/{org}/grants"
    for bucket_id, amount in (("pack", 100), ("keep", 5)):
        r = await admin.post(
            grants,
            json={"bucket_id": bucket_id, "kind": "shared", "amount": amount, "expires_at": FAR},
        )
        assert r.status_code == 201, r.text
    assert (await _check(admin, org, 50))["allowed"] is True

    before = now_ms()
    r = await admin.delete(f"{grants}/pack")
    assert r.status_code == 200, r.text
    revoked = r.json()
    assert revoked["bucket_id"] == "pack" and revoked["amount"] == "100"
    assert revoked["revoked_at"] is not None and revoked["expires_at"] == revoked["revoked_at"]
    assert datetime.fromisoformat(revoked["revoked_at"]) >= from_ms(before)

    async def state() -> tuple[dict[str, Any], dict[str, str]]:
        checked = await _check(admin, org, 50)
        balances = (await admin.get(f"/v1/orgs/{org}/balances")).json()["balances"]
        return checked, balances

    checked, balances = await state()
    assert checked["allowed"] is False and checked["reason"] == "insufficient_credits"
    assert checked["available"]["shared"] == "5"
    assert balances == {"keep": "5", "pack": "0"}
    listed = {g["bucket_id"]: g for g in (await admin.get(grants)).json()["grants"]}
    assert listed["pack"]["revoked_at"] == revoked["revoked_at"]
    assert listed["keep"]["revoked_at"] is None

    # Idempotent: the same grant, revoked when it first was.
    r = await admin.delete(f"{grants}/pack")
    assert r.status_code == 200 and r.json() == revoked
    r = await admin.delete(f"{grants}/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "grant_not_found"
    r = await admin.post(
        grants, json={"bucket_id": "pack", "kind": "shared", "amount": 100, "expires_at": FAR}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "grant_revoked"

    # Redis lost the organization: the rebuild brings the grant back revoked.
    at = now_ms()
    admin_service = app.admin
    await clear_org(redis, org)
    await rebuild_org(admin_service, redis, org, at, clear=False)
    checked, balances = await state()
    assert checked["allowed"] is False and checked["available"]["shared"] == "5"
    assert balances == {"keep": "5", "pack": "0"}


async def test_reconcile_applies_a_revocation_redis_missed(
    app: App, admin: httpx.AsyncClient
) -> None:
    org = await make_org(admin)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a"})
    r = await admin.post(
        f"/v1/orgs/{org}/grants",
        json={"bucket_id": "pack", "kind": "shared", "amount": 100, "expires_at": FAR},
    )
    assert r.status_code == 201, r.text
    # PostgreSQL has the revocation, Redis never got it (its apply failed).
    assert await app.pool.fetchrow(q.REVOKE_GRANT, org, "pack", from_ms(now_ms())) is not None
    assert (await _check(admin, org, 50))["allowed"] is True
    assert await reconcile_org(app.admin, org)
    checked = await _check(admin, org, 50)
    assert checked["allowed"] is False and checked["available"]["shared"] == "0"
