"""Dead letters indexed per organization by the real settlement consumer and listed over HTTP and
the CLI; one settlement read back by its event key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.support import FAR, client_for, make_key, make_org
from consumers.dead_letters import record_dead_letters
from consumers.dlq import DeadLetter, list_command
from consumers.settle import ConsumerOptions, build_consumer
from meter import kafka
from meter.api import App
from schemas.events import encode_event, event_key


async def _wait(dsn: str, sql: str, *args: Any, want: int, timeout_s: float = 30.0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while (await conn.fetchval(sql, *args)) < want:
            assert time.monotonic() < deadline, f"{sql} did not reach {want} in {timeout_s}s"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def _event(org: str, member: str, event_id: str, credits: int) -> bytes:
    return encode_event(
        event_id=event_id, source="//dl.example/api", org_id=org, member_id=member,
        credits=credits, time_ms=time.time_ns() // 1_000_000, reservation_id=None,
    )  # fmt: skip


async def test_dead_letters_and_settlement_reads(
    app: App,
    admin: httpx.AsyncClient,
    new_topic: Callable[..., Awaitable[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    org = await make_org(admin, plan={"seat_credits": "0", "limit_policy": "all"})
    outsider = await make_org(admin)
    assert (await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})).is_success
    grant = {"bucket_id": "pool", "kind": "shared", "amount": "2", "expires_at": FAR}
    assert (await admin.post(f"/v1/orgs/{org}/grants", json=grant)).status_code == 201

    # Three records: one settles (drawing more than the pool has), one names no member, one is
    # not JSON at all (its organization comes from the record key).
    producer = AIOKafkaProducer(
        bootstrap_servers=app.services.kafka_bootstrap, **kafka.client_options()
    )
    await producer.start()
    try:
        topic = app.settings.usage_topic
        for value in (
            _event(org, "ann", "ok-1", 3_000_000),
            _event(org, "nobody", "stranger-1", 1_000_000),
            b"{not json",
        ):
            await producer.send_and_wait(topic, value=value, key=org.encode())
    finally:
        await producer.stop()

    dsn = app.services.postgres_dsn
    consumer_settings = app.settings.model_copy(
        update={
            "postgres_dsn": dsn,
            "dlq_topic": await new_topic(partitions=1, prefix="api-dlq"),
            "consumer_group": f"dl-{org}",
        }
    )
    consumer = build_consumer(
        consumer_settings, app.engine, options=ConsumerOptions(batch_max_wait_ms=10)
    )
    task = asyncio.create_task(consumer.run())
    try:
        await _wait(dsn, "SELECT count(*) FROM dead_letters WHERE org_id = $1", org, want=2)
        await _wait(dsn, "SELECT count(*) FROM settlements WHERE org_id = $1", org, want=1)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)

    # -- the settlement, by key and by source and id -----------------------------------------
    key = event_key("//dl.example/api", "ok-1")
    base = f"/v1/orgs/{org}/settlements"
    by_key = await admin.get(base, params={"key": key})
    assert by_key.status_code == 200, by_key.text
    s = by_key.json()
    assert (s["source"], s["id"], s["member_id"]) == ("//dl.example/api", "ok-1", "ann")
    assert s["credits"] == "3" and s["unfunded"] == "1"
    assert s["buckets"] == [{"bucket_id": "pool", "kind": "shared", "amount": "2"}]
    assert s["billing_group_id"] is None and s["billing_group_name"] == "Unassigned"
    assert s["late"] is False and s["void"] is None and s["reservation_id"] is None
    by_pair = await admin.get(base, params={"source": "//dl.example/api", "id": "ok-1"})
    assert by_pair.json() == s
    r = await admin.get(base, params={"source": "//dl.example/api", "id": "missing"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "settlement_not_found"
    for bad in ({}, {"key": key, "id": "ok-1"}, {"source": "//x"}, {"key": "nospace"}):
        r = await admin.get(base, params=bad)
        assert r.status_code == 422, (bad, r.text)
    assert (await admin.post(f"/v1/orgs/{org}/voids", json={"key": key})).status_code == 200
    voided = (await admin.get(base, params={"key": key})).json()["void"]
    assert voided["returned"] == [{"bucket_id": "pool", "kind": "shared", "amount": "2"}]

    # -- dead letters -----------------------------------------------------------------------
    path = f"/v1/orgs/{org}/dead-letters"
    letters = (await admin.get(path)).json()
    assert letters["next_after"] is None
    listed = letters["dead_letters"]
    assert [d["reason"] for d in listed] == ["invalid_json", "unknown_member"]  # newest first
    stranger = listed[1]
    assert "nobody" in stranger["detail"] and '"stranger-1"' in stranger["event"]
    assert stranger["topic"] == app.settings.usage_topic and stranger["truncated"] is False
    only = (await admin.get(path, params={"reason": "unknown_member"})).json()["dead_letters"]
    assert [d["id"] for d in only] == [stranger["id"]]
    first = (await admin.get(path, params={"limit": "1"})).json()
    assert [d["id"] for d in first["dead_letters"]] == [listed[0]["id"]]
    second = (await admin.get(path, params={"limit": "1", "after": first["next_after"]})).json()
    assert [d["id"] for d in second["dead_letters"]] == [stranger["id"]]
    r = await admin.get(path, params={"after": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"

    other = await make_key(admin, outsider, "org_admin")
    product = await make_key(admin, org, "product")
    async with client_for(app, other) as client:
        assert (await client.get(path)).status_code == 404
        assert (await client.get(base, params={"key": key})).status_code == 404
        assert (await client.get(f"/v1/orgs/{outsider}/dead-letters")).json()["dead_letters"] == []
    async with client_for(app, product) as client:
        assert (await client.get(path)).status_code == 403

    # The CLI lists the same rows.
    cli_settings = app.settings.model_copy(update={"postgres_dsn": dsn})
    capsys.readouterr()
    assert await list_command(cli_settings, org, "unknown_member", 10) == 0
    out = [ln for ln in capsys.readouterr().out.splitlines() if f" {org} " in ln]
    assert len(out) == 1 and f" {org} unknown_member {app.settings.usage_topic}/" in out[0]


async def test_recording_is_idempotent_and_bounded(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    dsn = app.services.postgres_dsn
    letter = DeadLetter(
        key=org.encode(), value=b"x" * 20_000 + b"\x00", headers=[], topic=f"t-{org}",
        partition=0, offset=7, reason="invalid_json", message="not JSON",
    )  # fmt: skip
    unknown = DeadLetter(
        key=b"\xff bad key", value=b"[]", headers=[], topic=f"t-{org}", partition=0, offset=8,
        reason="invalid_schema", message="not an object",
    )  # fmt: skip
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        assert await record_dead_letters(pool, [letter, unknown]) == 1
        assert await record_dead_letters(pool, [letter]) == 1
        rows = await pool.fetch("SELECT * FROM dead_letters WHERE topic = $1", f"t-{org}")
        assert len(rows) == 1 and rows[0]["truncated"] is True
        assert len(rows[0]["event"].encode()) <= 16 * 1024
        # Rows past the retention are deleted as new ones come.
        await pool.execute(
            "UPDATE dead_letters SET created_at = now() - interval '31 days' WHERE topic = $1",
            f"t-{org}",
        )
        later = DeadLetter(
            key=org.encode(), value=b"{}", headers=[], topic=f"t-{org}", partition=0, offset=9,
            reason="invalid_schema", message="empty",
        )  # fmt: skip
        await record_dead_letters(pool, [later])
        offsets = await pool.fetch('SELECT "offset" FROM dead_letters WHERE topic = $1', f"t-{org}")
        assert [r["offset"] for r in offsets] == [9]
    finally:
        await pool.close()
