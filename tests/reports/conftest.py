"""A small known dataset, settled through the real engine and settlement store, and an API app
whose clock the tests move between a historical period (January 2025) and the current one
(February 2025)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest_asyncio
import redis.asyncio as aioredis
from api.support import Addresses

from meter.admin.clock import to_ms
from meter.api import App, build_app
from meter.engine.types import MICRO, UsageEvent
from meter.migrate import migrate
from meter.services import create_database, drop_database, with_database
from meter.settings import Settings
from meter.store import SettlementStore

ADMIN_TOKEN = "reports-admin-token-0123456789"


def at(text: str) -> int:
    """Epoch ms of an ISO instant (UTC)."""
    return to_ms(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC))


JAN_SETUP = at("2025-01-01T00:00:00")
FEB_NOW = at("2025-02-10T12:00:00")


def asgi(app: App) -> httpx.ASGITransport:
    """httpx's transport into the application (its ASGI types are stricter than `App`'s)."""
    return httpx.ASGITransport(app=cast(Any, app))


@dataclass
class World:
    app: App
    dsn: str
    org_id: str
    other_org_id: str
    tokens: dict[str, str]
    """`org_admin`, `product` of the org; `other` an org_admin key of the other org."""

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=asgi(self.app), base_url="http://meter", headers=headers)


async def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


async def _settle(
    app: App, store: SettlementStore, org_id: str, now: int, events: list[tuple[str, str, int, int]]
) -> None:
    """Settle (key, member, micro-credits, time) through the engine, then the store, then
    confirm: what the consumer does with one batch."""
    batch = [
        UsageEvent(f"//test/{key}", org_id, member, micro, t) for key, member, micro, t in events
    ]
    settlements = await app.engine.settle_batch(org_id, batch, now)
    assert all(s.reason is None for s in settlements), settlements
    rows = [(s, None) for s in settlements]
    assert await store.write_batch("reports-test", "usage", rows, []) == len(rows)
    # A retried write of the same batch adds nothing, to the settlements or to any total.
    assert await store.write_batch("reports-test", "usage", rows, []) == 0
    await app.engine.confirm(org_id, [s.key for s in settlements])


async def _build(app: App, dsn: str) -> World:
    suffix = uuid.uuid4().hex[:6]
    org_id, other = f"acme-{suffix}", f"other-{suffix}"
    app.clock = lambda: JAN_SETUP
    async with httpx.AsyncClient(
        transport=asgi(app),
        base_url="http://meter",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as admin:
        plan = {"plan_id": f"teams-{suffix}", "name": "Teams", "seat_credits": "10",
                "prorate": False}  # fmt: skip
        await _ok(await admin.post("/v1/plans", json=plan), 201)
        for oid in (org_id, other):
            body = {"org_id": oid, "name": "Acme", "plan_id": plan["plan_id"],
                    "billing_anchor": "2025-01-01T00:00:00Z"}  # fmt: skip
            await _ok(await admin.post("/v1/orgs", json=body), 201)
        base = f"/v1/orgs/{org_id}"
        for gid, name in (("eng", "Engineering"), ("ops", "Ops, EU")):
            body = {"billing_group_id": gid, "name": name}
            await _ok(await admin.post(base + "/billing-groups", json=body), 201)
        members: list[dict[str, Any]] = [
            {"member_id": "alice", "name": "Smith, Alice", "email": "alice@example.com",
             "billing_group_id": "eng"},
            {"member_id": "bob", "name": 'Bob "the Builder"', "email": "bob@example.com",
             "billing_group_id": "eng"},
            {"member_id": "carol", "name": "Carol Jones", "email": "carol@example.com",
             "seated": False},
            {"member_id": "dave", "name": "Dave Departed", "email": "dave@example.com",
             "billing_group_id": "ops"},
        ]  # fmt: skip
        for m in members:
            await _ok(await admin.post(base + "/members", json=m), 201)
        year = {"valid_from": "2025-01-01T00:00:00Z", "expires_at": "2025-12-31T00:00:00Z"}
        grants = [
            {"bucket_id": "alice-personal", "kind": "personal", "member_id": "alice",
             "amount": "5", **year},
            {"bucket_id": "pool", "kind": "shared", "amount": "15", **year},
            {"bucket_id": "bob-on-demand", "kind": "on_demand", "member_id": "bob",
             "amount": "100", **year},
        ]  # fmt: skip
        for g in grants:
            await _ok(await admin.post(base + "/grants", json=g), 201)
        tokens = {}
        for scope in ("org_admin", "product"):
            body = {"scope": scope, "name": scope}
            tokens[scope] = (await _ok(await admin.post(base + "/keys", json=body), 201))["token"]
        body = {"scope": "org_admin", "name": "other"}
        tokens["other"] = (await _ok(await admin.post(f"/v1/orgs/{other}/keys", json=body), 201))[
            "token"
        ]

        store = SettlementStore(dsn)
        try:
            first = [
                ("e1", "alice", 12 * MICRO, at("2025-01-05T10:00:00")),
                ("e2", "alice", 4_500_000, at("2025-01-06T10:00:00")),
                ("e3", "bob", 3 * MICRO, at("2025-01-06T11:00:00")),
            ]
            await _settle(app, store, org_id, at("2025-01-06T12:00:00"), first)
            app.clock = lambda: at("2025-01-10T00:00:00")
            await _ok(await admin.patch(base + "/members/bob", json={"billing_group_id": "ops"}))
            second = [
                ("e4", "bob", 20 * MICRO, at("2025-01-11T09:00:00")),
                ("e5", "bob", 5 * MICRO, at("2025-01-12T09:00:00")),
                ("e6", "carol", 2_500_000, at("2025-01-12T10:00:00")),
                ("e7", "dave", 1_000_001, at("2025-01-15T10:00:00")),
            ]
            await _settle(app, store, org_id, at("2025-01-15T11:00:00"), second)
            app.clock = lambda: at("2025-01-20T00:00:00")
            await _ok(await admin.delete(base + "/members/dave"), 204)

            app.clock = lambda: FEB_NOW
            erin = {"member_id": "erin", "name": "Erin New", "email": "erin@example.com",
                    "billing_group_id": "eng"}  # fmt: skip
            await _ok(await admin.post(base + "/members", json=erin), 201)
            third = [("e8", "alice", 1 * MICRO, at("2025-02-03T10:00:00"))]
            await _settle(app, store, org_id, FEB_NOW, third)
        finally:
            await store.close()
    return World(app, dsn, org_id, other, tokens)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(settings: Settings, postgres_dsn: str) -> AsyncIterator[World]:
    """The dataset, built once for the module in a database of its own."""
    name = f"meter_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = with_database(postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    dsn = with_database(postgres_dsn, name)
    try:
        await migrate(dsn)
        assert settings.redis_url is not None and settings.kafka_bootstrap is not None
        client = aioredis.Redis.from_url(settings.redis_url)
        await client.flushdb()
        await client.aclose()
        app = build_app(
            settings.model_copy(update={"admin_token": ADMIN_TOKEN}),
            Addresses(settings.redis_url, dsn, settings.kafka_bootstrap),
            reconcile_interval_s=3600.0,
        )
        async with app.running():
            built = await _build(app, dsn)
            app.clock = lambda: FEB_NOW
            yield built
    finally:
        await drop_database(admin_dsn, name)
