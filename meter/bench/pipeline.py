"""`meter bench pipeline`: settle throughput and lag, Kafka -> Redis -> PostgreSQL.

1. Pre-produce N events over thousands of members to a fresh topic.
2. Raw consumption: read them all with a bare aiokafka consumer (the ceiling).
3. The full pipeline: one `SettleConsumer` in this process settles the same topic.
4. Lag: with the consumer caught up, offer events at a fixed rate; lag is `settled_at - time`
   of each settlement (produced -> visible in PostgreSQL).

Targets (DESIGN 5): >= 30,000 events/s, lag p99 <= 500 ms at 10,000 events/s, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.settle import ConsumerOptions, settling
from meter import alerts, metrics
from meter.engine.redis import RedisEngine
from meter.engine.types import MICRO, Grant, Kind, MemberConfig, OrgConfig, OrgStatus, PeriodKind
from meter.rebuild import new_epoch
from meter.settings import Settings
from meter.store import ms_to_datetime
from schemas.events import encode_event

if TYPE_CHECKING:
    from meter.cli import Handler

DAY_MS = 86_400_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _World:
    """Organizations with a shared pool and members with a seat bucket each, in PostgreSQL (so
    the alert triggers join real rows and a rebuild finds them) and in Redis."""

    def __init__(self, orgs: int, members: int) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.orgs = [f"b{self.run}-{o}" for o in range(orgs)]
        self.members = members
        self.plan = f"bench-{self.run}"
        self.member_limit = 100 * MICRO

    def _grants(self, org: str, t: int) -> list[Grant]:
        grants = [
            Grant(org, f"{org}-pool", Kind.SHARED, 10**9 * MICRO, t - DAY_MS, t + 90 * DAY_MS,
                  t - DAY_MS)
        ]  # fmt: skip
        for m in range(self.members):
            grants.append(
                Grant(org, f"{org}-m{m}-seat", Kind.SEAT, 3000 * MICRO, t - DAY_MS,
                      t + 30 * DAY_MS, t - DAY_MS, f"m{m}")
            )  # fmt: skip
        return grants

    async def apply(self, conn: asyncpg.Connection, engine: RedisEngine, t: int) -> None:
        anchor = ms_to_datetime(t - DAY_MS)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO plans (plan_id, name, period_kind, seat_credits,"
                " default_member_limit) VALUES ($1, $1, 'monthly', 0, $2)",
                self.plan,
                self.member_limit,
            )
            await conn.copy_records_to_table(
                "organizations",
                records=[(org, org, self.plan, anchor) for org in self.orgs],
                columns=("org_id", "name", "plan_id", "billing_anchor"),
            )
            await conn.copy_records_to_table(
                "members",
                records=[(org, f"m{m}", anchor) for org in self.orgs for m in range(self.members)],
                columns=("org_id", "member_id", "seated_since"),
            )
            await conn.copy_records_to_table(
                "credit_grants",
                records=[
                    (
                        g.org_id,
                        g.bucket_id,
                        g.kind.value,
                        g.member_id,
                        g.amount,
                        ms_to_datetime(g.valid_from_ms),
                        ms_to_datetime(g.expires_at_ms),
                        ms_to_datetime(g.granted_at_ms),
                    )
                    for org in self.orgs
                    for g in self._grants(org, t)
                ],
                columns=(
                    "org_id",
                    "bucket_id",
                    "kind",
                    "member_id",
                    "amount",
                    "valid_from",
                    "expires_at",
                    "granted_at",
                ),
            )
        for org in self.orgs:
            await engine.put_org(
                OrgConfig(
                    org,
                    OrgStatus.ACTIVE,
                    PeriodKind.MONTHLY,
                    anchor_ms=t - DAY_MS,
                    default_member_limit=self.member_limit,
                )
            )
            for m in range(self.members):
                await engine.put_member(MemberConfig(org, f"m{m}"))
            for grant in self._grants(org, t):
                await engine.apply_grant(grant)
        # Redis holds PostgreSQL's state, as after `meter rebuild`.
        await engine.set_epoch(new_epoch(t))

    def events(
        self, n: int, prefix: str, time_ms: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        orgs, members = self.orgs, self.members
        for i in range(n):
            org = orgs[i % len(orgs)]
            yield (
                org.encode(),
                encode_event(
                    event_id=f"{prefix}{i}",
                    source="//bench",
                    org_id=org,
                    member_id=f"m{(i // len(orgs)) % members}",
                    credits=250_000,
                    time_ms=_now_ms() if time_ms is None else time_ms,
                ),
            )


async def _produce(bootstrap: str, topic: str, items: Iterator[tuple[bytes, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    n = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in items:
            pending.append(await producer.send(topic, value=value, key=key))
            n += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


async def _raw_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 << 20,
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            seen += sum(len(r) for r in batch.values())
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def _settled_count(conn: asyncpg.Connection, group: str, topic: str) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id=$1 AND topic=$2",
        group,
        topic,
    )
    return int(value)


async def _wait_settled(conn: asyncpg.Connection, group: str, topic: str, target: int) -> None:
    while True:
        if await _settled_count(conn, group, topic) >= target:
            return
        await asyncio.sleep(0.05)


async def bench(settings: Settings, events: int, rate: int, lag_seconds: float) -> dict[str, Any]:
    """Run the benchmark against the servers of `settings` (filled in); returns the results."""
    from meter.migrate import migrate
    from meter.services import create_database, ensure_topics, with_database

    assert settings.kafka_bootstrap and settings.redis_url and settings.postgres_dsn
    bootstrap = settings.kafka_bootstrap
    name = f"meter_bench_{uuid.uuid4().hex[:8]}"
    await create_database(with_database(settings.postgres_dsn, "postgres"), name)
    dsn = with_database(settings.postgres_dsn, name)
    await migrate(dsn)
    topic = f"bench.usage.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {topic: settings.topic_partitions, f"{topic}.dlq": 1})
    run = settings.model_copy(
        update={
            "usage_topic": topic,
            "dlq_topic": f"{topic}.dlq",
            "postgres_dsn": dsn,
            "consumer_group": f"bench-{uuid.uuid4().hex[:6]}",
        }
    )
    client = aioredis.Redis.from_url(settings.redis_url)
    engine = RedisEngine(client)
    world = _World(orgs=100, members=40)
    t = _now_ms()
    setup = await asyncpg.connect(dsn)
    try:
        await world.apply(setup, engine, t)
    finally:
        await setup.close()
    print(f"producing {events} events ...", file=sys.stderr, flush=True)
    await _produce(bootstrap, topic, world.events(events, "pre", t))
    raw_rate = await _raw_consume(bootstrap, topic, events)
    print(f"raw consume: {raw_rate:,.0f} events/s", file=sys.stderr, flush=True)

    # The consumer exactly as `meter consume` runs it: epoch guard, metrics, alert publisher.
    stack = contextlib.AsyncExitStack()
    consumer = await stack.enter_async_context(settling(run, options=ConsumerOptions()))
    await stack.enter_async_context(metrics.metrics_server(run))
    await stack.enter_async_context(alerts.publishing(run))
    task = asyncio.create_task(consumer.run())
    conn = await asyncpg.connect(dsn)
    try:
        started: float | None = None
        while (done := await _settled_count(conn, run.consumer_group, topic)) < events:
            if started is None and done > 0:
                started, first, cpu = time.perf_counter(), done, _cpu_s()
            await asyncio.sleep(0.05)
        assert started is not None
        elapsed = time.perf_counter() - started
        rate_full = (events - first) / elapsed
        cpu_share = (_cpu_s() - cpu) / elapsed
        print(f"pipeline: {rate_full:,.0f} events/s", file=sys.stderr, flush=True)

        # Lag at a fixed offered rate.
        n_lag = int(rate * lag_seconds)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=1
        )
        await producer.start()
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        sent = 0
        t0 = time.perf_counter()
        try:
            while sent < n_lag:
                for key, value in world.events(per_tick, f"lag{sent}-"):
                    await producer.send(topic, value=value, key=key)
                sent += per_tick
                ahead = t0 + sent / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await producer.flush()
        finally:
            await producer.stop()
        await _wait_settled(conn, run.consumer_group, topic, events + sent)
        lags = await conn.fetch(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY"
            " extract(epoch FROM settled_at - event_time) * 1000) FROM settlements"
            " WHERE key LIKE '//bench lag%'"
        )
        p50, p99 = lags[0][0]
    finally:
        consumer.stop()
        await task
        await stack.aclose()
        await conn.close()
        await client.aclose()
    return {
        "events": events,
        "events_per_s": round(rate_full),
        "raw_consume_events_per_s": round(raw_rate),
        "ratio_to_raw": round(rate_full / raw_rate, 3),
        "offered_rate": rate,
        "lag_p50_ms": round(p50, 1),
        "lag_p99_ms": round(p99, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "consumer_cpu_share": round(cpu_share, 2),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000, help="offered rate for the lag test")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter bench pipeline` (register under the `bench` command)."""
    add_arguments(parser)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        async with provision(settings) as services:
            result = await bench(services.apply(settings), args.events, args.rate, args.lag_seconds)
        for key, value in result.items():
            print(f"{key:>26}: {value}")
        if args.json:
            print(orjson.dumps(result).decode())
        return 0

    return handle
