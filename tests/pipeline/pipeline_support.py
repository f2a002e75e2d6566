"""Shared pieces of the pipeline tests: a small world of orgs, members and grants set up in both
engines, event production, reading topics, and the end-of-test consistency check."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.dlq import REASON, header, scan_topic
from meter.engine.model import Ledger
from meter.engine.redis import RedisEngine
from meter.engine.types import (
    MICRO,
    Grant,
    Kind,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    UsageEvent,
)
from meter.settings import Settings
from meter.store import ms_to_datetime
from schemas.events import encode_event

DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class World:
    """Organizations, members and buckets, applied identically to Redis and the model."""

    now_ms: int
    orgs: list[OrgConfig] = field(default_factory=list)
    members: list[MemberConfig] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)

    @classmethod
    def build(cls, n_orgs: int, members_per_org: int, seed: int = 1) -> World:
        rnd = random.Random(seed)
        t = now_ms()
        world = cls(now_ms=t)
        for o in range(n_orgs):
            org_id = f"org-{o}"
            world.orgs.append(
                OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms=t - 3 * DAY_MS)
            )
            world.grants.append(
                Grant(
                    org_id,
                    f"{org_id}-shared",
                    Kind.SHARED,
                    40 * MICRO,
                    t - DAY_MS,
                    t + 90 * DAY_MS,
                    t - DAY_MS,
                )
            )
            for m in range(members_per_org):
                member_id = f"m-{m}"
                limit = 15 * MICRO if m % 3 == 0 else None
                world.members.append(MemberConfig(org_id, member_id, member_limit=limit))
                world.grants.append(
                    Grant(
                        org_id,
                        f"{org_id}-{member_id}-seat",
                        Kind.SEAT,
                        rnd.randint(2, 10) * MICRO,
                        t - DAY_MS,
                        t + 20 * DAY_MS,
                        t - DAY_MS,
                        member_id,
                    )
                )
        return world

    async def apply(self, engine: RedisEngine) -> None:
        """Put the world into Redis (each organization's config is its loss marker)."""
        for org in self.orgs:
            await engine.put_org(org)
        for member in self.members:
            await engine.put_member(member)
        for grant in self.grants:
            await engine.apply_grant(grant)

    async def store(self, dsn: str) -> None:
        """Write the world into PostgreSQL's administration tables, as the admin API would: the
        source a rebuild reads."""
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO plans (plan_id, name, period_kind) VALUES ('p', 'p', 'monthly')"
                    " ON CONFLICT DO NOTHING"
                )
                for org in self.orgs:
                    await conn.execute(
                        "INSERT INTO organizations (org_id, name, plan_id, billing_anchor, status,"
                        " grace_seconds) VALUES ($1, $1, 'p', $2, $3, $4)",
                        org.org_id, ms_to_datetime(org.anchor_ms), org.status.value,
                        org.grace_ms // 1000,
                    )  # fmt: skip
                for m in self.members:
                    await conn.execute(
                        "INSERT INTO members (org_id, member_id, seated, member_limit)"
                        " VALUES ($1, $2, $3, $4)",
                        m.org_id, m.member_id, m.seated, m.member_limit,
                    )  # fmt: skip
                for g in self.grants:
                    await conn.execute(
                        "INSERT INTO credit_grants (org_id, bucket_id, kind, member_id, amount,"
                        " valid_from, expires_at, granted_at) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                        " $8)",
                        g.org_id, g.bucket_id, g.kind.value, g.member_id, g.amount,
                        ms_to_datetime(g.valid_from_ms), ms_to_datetime(g.expires_at_ms),
                        ms_to_datetime(g.granted_at_ms),
                    )  # fmt: skip
        finally:
            await conn.close()

    def model(self) -> Ledger:
        ledger = Ledger()
        for org in self.orgs:
            ledger.put_org(org)
        for member in self.members:
            ledger.put_member(member)
        for grant in self.grants:
            ledger.apply_grant(grant)
        return ledger


@dataclass(frozen=True)
class Produced:
    key: str
    org_id: str
    member_id: str
    credits: int
    time_ms: int
    value: bytes


def make_events(
    world: World, n: int, *, seed: int = 2, source: str = "//test", prefix: str = "e"
) -> list[Produced]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        member = rnd.choice(world.members)
        credits = rnd.randint(1, 3_000_000)
        t = world.now_ms - rnd.randint(0, 60_000)
        value = encode_event(
            event_id=f"{prefix}-{i}",
            source=source,
            org_id=member.org_id,
            member_id=member.member_id,
            credits=credits,
            time_ms=t,
        )
        out.append(
            Produced(f"{source} {prefix}-{i}", member.org_id, member.member_id, credits, t, value)
        )
    return out


async def produce(
    bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes | None]]
) -> None:
    """Produce (key, value) pairs in order and wait for all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def consume_env(settings: Settings) -> dict[str, str]:
    """The environment of a `meter consume` process on the servers, topics and group of
    `settings` (JSON logs)."""
    env = dict(os.environ)
    env.update(
        METER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        METER_REDIS_URL=settings.redis_url or "",
        METER_POSTGRES_DSN=settings.postgres_dsn or "",
        METER_USAGE_TOPIC=settings.usage_topic,
        METER_DLQ_TOPIC=settings.dlq_topic,
        METER_CONSUMER_GROUP=settings.consumer_group,
        METER_CONSUMER_SESSION_TIMEOUT_MS=str(settings.consumer_session_timeout_ms),
        METER_LOG_FORMAT="json",
    )
    return env


async def produce_events(bootstrap: str, topic: str, events: Sequence[Produced]) -> None:
    await produce(bootstrap, topic, [(e.org_id.encode(), e.value) for e in events])


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(o) for tp, o in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` present now."""
    return [r async for r in scan_topic(bootstrap, topic)]


async def stored_offsets(dsn: str, group: str, topic: str) -> dict[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id=$1 AND topic=$2",
            group,
            topic,
        )
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def caught_up(bootstrap: str, dsn: str, group: str, topic: str) -> bool:
    ends = await end_offsets(bootstrap, topic)
    try:
        stored = await stored_offsets(dsn, group, topic)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return all(stored.get(p, 0) >= end for p, end in ends.items() if end > 0)


def replay_model(
    world: World, events: Sequence[Produced], at_ms: int
) -> tuple[Ledger, set[tuple[str, str]]]:
    """The reference model after settling `events` in order (per org); returns the ledger and the
    (organization, key) pairs it settled (unknown org/member excluded)."""
    ledger = world.model()
    settled: set[tuple[str, str]] = set()
    for e in events:
        ev = UsageEvent(e.key, e.org_id, e.member_id, e.credits, e.time_ms)
        (result,) = ledger.settle_batch(e.org_id, [ev], at_ms)
        if result.reason is None:
            settled.add((e.org_id, e.key))
    return ledger, settled


async def assert_consistent(
    world: World,
    engine: RedisEngine,
    dsn: str,
    events: Sequence[Produced],
    *,
    dead_keys: Sequence[str] = (),
    model: Ledger | None = None,
) -> None:
    """Redis == PostgreSQL == the reference model replayed over `events` (or `model`, a replay
    with corrections), every settleable event settled exactly once, and the PostgreSQL totals in
    step with the settlements that were not voided."""
    at = world.now_ms + 1_000
    ledger, settled = replay_model(world, events, at)
    if model is not None:
        ledger = model
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT org_id, key FROM settlements")
        keys = {(r[0], r[1]) for r in rows}
        lines = await conn.fetch(
            "SELECT org_id, bucket_id, sum(amount) FROM settlement_lines GROUP BY 1, 2"
        )
        returned = await conn.fetch(
            """SELECT v.org_id, r.item->>'bucket_id', sum((r.item->>'amount')::bigint)
               FROM voids v, jsonb_array_elements(v.returned) AS r(item) WHERE v.voided
               GROUP BY 1, 2"""
        )
        per_key = await conn.fetch(
            """SELECT s.key, s.credits, s.unfunded, coalesce(sum(l.amount), 0)
               FROM settlements s LEFT JOIN settlement_lines l USING (org_id, key)
               GROUP BY s.org_id, 1, 2, 3"""
        )
        totals = {
            table: await conn.fetchrow(
                f"SELECT sum(events), sum(credits), sum(seat + personal + shared + on_demand),"
                f" sum(unfunded) FROM {table}"
            )
            for table in (
                "member_period_totals",
                "group_period_totals",
                "org_period_totals",
                "member_daily_totals",
                "member_group_period_totals",
                "org_daily_totals",
            )
        }
        raw = await conn.fetchrow(
            """SELECT count(*), sum(credits), sum(credits - unfunded), sum(unfunded)
               FROM settlements s WHERE NOT EXISTS (SELECT 1 FROM voids v
                   WHERE v.voided AND v.event_key = s.key AND v.org_id = s.org_id)"""
        )
    finally:
        await conn.close()

    assert len(rows) == len(keys) == len(settled)
    assert keys == settled
    assert not {key for _, key in keys} & set(dead_keys)
    for key, credits, unfunded, drawn in per_key:
        assert credits == unfunded + drawn, key
    for table, row in totals.items():
        assert tuple(row) == tuple(raw), table

    left_pg: dict[str, Counter[str]] = defaultdict(Counter)
    for g in world.grants:
        left_pg[g.org_id][g.bucket_id] += g.amount
    for org_id, bucket_id, amount in lines:
        left_pg[org_id][bucket_id] -= amount
    for org_id, bucket_id, amount in returned:
        left_pg[org_id][bucket_id] += amount
    for org in world.orgs:
        redis_balances = await engine.balances(org.org_id, at)
        assert redis_balances == ledger.balances(org.org_id, at), org.org_id
        assert redis_balances == dict(left_pg[org.org_id]), org.org_id
        assert await engine.usage(org.org_id, at) == ledger.usage(org.org_id, at), org.org_id


def dlq_reasons(records: Sequence[Any]) -> Counter[str]:
    return Counter(header(r.headers, REASON) or "?" for r in records)
