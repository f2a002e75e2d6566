"""Alerts fire once per subject, period and threshold, and reach the alerts topic.

Settlements are written by the real settlement store into a migrated database; the publisher
sends the outbox to a real topic, read back with a real Kafka consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from meter.alerts import AlertPublisher
from meter.engine.types import MICRO, Kind, Line, Period, Settlement
from meter.store import SettlementStore, ms_to_datetime

DAY = 86_400_000
NOW = time.time_ns() // 1_000_000
P1 = Period(NOW - DAY, NOW + DAY)
P2 = Period(NOW + DAY, NOW + 3 * DAY)

SETUP = """
INSERT INTO plans (plan_id, name, period_kind, limit_policy) VALUES ('p', 'P', 'rolling', 'all');
INSERT INTO organizations (org_id, name, plan_id, billing_anchor) VALUES ('o', 'O', 'p', now());
INSERT INTO billing_groups (org_id, billing_group_id, name, period_limit)
VALUES ('o', 'eng', 'Engineering', 20000000), ('o', 'ops', 'Ops', NULL);
INSERT INTO members (org_id, member_id, member_limit, billing_group_id)
VALUES ('o', 'alice', 10000000, 'eng'), ('o', 'bob', NULL, 'eng'), ('o', 'carol', 0, 'ops');
INSERT INTO credit_grants (org_id, bucket_id, kind, amount, valid_from, expires_at)
VALUES ('o', 'pool', 'shared', 10000000, now() - interval '1 day', now() + interval '30 days'),
       ('o', 'old', 'shared', 50000000, now() - interval '90 days', now() - interval '1 day');
"""


def usage(key: str, member: str, credits: int, kind: Kind, period: Period = P1) -> Settlement:
    amount = credits * MICRO
    return Settlement(
        key=key,
        org_id="o",
        member_id=member,
        credits=amount,
        time_ms=period.start_ms + 1000,
        period=period,
        billing_group="ops" if member == "carol" else "eng",
        lines=(Line("pool" if kind == Kind.SHARED else f"b-{member}", kind, amount),),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def store(migrated_dsn: str) -> AsyncIterator[SettlementStore]:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(SETUP)
    finally:
        await conn.close()
    settlements = SettlementStore(migrated_dsn)
    await settlements.open()
    try:
        yield settlements
    finally:
        await settlements.close()


async def write(store: SettlementStore, *settlements: Settlement) -> int:
    return await store.write_batch("g", "t", [(s, None) for s in settlements], [])


async def recorded(dsn: str) -> list[tuple[str, str, int, int, int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT subject_kind, subject_id, period_start, threshold, amount, reference "
            "FROM alerts ORDER BY alert_id"
        )
    finally:
        await conn.close()
    p2 = ms_to_datetime(P2.start_ms)
    return [(r[0], r[1], 2 if r[2] == p2 else 1, r[3], r[4], r[5]) for r in rows]


async def read_alerts(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while len(records) < count and time.monotonic() < deadline:
            polled = await consumer.getmany(timeout_ms=200)
            for recs in polled.values():
                records.extend(recs)
        # Nothing beyond what is expected arrives.
        polled = await consumer.getmany(timeout_ms=300)
        records.extend(r for recs in polled.values() for r in recs)
    finally:
        await consumer.stop()
    return records


async def test_each_threshold_fires_once(
    store: SettlementStore,
    migrated_dsn: str,
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    first = [usage("k1", "alice", 8, Kind.PERSONAL), usage("k2", "carol", 5, Kind.PERSONAL)]
    assert await write(store, *first) == 2
    # alice at 8 of 10: 80%. carol has a limit of 0 and ops none: no alert.
    assert await recorded(migrated_dsn) == [("member", "alice", 1, 80, 8 * MICRO, 10 * MICRO)]

    # The same batch again (a retry, a replay) changes nothing and fires nothing.
    assert await write(store, *first) == 0
    assert len(await recorded(migrated_dsn)) == 1

    # alice reaches 100%; eng reaches 16 of 20 (80%); the pool has 4 of 10 left (40%).
    await write(store, usage("k3", "alice", 2, Kind.PERSONAL), usage("k4", "bob", 6, Kind.SHARED))
    # The pool falls to 1 of 10 (10%); eng at 19 of 20 already fired its 80%.
    await write(store, usage("k5", "bob", 3, Kind.SHARED))
    # alice past her limit fires nothing new for her; eng reaches 20 of 20.
    await write(store, usage("k6", "alice", 1, Kind.PERSONAL))
    # Next period: totals start at 0; alice at 9 of 10 fires 80% again, for that period.
    await write(store, usage("k7", "alice", 9, Kind.PERSONAL, P2))

    expected = [
        ("member", "alice", 1, 80, 8 * MICRO, 10 * MICRO),
        ("member", "alice", 1, 100, 10 * MICRO, 10 * MICRO),
        ("billing_group", "eng", 1, 80, 16 * MICRO, 20 * MICRO),
        ("shared_pool", "", 1, 20, 1 * MICRO, 10 * MICRO),
        ("billing_group", "eng", 1, 100, 20 * MICRO, 20 * MICRO),
        ("member", "alice", 2, 80, 9 * MICRO, 10 * MICRO),
    ]
    assert sorted(await recorded(migrated_dsn)) == sorted(expected)

    topic = await new_topic(partitions=1, prefix="alerts")
    publisher = AlertPublisher(migrated_dsn, kafka_bootstrap, topic)
    try:
        assert await publisher.publish_pending() == len(expected)
        assert await publisher.publish_pending() == 0
    finally:
        await publisher._reset()
    records = await read_alerts(kafka_bootstrap, topic, len(expected))
    assert len(records) == len(expected)
    events = [orjson.loads(r.value) for r in records]
    assert all(r.key == b"o" for r in records)
    assert len({e["id"] for e in events}) == len(expected)
    first_event = events[0]
    assert first_event["specversion"] == "1.0" and first_event["source"] == "meter/alerts"
    assert first_event["type"] == "meter.alert.member_limit"
    assert first_event["subject"] == "alice"
    assert first_event["data"] == {
        "org_id": "o",
        "kind": "member_limit",
        "member_id": "alice",
        "threshold_percent": 80,
        "used": "8",
        "limit": "10",
        "period_start": events[0]["data"]["period_start"],
        "period_end": events[0]["data"]["period_end"],
    }
    pool = next(e for e in events if e["type"] == "meter.alert.shared_pool_low")
    assert pool["subject"] == "o"
    assert pool["data"]["remaining"] == "1" and pool["data"]["granted"] == "10"
    assert pool["data"]["threshold_percent"] == 20
    group = [e for e in events if e["type"] == "meter.alert.billing_group_limit"]
    assert [(e["data"]["billing_group_id"], e["data"]["threshold_percent"]) for e in group] == [
        ("eng", 80),
        ("eng", 100),
    ]


async def test_publisher_wakes_on_crossing(
    store: SettlementStore,
    migrated_dsn: str,
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    topic = await new_topic(partitions=1, prefix="alerts")
    # Polling alone would take a minute: the alert comes through NOTIFY.
    publisher = AlertPublisher(migrated_dsn, kafka_bootstrap, topic, poll_interval_s=60.0)
    task = asyncio.create_task(publisher.run())
    try:
        await write(store, usage("w1", "alice", 10, Kind.PERSONAL))
        records = await read_alerts(kafka_bootstrap, topic, 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    thresholds = sorted(orjson.loads(r.value)["data"]["threshold_percent"] for r in records)
    assert thresholds == [80, 100]


async def test_voids_give_shared_credits_back(store: SettlementStore, migrated_dsn: str) -> None:
    await write(store, usage("v1", "bob", 7, Kind.SHARED))
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(
            "INSERT INTO voids (org_id, event_key, voided, returned) VALUES ('o', 'v1', true, "
            """'[{"bucket_id": "pool", "kind": "shared", "amount": 7000000}]')"""
        )
        assert await conn.fetchval("SELECT drawn FROM shared_bucket_drawn") == 0
        await write(store, usage("v2", "bob", 7, Kind.SHARED))
        # 3 left of 10 (30%): the void's credits count, so the pool is not low.
        assert (
            await conn.fetchval("SELECT count(*) FROM alerts WHERE subject_kind = 'shared_pool'")
            == 0
        )
    finally:
        await conn.close()
