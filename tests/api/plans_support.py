"""Helpers of the plan scenario tests: a movable clock, events settled by the real consumer, the
period scheduler publishing to a billing topic of the test's own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from api.test_end_to_end import wait_for_settlement
from consumers.settle import ConsumerOptions, build_consumer
from meter.admin.clock import to_ms
from meter.admin.scheduler import PeriodScheduler, kafka_publish
from meter.api import App
from meter.engine.types import MICRO
from meter.money import parse_credits
from schemas.events import encode_event, event_key, format_time

DAY = 86_400_000


def real_now() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    return format_time(ms)


def ms_of(text: str) -> int:
    return to_ms(datetime.fromisoformat(text))


class Clock:
    """The app's clock, moved by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def use_clock(app: App, ms: int) -> Clock:
    clock = Clock(ms)
    app.clock = clock
    return clock


class Settler:
    """Posts usage events to the API and waits until the settlement consumer stored them."""

    def __init__(self, app: App, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.count = 0

    async def settle(
        self, org: str, member: str, credits: str, time_ms: int | None = None
    ) -> asyncpg.Record:
        self.count += 1
        event_id = f"ev-{uuid.uuid4().hex[:10]}"
        raw = encode_event(
            event_id=event_id, source="//scenario", org_id=org, member_id=member,
            credits=parse_credits(credits),
            time_ms=self.app.clock() if time_ms is None else time_ms,
        )  # fmt: skip
        r = await self.client.post(
            "/v1/events", content=raw, headers={"content-type": "application/cloudevents+json"}
        )
        assert r.status_code == 202, r.text
        return await wait_for_settlement(
            self.app.services.postgres_dsn, event_key("//scenario", event_id)
        )

    async def lines(self, key: str) -> list[tuple[str, str, int]]:
        rows = await self.app.pool.fetch(
            "SELECT kind, bucket_id, amount FROM settlement_lines WHERE key = $1", key
        )
        order = {"seat": 0, "personal": 1, "shared": 2, "on_demand": 3}
        return sorted(
            ((r["kind"], r["bucket_id"], r["amount"] // MICRO) for r in rows),
            key=lambda x: (order[x[0]], x[1]),
        )


@asynccontextmanager
async def settling(
    app: App, client: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> AsyncIterator[Settler]:
    """The real settlement consumer running on the app's usage topic."""
    settings = app.settings.model_copy(
        update={
            "postgres_dsn": app.services.postgres_dsn,
            "dlq_topic": await new_topic(partitions=1, prefix="plans-dlq"),
            "consumer_group": f"plans-{uuid.uuid4().hex[:8]}",
        }
    )
    consumer = build_consumer(settings, app.engine, options=ConsumerOptions(batch_max_wait_ms=10))
    task = asyncio.create_task(consumer.run())
    try:
        yield Settler(app, client)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def scheduler_for(app: App, new_topic: Callable[..., Awaitable[str]]) -> PeriodScheduler:
    """The period scheduler on the app's admin service, publishing to a new billing topic."""
    topic = await new_topic(partitions=1, prefix="billing")
    return PeriodScheduler(app.admin, kafka_publish(await app.producer()), topic)


async def read_topic(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    """The first `count` records of `topic`, decoded, with their keys under `_key`."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,  # (no group: no join to wait for)
    )  # fmt: skip
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 20
        while len(out) < count:
            assert time.monotonic() < deadline, f"only {len(out)} of {count} records on {topic}"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    event["_key"] = record.key.decode()
                    out.append(event)
    finally:
        await consumer.stop()
    return out


async def check(client: httpx.AsyncClient, org: str, member: str, credits: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/check", json={"org_id": org, "member_id": member, "credits": credits}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def post(client: httpx.AsyncClient, path: str, body: Any, status: int = 201) -> Any:
    r = await client.post(path, json=body)
    assert r.status_code == status, (path, r.text)
    return r.json()
