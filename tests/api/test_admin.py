"""Administration rules over HTTP: billing groups and Unassigned, seats, groups, reconciliation,
health, OpenAPI."""

from __future__ import annotations

import time

import httpx
import orjson

from api.support import FAR, make_org
from meter.admin import reconcile_all
from meter.admin.clock import to_ms
from meter.api import App
from meter.api.openapi import COMMITTED, openapi_bytes
from meter.engine.periods import period_at
from meter.engine.types import OrgConfig, PeriodKind
from schemas.events import encode_event

DAY_MS = 86_400_000


async def test_billing_groups_and_unassigned(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    base = f"/v1/orgs/{org}/billing-groups"
    r = await admin.post(base, json={"billing_group_id": "eng", "name": "Eng", "period_limit": 3})
    assert r.status_code == 201 and r.json()["period_limit"] == "3", r.text
    for body in (
        {"billing_group_id": "Unassigned", "name": "x"},
        {"billing_group_id": "x", "name": "unassigned"},
    ):
        r = await admin.post(base, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "unassigned_built_in"
    for method, body in (("PATCH", {"period_limit": "1"}), ("DELETE", None)):
        r = await admin.request(method, f"{base}/Unassigned", json=body)
        assert r.status_code == 409, r.text
    r = await admin.post(base, json={"billing_group_id": "eng2", "name": "ENG"})
    assert r.status_code == 409  # names are unique, case-insensitively

    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a", "billing_group_id": "eng"})
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "b"})
    await admin.post(
        f"/v1/orgs/{org}/grants", json={"kind": "shared", "amount": 100, "expires_at": FAR}
    )
    listed = (await admin.get(base)).json()["billing_groups"]
    assert [(g["billing_group_id"], g["name"], g["member_ids"], g["built_in"]) for g in listed] == [
        ("", "Unassigned", ["b"], True),
        ("eng", "Eng", ["a"], False),
    ]
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "a", "credits": 4})
    assert r.json()["reason"] == "group_limit_reached" and r.json()["group_remaining"] == "3"
    r = await admin.patch(f"{base}/eng", json={"period_limit": None})
    assert r.json()["period_limit"] is None
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "a", "credits": 4})
    assert r.json()["allowed"] is True
    r = await admin.patch(f"{base}/eng", json={"period_limit": "2"})
    r = await admin.delete(f"{base}/eng")
    assert r.status_code == 204
    assert (await admin.get(f"{base}/eng")).status_code == 404
    assert (await admin.get(f"/v1/orgs/{org}/members/a")).json()["billing_group_id"] is None
    # Back in Unassigned: the deleted group's limit no longer applies.
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "a", "credits": 4})
    assert r.json()["allowed"] is True and r.json()["group_remaining"] is None
    # The deleted group's row stays for history; its id cannot be reused while it names history.
    assert await app.pool.fetchval(
        "SELECT deleted_at IS NOT NULL FROM billing_groups WHERE org_id = $1", org
    )

    org2 = await make_org(admin, plan={"billing_groups_allowed": False})
    r = await admin.post(
        f"/v1/orgs/{org2}/billing-groups", json={"billing_group_id": "x", "name": "x"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "billing_groups_not_allowed"


async def test_member_limits_status_and_seats(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin, plan={"default_member_limit": "0", "limit_policy": "shared"})
    await admin.post(
        f"/v1/orgs/{org}/grants", json={"kind": "shared", "amount": 10, "expires_at": FAR}
    )
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m"})
    check = {"org_id": org, "member_id": "m", "credits": 1}
    assert (await admin.post("/v1/check", json=check)).json()["reason"] == "member_limit_reached"
    r = await admin.patch(f"/v1/orgs/{org}/members/m", json={"member_limit": "5", "name": "M"})
    assert r.json()["member_limit"] == "5" and r.json()["name"] == "M"
    assert (await admin.post("/v1/check", json=check)).json()["member_remaining"] == "5"
    await admin.patch(f"/v1/orgs/{org}/members/m", json={"seated": False})
    assert (await admin.post("/v1/check", json=check)).json()["reason"] == "no_seat"
    await admin.patch(f"/v1/orgs/{org}/members/m", json={"seated": True})
    r = await admin.patch(f"/v1/orgs/{org}", json={"status": "suspended"})
    assert r.json()["status"] == "suspended"
    assert (await admin.post("/v1/check", json=check)).json()["reason"] == "org_inactive"
    await admin.patch(f"/v1/orgs/{org}", json={"status": "active"})
    assert (await admin.post("/v1/check", json=check)).json()["allowed"] is True
    assert (await admin.delete(f"/v1/orgs/{org}/members/m")).status_code == 204
    assert (await admin.delete(f"/v1/orgs/{org}/members/m")).status_code == 404
    assert (await admin.post("/v1/check", json=check)).json()["reason"] == "unknown_member"
    assert (await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m"})).status_code == 201
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "member_exists"


async def test_mid_period_seat_is_prorated(app: App, admin: httpx.AsyncClient) -> None:
    now = time.time_ns() // 1_000_000
    anchor = now - 10 * DAY_MS  # a 30-day rolling cycle, 10 days in: 2/3 of it remains
    anchor_text = encode_event(
        event_id="x", source="x", org_id="x", member_id="x", credits=0, time_ms=anchor
    )
    anchor_iso = orjson.loads(anchor_text)["time"]
    org = await make_org(
        admin,
        plan={"period_kind": "rolling", "rolling_days": 30, "seat_credits": "3000"},
        billing_anchor=anchor_iso,
    )
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m"})
    assert r.status_code == 201
    grants = (await admin.get(f"/v1/orgs/{org}/grants")).json()["grants"]
    assert len(grants) == 1 and grants[0]["kind"] == "seat"
    cfg = OrgConfig(org, "active", PeriodKind.ROLLING, anchor, rolling_days=30)  # type: ignore[arg-type]
    period = period_at(cfg, now)
    amount = float(grants[0]["amount"])
    assert 1999 < amount <= 2000, grants  # joined 10 days into 30: 3000 * 20/30
    assert to_ms_iso(grants[0]["expires_at"]) == period.end_ms
    # Unseating and seating again in the same period grants nothing more.
    await admin.patch(f"/v1/orgs/{org}/members/m", json={"seated": False})
    await admin.patch(f"/v1/orgs/{org}/members/m", json={"seated": True})
    assert len((await admin.get(f"/v1/orgs/{org}/grants")).json()["grants"]) == 1


def to_ms_iso(text: str) -> int:
    from datetime import datetime

    return to_ms(datetime.fromisoformat(text))


async def test_groups_are_functional_only(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a"})
    r = await admin.post(f"/v1/orgs/{org}/groups", json={"group_id": "g", "name": "Research"})
    assert r.status_code == 201
    assert (
        await admin.post(f"/v1/orgs/{org}/groups", json={"group_id": "g", "name": "x"})
    ).status_code == 409
    await admin.post(f"/v1/orgs/{org}/groups", json={"group_id": "h", "name": "Infra"})
    for g in ("g", "h"):
        r = await admin.put(f"/v1/orgs/{org}/groups/{g}/members/a")
        assert r.json()["member_ids"] == ["a"]
    assert (await admin.get(f"/v1/orgs/{org}/members/a")).json()["groups"] == ["g", "h"]
    assert (await admin.put(f"/v1/orgs/{org}/groups/g/members/zed")).status_code == 404
    r = await admin.delete(f"/v1/orgs/{org}/groups/g/members/a")
    assert r.json()["member_ids"] == []
    assert (await admin.delete(f"/v1/orgs/{org}/groups/h")).status_code == 204
    member = (await admin.get(f"/v1/orgs/{org}/members/a")).json()
    assert member["groups"] == [] and member["billing_group_id"] is None


async def test_reconciler_repairs_redis(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a", "member_limit": "4"})
    await admin.post(
        f"/v1/orgs/{org}/grants",
        json={"bucket_id": "p", "kind": "shared", "amount": 9, "expires_at": FAR},
    )
    check = {"org_id": org, "member_id": "a", "credits": 1}
    before = (await admin.post("/v1/check", json=check)).json()
    # Lose Redis entirely.
    await app.redis.flushdb()
    lost = await admin.post("/v1/check", json=check)
    assert lost.status_code == 503 and lost.json()["error"]["code"] == "unavailable"
    assert await reconcile_all(app.admin) == 0
    assert (await admin.post("/v1/check", json=check)).json() == before
    # Drift in one organization, repaired over HTTP.
    await app.engine.remove_member(org, "a")
    assert (await admin.post(f"/v1/orgs/{org}/reconcile")).status_code == 204
    assert (await admin.post("/v1/check", json=check)).json() == before


async def test_health_and_readiness(app: App, admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/healthz")).json()["status"] == "ok"
    r = await admin.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"redis": "ok", "postgres": "ok", "kafka": "ok"}


async def test_batch_ingest_reports_each_event(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    now = time.time_ns() // 1_000_000
    good = encode_event(
        event_id="b1", source="//b", org_id=org, member_id="m", credits=1, time_ms=now
    )
    future = encode_event(
        event_id="b2", source="//b", org_id=org, member_id="m", credits=1, time_ms=now + 10 * DAY_MS
    )
    literal = (
        b'{"specversion":"1.0","type":"meter.usage.v1","source":"//b","id":"b3","time":"2026-01-01T00:00:00Z","subject":"m","data":{"org_id":"%s","member_id":"m","credits":0.0000001}}'
        % org.encode()
    )
    batch = b"[" + b",".join([good, future, literal, b"42"]) + b"]"
    r = await admin.post(
        "/v1/events", content=batch, headers={"content-type": "application/cloudevents-batch+json"}
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 3
    assert [x["accepted"] for x in body["results"]] == [True, False, False, False]
    assert body["results"][1]["error"]["code"] == "time_in_future"
    assert body["results"][2]["error"]["code"] == "invalid_credits"
    r = await admin.post(
        "/v1/events", content=future, headers={"content-type": "application/cloudevents+json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "time_in_future"
    r = await admin.post(
        "/v1/events",
        content=b"[" + b",".join([good] * 1001) + b"]",
        headers={"content-type": "application/cloudevents-batch+json"},
    )
    assert r.status_code == 422


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.read_bytes() == openapi_bytes(), (
        "schemas/openapi.json is stale: run `python -m meter.api.openapi`"
    )


async def test_openapi_is_served(app: App, admin: httpx.AsyncClient) -> None:
    doc = (await admin.get("/openapi.json")).json()
    assert "/v1/check" in doc["paths"] and "CheckResponse" in doc["components"]["schemas"]
