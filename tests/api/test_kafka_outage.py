"""Kafka down or frozen degrades ingest only: events answer 503 within the produce deadline,
`/readyz` reports Kafka without failing, checks keep answering. Every response carries a request
id, echoed when the caller sent a usable one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from api.support import ADMIN_TOKEN, Addresses, client_for, make_key, make_org
from meter.api import App, build_app
from meter.migrate import migrate
from meter.services import KafkaServer
from meter.settings import Settings
from schemas.events import encode_event

PRODUCE_TIMEOUT_S = 1.0


@pytest_asyncio.fixture(loop_scope="session")
async def app_on_private_kafka(
    settings: Settings, migrated_dsn: str, private_kafka: KafkaServer
) -> AsyncIterator[App]:
    assert settings.redis_url is not None
    app = build_app(
        settings.model_copy(
            update={"admin_token": ADMIN_TOKEN, "produce_timeout_s": PRODUCE_TIMEOUT_S}
        ),
        Addresses(settings.redis_url, migrated_dsn, private_kafka.address),
        reconcile_interval_s=3600.0,
    )
    await migrate(migrated_dsn)
    async with app.running():
        yield app


def event(org: str, n: int) -> bytes:
    return encode_event(
        event_id=f"e-{n}", source="//kafka-outage", org_id=org, member_id="m1",
        credits=1_000_000, time_ms=int(time.time() * 1000),
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_kafka_outage_degrades_ingest_only(
    fault: str, app_on_private_kafka: App, private_kafka: KafkaServer
) -> None:
    app = app_on_private_kafka
    async with client_for(app, ADMIN_TOKEN) as admin:
        org = await make_org(admin)
        r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m1", "name": "M"})
        assert r.status_code == 201, r.text
        product = await make_key(admin, org, "product")
    headers = {"content-type": "application/cloudevents+json"}
    async with client_for(app, product) as client:
        r = await client.post("/v1/events", content=event(org, 0), headers=headers)
        assert r.status_code == 202, r.text
        pid = private_kafka.pid
        assert pid is not None
        if fault == "stopped":
            await private_kafka.stop()
        else:
            os.kill(pid, signal.SIGSTOP)
        try:
            for n in range(1, 4):
                started = time.monotonic()
                r = await asyncio.wait_for(
                    client.post("/v1/events", content=event(org, n), headers=headers), 30
                )
                took = time.monotonic() - started
                print(f"ingest with Kafka {fault}: {r.status_code} after {took * 1000:.0f} ms")
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                assert took < PRODUCE_TIMEOUT_S + 1.0
            r = await client.post(
                "/v1/check", json={"org_id": org, "member_id": "m1", "credits": "1"}
            )
            assert r.status_code == 200, r.text
            r = await client.get("/readyz")
            assert r.status_code == 200, r.text
            checks = r.json()["checks"]
            assert checks["redis"] == checks["postgres"] == "ok"
            assert checks["kafka"].startswith("unavailable")
        finally:
            if fault == "frozen":
                os.kill(pid, signal.SIGCONT)
            else:
                await private_kafka.start()


async def test_request_ids_are_echoed_or_made(app_on_private_kafka: App) -> None:
    async with client_for(app_on_private_kafka, None) as client:
        r = await client.get("/healthz", headers={"x-request-id": "req-42.a:b"})
        assert r.headers["x-request-id"] == "req-42.a:b"
        made = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(3)}
        assert len(made) == 3 and all(len(i) == 16 for i in made)
        # Not an id: a fresh one instead of echoing what could forge a log line.
        r = await client.get("/healthz", headers={"x-request-id": "a b\tc"})
        assert r.headers["x-request-id"] not in ("a b\tc", "")
        r = await client.get("/no/such/route")
        assert r.status_code == 404 and len(r.headers["x-request-id"]) == 16
        r = await client.get("/livez")
        assert r.status_code == 200
