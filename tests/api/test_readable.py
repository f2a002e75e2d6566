"""Reads a client can use: bucket details on balances, seats with their credits, the organization
list, back-dated redemptions, the opt-in member check on ingest."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from api.support import FAR, client_for, make_billing_key, make_key, make_org, unique
from meter.api import App
from schemas.events import encode_event


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_balances_list_buckets_hiding_revoked_and_empty(admin: httpx.AsyncClient) -> None:
    org = await make_org(admin, plan={"seat_credits": "0"})
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})
    assert r.status_code == 201, r.text
    grants = [
        {"bucket_id": "pack", "kind": "personal", "member_id": "ann", "amount": "2.5",
         "expires_at": FAR},
        {"bucket_id": "pool", "kind": "shared", "amount": "10", "expires_at": FAR},
        {"bucket_id": "gone", "kind": "shared", "amount": "4", "expires_at": FAR},
    ]  # fmt: skip
    for grant in grants:
        assert (await admin.post(f"/v1/orgs/{org}/grants", json=grant)).status_code == 201
    assert (await admin.delete(f"/v1/orgs/{org}/grants/gone")).status_code == 200

    body = (await admin.get(f"/v1/orgs/{org}/balances")).json()
    # The old map is unchanged: every bucket, the revoked one at 0.
    assert body["balances"] == {"gone": "0", "pack": "2.5", "pool": "10"}
    by_id = {b["bucket_id"]: b for b in body["buckets"]}
    assert set(by_id) == {"pack", "pool"}
    assert by_id["pack"]["kind"] == "personal" and by_id["pack"]["member_id"] == "ann"
    assert (by_id["pack"]["granted"], by_id["pack"]["left"]) == ("2.5", "2.5")
    assert by_id["pool"]["member_id"] is None and by_id["pool"]["expires_at"].startswith("2099")

    every = (await admin.get(f"/v1/orgs/{org}/balances?all=true")).json()["buckets"]
    gone = next(b for b in every if b["bucket_id"] == "gone")
    assert (gone["granted"], gone["left"]) == ("4", "0") and gone["revoked_at"] is not None
    r = await admin.get(f"/v1/orgs/{org}/balances?all=maybe")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_query"
    r = await admin.get(f"/v1/orgs/{org}/balances?colour=red")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_query"


async def test_seats_carry_their_bucket_and_credits(admin: httpx.AsyncClient) -> None:
    org = unique("seats")
    r = await admin.post("/v1/orgs", json={"org_id": org, "name": "Teams", "plan_id": "teams"})
    assert r.status_code == 201, r.text
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})
    assert r.status_code == 201, r.text
    body = (await admin.get(f"/v1/orgs/{org}/seats")).json()
    start_ms = int(datetime.fromisoformat(body["period_start"]).timestamp() * 1000)
    [seat] = body["seats"]
    assert seat["bucket_id"] == f"seat:ann:{start_ms}"
    assert seat["credits"] is not None and int(seat["credits"].split(".")[0]) > 0
    assert seat["left"] == seat["credits"]
    balances = (await admin.get(f"/v1/orgs/{org}/balances")).json()["balances"]
    assert balances[seat["bucket_id"]] == seat["left"]
    # Unassigned as a path segment, in the documented spelling and the older one.
    for segment in ("unassigned", "Unassigned"):
        r = await admin.get(f"/v1/orgs/{org}/billing-groups/{segment}")
        assert r.status_code == 200 and r.json()["built_in"] is True, r.text
    assert (await admin.get(f"/v1/orgs/{org}/members/ann")).json()["billing_group_id"] is None


async def test_list_organizations(app: App, admin: httpx.AsyncClient) -> None:
    prefix = unique("list")
    made = []
    for i, status in enumerate(("active", "suspended", "active")):
        await make_org(admin, org_id=f"{prefix}-{i}", status=status)
        made.append(f"{prefix}-{i}")
    seen: list[str] = []
    after = f"{prefix}-"
    while True:
        r = await admin.get("/v1/orgs", params={"after": after, "limit": "2"})
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [o["org_id"] for o in page["orgs"] if o["org_id"].startswith(prefix)]
        if page["next_after"] is None or not page["orgs"][-1]["org_id"].startswith(prefix):
            break
        after = page["next_after"]
    assert seen == made
    r = await admin.get("/v1/orgs", params={"after": f"{prefix}-", "status": "suspended"})
    suspended = [o["org_id"] for o in r.json()["orgs"] if o["org_id"].startswith(prefix)]
    assert suspended == [made[1]]
    for bad in ({"status": "gone"}, {"limit": "0"}, {"limit": "1001"}, {"colour": "red"}):
        r = await admin.get("/v1/orgs", params=bad)
        assert r.status_code == 422, (bad, r.text)
    billing = await make_billing_key(admin)
    org_admin = await make_key(admin, made[0], "org_admin")
    for token in (billing, org_admin):
        async with client_for(app, token) as client:
            assert (await client.get("/v1/orgs")).status_code == 403


async def test_redeemed_at_is_for_admins_within_the_window(
    app: App, admin: httpx.AsyncClient
) -> None:
    org = await make_org(admin)
    now = datetime.now(UTC).replace(microsecond=0)
    codes = []
    for _ in range(5):
        code = {"code": unique("PACK"), "kind": "shared_credits", "credits": "100"}
        assert (await admin.post("/v1/codes", json=code)).status_code == 201
        codes.append(code["code"])
    path = f"/v1/orgs/{org}/redemptions"

    billing = await make_billing_key(admin)
    async with client_for(app, billing) as client:
        r = await client.post(path, json={"code": codes[0], "redeemed_at": _iso(now)})
        assert r.status_code == 403, r.text
    for at in (now + timedelta(hours=1), now - timedelta(days=401)):
        r = await admin.post(path, json={"code": codes[1], "redeemed_at": _iso(at)})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "redeemed_at_out_of_range"

    back = now - timedelta(days=30)
    r = await admin.post(path, json={"code": codes[1], "redeemed_at": _iso(back)})
    assert r.status_code == 201, r.text
    out = r.json()
    assert datetime.fromisoformat(out["redeemed_at"]) == back
    assert datetime.fromisoformat(out["grant"]["valid_from"]) == back
    # Valid three months from the back-dated redemption, not from now.
    expires = datetime.fromisoformat(out["grant"]["expires_at"])
    assert timedelta(days=85) < expires - back < timedelta(days=95)
    # Without redeemed_at, a billing key redeems as of now.
    async with client_for(app, billing) as client:
        r = await client.post(path, json={"code": codes[2]})
        assert r.status_code == 201, r.text
        assert datetime.fromisoformat(r.json()["redeemed_at"]) >= now


def _event(org: str, member: str, event_id: str) -> bytes:
    return encode_event(
        event_id=event_id, source="//readable", org_id=org, member_id=member,
        credits=1_000_000, time_ms=time.time_ns() // 1_000_000,
    )  # fmt: skip


async def test_ingest_can_check_members(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    assert (await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})).is_success
    product = await make_key(admin, org, "product")
    batch = (
        b"["
        + b",".join(
            [_event(org, "ann", "v-1"), _event(org, "nobody", "v-2"), _event(org, "ann", "v-3")]
        )
        + b"]"
    )
    headers = {"content-type": "application/cloudevents-batch+json"}
    async with client_for(app, product) as client:
        r = await client.post("/v1/events?validate=members", content=batch, headers=headers)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "unknown_member"
        assert [(d["index"], d["member_id"], d["type"]) for d in error["details"]] == [
            (1, "nobody", "unknown_member")
        ]
        single = {"content-type": "application/cloudevents+json", "meter-validate": "members"}
        r = await client.post("/v1/events", content=_event(org, "nobody", "v-4"), headers=single)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_member"
        r = await client.post("/v1/events?validate=all", content=batch, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_query"
        # Without the check the same batch is accepted (the consumer dead-letters the stranger).
        r = await client.post("/v1/events", content=batch, headers=headers)
        assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
        good = _event(org, "ann", "v-5")
        r = await client.post("/v1/events?validate=members", content=good, headers=single)
        assert r.status_code == 202, r.text
    # An organization that does not exist, named by an admin key.
    ghost = unique("ghost")
    r = await admin.post(
        "/v1/events?validate=members",
        content=orjson.dumps(orjson.loads(_event(ghost, "ann", "v-6"))),
        headers=single,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["type"] == "unknown_org"
