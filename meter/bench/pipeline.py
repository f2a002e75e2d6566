"""`meter bench pipeline`: settle throughput and lag, Kafka -> Redis -> PostgreSQL.

1. Pre-produce N events over thousands of members to a fresh topic.
2. Raw consumption: read them all with a bare aiokafka consumer (the ceiling).
3. The full pipeline: one consumer in this process, built as `meter consume` builds it (epoch
   guard, metrics, alert publisher, over a world held in PostgreSQL and Redis), settles the same
   topic; events/s and the process's CPU share over that phase.
4. Lag: with the consumer caught up, another process offers events at a fixed rate and watches
   the stored offsets; an event's lag runs from its time to the first moment its partition's
   stored offset (committed with its settlement) is past it: produced -> visible in PostgreSQL.

With `--usage-events N`, N events carrying usage (a model and token counts, rated by the plan's
rate card, `meter.rating`) follow the credit events on the same topic, and the pipeline's rate is
reported for each kind: the cost of rating (target: at most 10 % below credit events).

Targets (DESIGN 5): >= 60,000 events/s (reported beside raw consumption of the same topic),
lag p99 <= 250 ms at 10,000 events/s, RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis, RedisCluster

from consumers.settle import ConsumerOptions, settling
from meter import alerts, metrics
from meter.bench.cpu import server_cpu_s
from meter.engine.periods import period_at
from meter.engine.redis import RedisEngine
from meter.engine.types import MICRO, Grant, Kind, MemberConfig, OrgConfig, OrgStatus, PeriodKind
from meter.plans.store import INSERT_SEAT_PERIOD
from meter.rating.book import ensure_first_card
from meter.rating.dimensions import Usage
from meter.redis_client import connect as redis_connect
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


class _ServerClocks:
    """CPU seconds used so far by the consumer (this process), PostgreSQL and Redis. Redis
    reports its own (`INFO cpu`, wherever it runs). PostgreSQL's is read from the processes of
    its server when the bench reaches it on this machine (a loopback address or a socket),
    else it is None. Either server's figure is the whole server's: another database or client
    using it meanwhile counts too."""

    def __init__(self, conn: asyncpg.Connection, client: Redis | RedisCluster) -> None:
        self._conn, self._client = conn, client
        self._postmaster: int | None = None

    async def find_postgres(self) -> None:
        row = await self._conn.fetchrow("SELECT pg_backend_pid(), inet_server_addr()")
        address = row[1]
        if address is not None and not address.is_loopback:
            return
        try:
            backend = psutil.Process(row[0])
            postmaster = psutil.Process(backend.ppid())
            if "postgres" in backend.name() and "postgres" in postmaster.name():
                self._postmaster = postmaster.pid
        except psutil.Error:
            pass

    async def read(self) -> tuple[float, float | None, float]:
        if isinstance(self._client, RedisCluster):
            answers = await self._client.info("cpu", target_nodes=RedisCluster.PRIMARIES)
            nodes = list(answers.values())
        else:
            nodes = [await self._client.info("cpu")]
        redis_s = sum(float(n["used_cpu_user"]) + float(n["used_cpu_sys"]) for n in nodes)
        postgres_s = server_cpu_s(self._postmaster) if self._postmaster is not None else None
        return _cpu_s(), postgres_s, redis_s

    @staticmethod
    def us_per_event(
        start: tuple[float, float | None, float], end: tuple[float, float | None, float], n: int
    ) -> dict[str, float | None]:
        """The CPU each used between two readings, in microseconds an event."""
        names = ("consumer", "postgres", "redis")
        out: dict[str, float | None] = {}
        for name, a, b in zip(names, start, end, strict=True):
            out[f"{name}_cpu_us_per_event"] = (
                None if a is None or b is None else round((b - a) / max(1, n) * 1e6, 1)
            )
        return out


class _World:
    """Organizations with a shared pool and members with a seat bucket each, in PostgreSQL (so
    the alert triggers join real rows and a rebuild finds them) and in Redis."""

    def __init__(self, orgs: int, members: int) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.orgs = [f"b{self.run}-{o}" for o in range(orgs)]
        self.members = members
        self.plan = f"bench-{self.run}"
        self.member_limit = 100 * MICRO

    def _config(self, org: str, t: int) -> OrgConfig:
        return OrgConfig(
            org,
            OrgStatus.ACTIVE,
            PeriodKind.MONTHLY,
            anchor_ms=t - DAY_MS,
            default_member_limit=self.member_limit,
        )

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
            # The period's seats are recorded issued, as the scheduler leaves them at its
            # start: the settle rate is measured in a period under way. (Lazy issuance at a
            # period's first event, `meter.admin.issuance`, is measured in meter/plans/README.)
            period = period_at(self._config(self.orgs[0], t), t)
            await conn.executemany(
                INSERT_SEAT_PERIOD,
                [(org, ms_to_datetime(period.start_ms), ms_to_datetime(period.end_ms))
                 for org in self.orgs],
            )  # fmt: skip
        for org in self.orgs:
            await engine.put_org(self._config(org, t))
            for m in range(self.members):
                await engine.put_member(MemberConfig(org, f"m{m}"))
            for grant in self._grants(org, t):
                await engine.apply_grant(grant)
        # Usage events are rated by this card: 1,000 input and 200 output tokens cost 0.25.
        card = {
            "unknown_model": "error",
            "models": {
                "bench-*": {
                    "input_tokens": {"micros_per_million": 150_000_000},
                    "cached_input_tokens": {"micros_per_million": 15_000_000},
                    "output_tokens": {"micros_per_million": 500_000_000},
                }
            },
        }
        await ensure_first_card(conn, self.plan, card, "bench")

    def events(
        self, n: int, prefix: str, time_ms: int | None = None, *, usage: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        orgs, members = self.orgs, self.members
        for i in range(n):
            # Token counts vary per event, as they do for real (500..1499 in, 100..299 out).
            rated = Usage(
                "bench-large-1",
                {"input_tokens": 500 + i * 7919 % 1000, "output_tokens": 100 + i * 104729 % 200},
            )
            org = orgs[i % len(orgs)]
            yield (
                org.encode(),
                encode_event(
                    event_id=f"{prefix}{i}",
                    source="//bench",
                    org_id=org,
                    member_id=f"m{(i // len(orgs)) % members}",
                    credits=None if usage else 250_000,
                    usage=rated if usage else None,
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


@dataclass(frozen=True)
class _Offer:
    bootstrap: str
    topic: str
    dsn: str
    group: str
    world: _World
    rate: int
    events: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _offer_and_watch(offer: _Offer) -> list[float]:
    """In a process of its own: produce `offer.events` events at `offer.rate`, and the lag of
    each (ms from its time to the moment the stored offsets show it written)."""
    return asyncio.run(_offer_lags(offer))


async def _offer_lags(offer: _Offer) -> list[float]:
    producer = AIOKafkaProducer(
        bootstrap_servers=offer.bootstrap, enable_idempotence=False, linger_ms=1
    )
    conn = await asyncpg.connect(offer.dsn)
    seen: dict[int, int] = {}
    visible: list[tuple[float, dict[int, int]]] = []
    target: dict[int, int] = {}
    """Per partition, the offset after the last event offered (set once all are sent)."""

    async def watch() -> None:
        while True:
            rows = await conn.fetch(
                "SELECT partition, next_offset FROM consumer_offsets"
                " WHERE group_id = $1 AND topic = $2",
                offer.group,
                offer.topic,
            )
            now = _now_ms()
            current = {int(r[0]): int(r[1]) for r in rows}
            if current != seen:
                seen.update(current)
                visible.append((now, dict(current)))
            if target and all(seen.get(p, 0) >= o for p, o in target.items()):
                return
            await asyncio.sleep(0.005)

    sent: list[tuple[int, int, int]] = []
    await producer.start()
    watcher = asyncio.create_task(watch())
    try:
        tick = 0.01
        per_tick = max(1, int(offer.rate * tick))
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        t0 = time.perf_counter()
        n = 0
        while n < offer.events:
            at = _now_ms()
            for key, value in offer.world.events(per_tick, f"lag{n}-", at):
                futures.append((at, await producer.send(offer.topic, value=value, key=key)))
            n += per_tick
            ahead = t0 + n / offer.rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await producer.flush()
        for at, future in futures:
            meta = await future
            sent.append((at, meta.partition, meta.offset))
        for _, partition, offset in sent:
            target[partition] = max(target.get(partition, 0), offset + 1)
        await watcher
    finally:
        watcher.cancel()
        await producer.stop()
        await conn.close()
    lags: list[float] = []
    for at, partition, offset in sent:
        # The first observation whose offset for the partition passed the event.
        lo, hi = 0, len(visible) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if visible[mid][1].get(partition, 0) > offset:
                hi = mid
            else:
                lo = mid + 1
        lags.append(float(visible[lo][0] - at))
    return lags


async def bench(
    settings: Settings, events: int, rate: int, lag_seconds: float, usage_events: int = 0
) -> dict[str, Any]:
    """Run the benchmark against the servers of `settings` (filled in), in a database of its own
    (dropped afterwards); returns the results."""
    from meter.services import create_database, drop_database, with_database

    assert settings.kafka_bootstrap and settings.redis_url and settings.postgres_dsn
    name = f"meter_bench_{uuid.uuid4().hex[:8]}"
    admin_dsn = with_database(settings.postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    try:
        return await _bench(
            settings,
            with_database(settings.postgres_dsn, name),
            events,
            rate,
            lag_seconds,
            usage_events,
        )
    finally:
        await drop_database(admin_dsn, name)


async def _bench(
    settings: Settings, dsn: str, events: int, rate: int, lag_seconds: float, usage_events: int
) -> dict[str, Any]:
    """The benchmark over the fresh database `dsn`."""
    from meter.migrate import migrate
    from meter.services import ensure_topics

    assert settings.kafka_bootstrap and settings.redis_url
    bootstrap = settings.kafka_bootstrap
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
    client = redis_connect(settings.redis_url)
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
    if usage_events:
        print(f"producing {usage_events} usage events ...", file=sys.stderr, flush=True)
        await _produce(bootstrap, topic, world.events(usage_events, "use", t, usage=True))
    raw_rate = await _raw_consume(bootstrap, topic, events + usage_events)
    print(f"raw consume: {raw_rate:,.0f} events/s", file=sys.stderr, flush=True)

    # The consumer exactly as `meter consume` runs it: epoch guard, metrics, alert publisher.
    stack = contextlib.AsyncExitStack()
    consumer = await stack.enter_async_context(settling(run, options=ConsumerOptions()))
    await stack.enter_async_context(metrics.metrics_server(run))
    await stack.enter_async_context(alerts.publishing(run))
    task = asyncio.create_task(consumer.run())
    conn = await asyncpg.connect(dsn)
    try:
        clocks = _ServerClocks(conn, client)
        await clocks.find_postgres()
        started: float | None = None
        while (done := await _settled_count(conn, run.consumer_group, topic)) < events:
            if started is None and done > 0:
                started, first, cpu = time.perf_counter(), done, _cpu_s()
                servers = await clocks.read()
            await asyncio.sleep(0.05)
        assert started is not None
        elapsed = time.perf_counter() - started
        rate_full = (done - first) / elapsed
        cpu_share = (_cpu_s() - cpu) / elapsed
        cpu_by_server = clocks.us_per_event(servers, await clocks.read(), done - first)
        print(f"pipeline: {rate_full:,.0f} events/s", file=sys.stderr, flush=True)
        cpu_per_event = (_cpu_s() - cpu) / max(1, done - first)
        rate_usage: float | None = None
        if usage_events:
            # The usage events follow the credit events in every partition.
            mark, at, cpu = done, time.perf_counter(), _cpu_s()
            total = events + usage_events
            while True:
                done = await _settled_count(conn, run.consumer_group, topic)
                if done >= total:
                    break
                await asyncio.sleep(0.05)
            rate_usage = (done - mark) / (time.perf_counter() - at)
            usage_cpu_per_event = (_cpu_s() - cpu) / max(1, done - mark)
            print(f"pipeline, usage events: {rate_usage:,.0f} events/s", file=sys.stderr)

        # Lag at a fixed offered rate, offered and watched from another process (as producers
        # are): produced -> visible in PostgreSQL, i.e. its partition's stored offset passed it.
        n_lag = int(rate * lag_seconds)
        args = _Offer(bootstrap, topic, dsn, run.consumer_group, world, rate, n_lag)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            lags = await asyncio.get_running_loop().run_in_executor(pool, _offer_and_watch, args)
        p50, p99 = _percentile(lags, 0.5), _percentile(lags, 0.99)
    finally:
        consumer.stop()
        await task
        await stack.aclose()
        await conn.close()
        await client.aclose()
    usage_result: dict[str, Any] = {}
    if rate_usage is not None:
        usage_result = {
            "usage_events": usage_events,
            "usage_events_per_s": round(rate_usage),
            "usage_to_credit_ratio": round(rate_usage / rate_full, 3),
            "credit_cpu_us_per_event": round(cpu_per_event * 1e6, 1),
            "usage_cpu_us_per_event": round(usage_cpu_per_event * 1e6, 1),
        }
    return {
        "events": events,
        "events_per_s": round(rate_full),
        **usage_result,
        "raw_consume_events_per_s": round(raw_rate),
        "ratio_to_raw": round(rate_full / raw_rate, 3),
        "offered_rate": rate,
        "lag_p50_ms": round(p50, 1),
        "lag_p99_ms": round(p99, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "consumer_cpu_share": round(cpu_share, 2),
        **cpu_by_server,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000, help="offered rate for the lag test")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument(
        "--usage-events",
        type=int,
        default=0,
        help="also settle this many usage events (rated by a card) and report their rate",
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter bench pipeline` (register under the `bench` command)."""
    add_arguments(parser)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        async with provision(settings) as services:
            result = await bench(
                services.apply(settings),
                args.events,
                args.rate,
                args.lag_seconds,
                args.usage_events,
            )
        for key, value in result.items():
            print(f"{key:>26}: {value}")
        if args.json:
            print(orjson.dumps(result).decode())
        return 0

    return handle
