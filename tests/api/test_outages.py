"""A dependency that is down or frozen gives 503 `unavailable` with the stable error body, never
a 500 and never a hang: Redis and PostgreSQL of the test's own are really stopped or frozen."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio

from api.support import ADMIN_TOKEN, Addresses, client_for, make_key, make_org
from meter.api import App, build_app
from meter.migrate import migrate
from meter.services import PostgresServer, RedisServer
from meter.settings import Settings

DEADLINE_S = 30.0
"""How long a request may take before the test calls it a hang (the API's own deadlines are
far shorter)."""


@dataclass
class Outage:
    app: App
    admin: httpx.AsyncClient
    org: str
    product: str
    redis: RedisServer
    postgres: PostgresServer

    async def request(
        self, method: str, path: str, token: str | None = None, json: object = None
    ) -> httpx.Response:
        async with client_for(self.app, token or ADMIN_TOKEN) as client:
            return await asyncio.wait_for(client.request(method, path, json=json), DEADLINE_S)


@pytest_asyncio.fixture(loop_scope="session")
async def outage(
    settings: Settings,
    private_redis: RedisServer,
    private_postgres: PostgresServer,
    new_topic: Callable[..., Awaitable[str]],
) -> AsyncIterator[Outage]:
    await migrate(private_postgres.address)
    topic = await new_topic(partitions=1, prefix="outage")
    assert settings.kafka_bootstrap is not None
    app = build_app(
        settings.model_copy(update={"admin_token": ADMIN_TOKEN, "usage_topic": topic}),
        Addresses(private_redis.address, private_postgres.address, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
        key_cache_ttl_s=0.1,
        postgres_timeout_s=1.0,
    )
    async with app.running(), client_for(app, ADMIN_TOKEN) as admin:
        org = await make_org(admin)
        r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m1", "name": "M"})
        assert r.status_code == 201, r.text
        product = await make_key(admin, org, "product")
        yield Outage(app, admin, org, product, private_redis, private_postgres)


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "unavailable"
    assert set(error) == {"code", "message", "details"}


async def _until(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await probe():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_redis_stopped_is_503(outage: Outage) -> None:
    quota = {"org_id": outage.org, "member_id": "m1", "credits": "1"}
    r = await outage.request("POST", "/v1/check", json=quota)
    assert r.status_code == 200, r.text
    await outage.redis.stop()
    for path, body in (
        ("/v1/check", quota),
        ("/v1/reserve", quota),
        ("/v1/release", {"org_id": outage.org, "reservation_id": "r1"}),
    ):
        for token in (ADMIN_TOKEN, outage.product):
            assert_unavailable(await outage.request("POST", path, token, json=body))
    assert_unavailable(await outage.request("GET", f"/v1/orgs/{outage.org}/balances"))
    r = await outage.request("GET", f"/v1/orgs/{outage.org}")  # PostgreSQL only: still answers
    assert r.status_code == 200, r.text
    await outage.redis.start()

    async def answers() -> bool:
        r = await outage.request("POST", "/v1/check", json=quota)
        return r.status_code == 200

    await _until(answers, "checks after Redis came back")


async def test_postgres_stopped_is_503(outage: Outage) -> None:
    org = outage.org
    await outage.postgres.stop()
    await asyncio.sleep(0.2)  # the product key's cache entry (0.1 s) expires
    quota = {"org_id": org, "member_id": "m1", "credits": "1"}
    assert_unavailable(await outage.request("POST", "/v1/check", outage.product, json=quota))
    assert_unavailable(await outage.request("GET", f"/v1/orgs/{org}"))
    plan = {"plan_id": "p", "name": "P"}
    assert_unavailable(await outage.request("POST", "/v1/plans", json=plan))
    assert_unavailable(
        await outage.request("PATCH", f"/v1/orgs/{org}/members/m1", json={"name": "N"})
    )
    assert_unavailable(await outage.request("GET", f"/v1/orgs/{org}/reports/totals"))
    assert_unavailable(await outage.request("GET", f"/v1/orgs/{org}/reports/export.csv"))
    # Checks read Redis only: with the bootstrap admin key (no lookup), they still answer.
    r = await outage.request("POST", "/v1/check", json=quota)
    assert r.status_code == 200, r.text
    await outage.postgres.start()

    async def answers() -> bool:
        r = await outage.request("GET", f"/v1/orgs/{org}")
        return r.status_code == 200

    await _until(answers, "the API after PostgreSQL came back")


def _server_processes(postmaster: int) -> list[int]:
    """The postmaster and its children (each backend is in a session of its own, so signalling
    the postmaster's process group does not reach them)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def test_postgres_frozen_is_503(outage: Outage) -> None:
    org = outage.org
    pid = outage.postgres.pid
    assert pid is not None
    frozen = _server_processes(pid)
    loop = asyncio.get_running_loop()
    _signal_all(frozen, signal.SIGSTOP)
    # Thawed after the deadline whatever happens: without the API's own deadline the requests
    # would wait for the server, and a canceled request waits for it too.
    thaw = loop.call_later(DEADLINE_S, _signal_all, frozen, signal.SIGCONT)
    try:
        async with client_for(outage.app, ADMIN_TOKEN) as client:
            assert_unavailable(await client.get(f"/v1/orgs/{org}"))
            assert_unavailable(await client.patch(f"/v1/orgs/{org}/members/m1", json={"name": "N"}))
            assert_unavailable(await client.get(f"/v1/orgs/{org}/reports/totals"))
    finally:
        thaw.cancel()
        _signal_all(frozen, signal.SIGCONT)

    async def answers() -> bool:
        r = await outage.request("GET", f"/v1/orgs/{org}")
        return r.status_code == 200

    await _until(answers, "the API after PostgreSQL thawed")


async def test_redis_frozen_is_503(outage: Outage) -> None:
    quota = {"org_id": outage.org, "member_id": "m1", "credits": "1"}
    r = await outage.request("POST", "/v1/check", json=quota)
    assert r.status_code == 200, r.text
    pid = outage.redis.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    os.kill(pid, signal.SIGSTOP)
    thaw = loop.call_later(DEADLINE_S, os.kill, pid, signal.SIGCONT)
    try:
        async with client_for(outage.app, ADMIN_TOKEN) as client:
            for path in ("/v1/check", "/v1/reserve", "/v1/check"):
                assert_unavailable(await client.post(path, json=quota))
            assert_unavailable(await client.get(f"/v1/orgs/{outage.org}/balances"))
    finally:
        thaw.cancel()
        os.kill(pid, signal.SIGCONT)

    async def answers() -> bool:
        r = await outage.request("POST", "/v1/check", json=quota)
        return r.status_code == 200

    await _until(answers, "checks after Redis thawed")
