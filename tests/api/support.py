"""Helpers shared by the API tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from meter.api import App

ADMIN_TOKEN = "test-admin-token-0123456789"
FAR = "2099-01-01T00:00:00Z"


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


async def make_key(admin: httpx.AsyncClient, org_id: str, scope: str) -> str:
    r = await admin.post(f"/v1/orgs/{org_id}/keys", json={"scope": scope, "name": scope})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token
