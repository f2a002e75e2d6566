"""Helpers shared by the API tests."""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from meter.api import App
from meter.api.http import Route
from schemas.events import encode_event

ADMIN_TOKEN = "test-admin-token-0123456789"
FAR = "2099-01-01T00:00:00Z"


@dataclass(frozen=True)
class Addresses:
    """Where an app under test finds its servers (`meter.api.app.ServiceAddresses`)."""

    redis_url: str
    postgres_dsn: str
    kafka_bootstrap: str


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def client_for(app: App, token: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://meter", headers=headers
    )


async def make_org(admin: httpx.AsyncClient, plan: dict[str, Any] | None = None, **org: Any) -> str:
    """A new plan and an organization on it; returns the org id."""
    plan_id = unique("plan")
    body = {"plan_id": plan_id, "name": "Plan", **(plan or {})}
    r = await admin.post("/v1/plans", json=body)
    assert r.status_code == 201, r.text
    org_id = unique("org")
    body = {"org_id": org_id, "name": "Acme", "plan_id": plan_id, **org}
    r = await admin.post("/v1/orgs", json=body)
    assert r.status_code == 201, r.text
    return org_id


async def make_billing_key(admin: httpx.AsyncClient) -> str:
    """A `billing` platform key (grants, voids, codes, redemptions, plan changes)."""
    r = await admin.post("/v1/keys", json={"scope": "billing", "name": "billing"})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


async def make_key(admin: httpx.AsyncClient, org_id: str, scope: str) -> str:
    r = await admin.post(f"/v1/orgs/{org_id}/keys", json={"scope": scope, "name": scope})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def sample_request(
    route: Route, org: str
) -> tuple[str, dict[str, Any] | bytes | None, dict[str, str]]:
    """A valid request of `route` aimed at organization `org`'s objects."""
    names = {"org_id": org, "member_id": "alice", "group_id": "g1", "billing_group_id": "bg1"}
    path = route.path.format_map(collections.defaultdict(lambda: "none", names))
    headers: dict[str, str] = {}
    body: dict[str, Any] | bytes | None = None
    if route.path == "/v1/events":
        body = encode_event(
            event_id="e-1", source="//test", org_id=org, member_id="alice",
            credits=1_000_000, time_ms=time.time_ns() // 1_000_000,
        )  # fmt: skip
        headers["content-type"] = "application/cloudevents+json"
    elif route.request is not None:
        samples: dict[str, dict[str, Any]] = {
            "CheckRequest": {"org_id": org, "member_id": "alice", "credits": "1"},
            "ReserveRequest": {"org_id": org, "member_id": "alice", "credits": "1"},
            "ReleaseRequest": {"org_id": org, "reservation_id": "r-x"},
            "PlanCreate": {"plan_id": "p-x", "name": "x"},
            "OrgCreate": {"org_id": "o-x", "name": "x", "plan_id": "p-x"},
            "OrgUpdate": {"status": "suspended"},
            "MemberCreate": {"member_id": "mallory"},
            "MemberUpdate": {"name": "Mallory"},
            "GroupCreate": {"group_id": "g2", "name": "g2"},
            "BillingGroupCreate": {"billing_group_id": "bg2", "name": "bg2"},
            "BillingGroupUpdate": {"period_limit": "1"},
            "GrantCreate": {"kind": "shared", "amount": "1000", "expires_at": FAR},
            "VoidRequest": {"key": "//test e-0"},
            "KeyCreate": {"scope": "org_admin"},
            "SeatBillingUpdate": {"seat_billing": "external"},
            "CodeCreate": {"code": "CODE-X", "kind": "shared_credits", "credits": "1"},
            "RedemptionCreate": {"code": "CODE-X"},
            "OnDemandCapUpdate": {"cap": "10"},
            "AlertThresholdsUpdate": {"shared_pool": [10]},
            "DefaultAlertThresholdsUpdate": {"shared_pool": [10]},
            "WebhookEndpointCreate": {"url": "http://127.0.0.1:9/hook", "event_types": ["alert.*"]},
            "WebhookEndpointUpdate": {"description": "x"},
            "WebhookSecretRotate": {"grace_s": 60},
            "RateCardCreate": {"effective_from": FAR, "models": {}},
        }
        body = samples[route.request.__name__]
    return path, body, headers


async def call(client: httpx.AsyncClient, route: Route, org: str) -> httpx.Response:
    path, body, headers = sample_request(route, org)
    if isinstance(body, bytes):
        return await client.request(route.method, path, content=body, headers=headers)
    return await client.request(route.method, path, json=body, headers=headers)
