"""The whole path over HTTP: admin, reserve, ingest, settlement by the real consumer, balances,
void; and a second organization's key gets 404 on all of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import httpx

from api.support import FAR, client_for, make_key, make_org
from consumers.settle import ConsumerOptions, build_consumer
from meter.api import App
from schemas.events import encode_event, event_key


async def wait_for_settlement(dsn: str, key: str, timeout_s: float = 20.0) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            row = await conn.fetchrow("SELECT * FROM settlements WHERE key = $1", key)
            if row is not None:
                return row
            assert time.monotonic() < deadline, f"{key} not settled in {timeout_s}s"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_end_to_end(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    org = await make_org(admin, plan={"seat_credits": "0", "limit_policy": "all"})
    outsider = await make_org(admin)
    product = await make_key(admin, org, "product")
    stranger = await make_key(admin, outsider, "org_admin")

    for member in ({"member_id": "alice", "name": "Alice"}, {"member_id": "bob"}):
        r = await admin.post(f"/v1/orgs/{org}/members", json=member)
        assert r.status_code == 201, r.text
    packs = [
        {"bucket_id": "pack-alice", "kind": "personal", "member_id": "alice", "amount": "2",
         "expires_at": FAR},
        {"bucket_id": "pool", "kind": "shared", "amount": "10", "expires_at": FAR},
    ]  # fmt: skip
    for pack in packs:
        r = await admin.post(f"/v1/orgs/{org}/grants", json=pack)
        assert r.status_code == 201, r.text
    # The same pack again changes nothing.
    r = await admin.post(f"/v1/orgs/{org}/grants", json=packs[1])
    assert r.status_code == 200 and r.json()["created"] is False

    async with client_for(app, product) as client:
        r = await client.post(
            "/v1/reserve",
            json={"org_id": org, "member_id": "alice", "credits": "5", "reservation_id": "res-1"},
        )
        assert r.status_code == 200 and r.json()["allowed"], r.text
        r = await client.post("/v1/check", json={"org_id": org, "member_id": "bob", "credits": 8})
        assert r.json()["allowed"] is False and r.json()["reason"] == "insufficient_credits"

        raw = encode_event(
            event_id="req-1", source="//e2e", org_id=org, member_id="alice", credits=4_500_000,
            time_ms=time.time_ns() // 1_000_000, reservation_id="res-1",
        )  # fmt: skip
        async with client_for(app, stranger) as other:
            r = await other.post(
                "/v1/events", content=raw, headers={"content-type": "application/cloudevents+json"}
            )
            assert r.status_code == 404, r.text
        r = await client.post(
            "/v1/events", content=raw, headers={"content-type": "application/cloudevents+json"}
        )
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1

    consumer_settings = app.settings.model_copy(
        update={
            "postgres_dsn": app.services.postgres_dsn,
            "dlq_topic": await new_topic(partitions=1, prefix="api-dlq"),
            "consumer_group": f"api-e2e-{org}",
        }
    )
    consumer = build_consumer(
        consumer_settings, app.engine, options=ConsumerOptions(batch_max_wait_ms=10)
    )
    task = asyncio.create_task(consumer.run())
    try:
        row = await wait_for_settlement(app.services.postgres_dsn, event_key("//e2e", "req-1"))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert row["credits"] == 4_500_000 and row["unfunded"] == 0
    assert row["reservation_id"] == "res-1"

    r = await admin.get(f"/v1/orgs/{org}/balances")
    assert r.json()["balances"] == {"pack-alice": "0", "pool": "7.5"}
    # The hold was consumed by the event: bob now sees the whole pool.
    r = await admin.post("/v1/check", json={"org_id": org, "member_id": "bob", "credits": "7.5"})
    assert r.json()["allowed"] is True, r.text
    r = await admin.post("/v1/release", json={"org_id": org, "reservation_id": "res-1"})
    assert r.json() == {"released": False}

    # Void the event: credits go back where they came from, and the void is recorded.
    key = event_key("//e2e", "req-1")
    async with client_for(app, stranger) as other:
        r = await other.post(f"/v1/orgs/{org}/voids", json={"key": key})
        assert r.status_code == 404
        for path in ("", "/members", "/grants", "/balances", "/members/alice", "/keys"):
            r = await other.get(f"/v1/orgs/{org}{path}")
            assert r.status_code == 404, (path, r.text)
        r = await other.post("/v1/check", json={"org_id": org, "member_id": "alice", "credits": 1})
        assert r.status_code == 404
    r = await admin.post(f"/v1/orgs/{org}/voids", json={"key": key})
    assert r.status_code == 200, r.text
    assert r.json()["voided"] is True
    assert sorted((x["bucket_id"], x["amount"]) for x in r.json()["returned"]) == [
        ("pack-alice", "2"),
        ("pool", "2.5"),
    ]
    r = await admin.get(f"/v1/orgs/{org}/balances")
    assert r.json()["balances"] == {"pack-alice": "2", "pool": "10"}
    recorded = await app.pool.fetchval(
        "SELECT voided FROM voids WHERE org_id = $1 AND event_key = $2", org, key
    )
    assert recorded is True
