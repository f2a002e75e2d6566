"""Prometheus metrics of the API and the settlement consumer (one registry per process).

Metric names and labels are listed in the README ("Metrics and alerts"). No label ever carries an
organization, member or any other unbounded value: labels are route templates, endpoints, reason
codes, topics and partitions.

The API serves `REGISTRY` at `GET /metrics`; `meter consume` serves it on its own small HTTP
server when `METER_METRICS_PORT` is set (`metrics_server`), with `GET /livez` (the process
answers) and `GET /readyz` (503 while `meter.health.HEALTH` reports a problem, such as a consumer
that makes no progress). Under `meter run` both live in one
process and share the registry.

Hot paths only increment counters and observe histograms through children prepared in advance
(a dictionary lookup, no `.labels()` call). The live-holds gauge is read from Redis when scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from meter.engine.redis import org_key
from meter.engine.types import CheckResult, Reason
from meter.health import HEALTH

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped]
    import redis.asyncio as aioredis

    from meter.settings import Settings

log = structlog.get_logger("meter.metrics")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the text exposition format."""

_FAST = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- API ------------------------------------------------------------------------------------------

HTTP_DURATION = Histogram(
    "meter_http_request_duration_seconds",
    "Time from request start to the response sent, per route template",
    ["method", "route"],
    buckets=_FAST,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "meter_http_requests_total",
    "HTTP requests answered, per route template and status code",
    ["method", "route", "status"],
    registry=REGISTRY,
)
CHECKS = Counter(
    "meter_checks_total",
    "Quota checks and reservations answered, by outcome (allowed, or the reason code)",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
RELEASES = Counter(
    "meter_releases_total",
    "Hold releases, by whether a live hold was released",
    ["released"],
    registry=REGISTRY,
)
INGESTED = Counter(
    "meter_ingest_events_total",
    "Events received on POST /v1/events, by outcome (accepted, or the error code)",
    ["outcome"],
    registry=REGISTRY,
)
LIVE_HOLDS = Gauge(
    "meter_live_holds",
    "Reservations currently held (not expired, released or consumed), read from Redis",
    registry=REGISTRY,
)

UNMATCHED = "unmatched"
"""Route label of requests that matched no route."""

_CHECK_CHILDREN: dict[tuple[str, Reason | None], Any] = {
    (endpoint, reason): CHECKS.labels(endpoint, "allowed" if reason is None else reason.value)
    for endpoint in ("check", "reserve")
    for reason in (None, *Reason)
}
_RELEASE_CHILDREN = {True: RELEASES.labels("true"), False: RELEASES.labels("false")}
_HTTP_CHILDREN: dict[tuple[str, str], tuple[Any, dict[int, Any]]] = {}


def count_check(endpoint: str, result: CheckResult) -> None:
    """Count one answer of `/v1/check` (`endpoint="check"`) or `/v1/reserve` ("reserve")."""
    _CHECK_CHILDREN[endpoint, result.reason].inc()


def count_release(released: bool) -> None:
    _RELEASE_CHILDREN[released].inc()


def count_ingest(outcome: str, n: int = 1) -> None:
    """Count `n` ingested events with `outcome`: "accepted" or an error code."""
    if n:
        INGESTED.labels(outcome).inc(n)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Record one answered request. `route` is the route's template (never the raw path)."""
    children = _HTTP_CHILDREN.get((method, route))
    if children is None:
        children = _HTTP_CHILDREN[method, route] = (HTTP_DURATION.labels(method, route), {})
    histogram, by_status = children
    histogram.observe(seconds)
    counter = by_status.get(status)
    if counter is None:
        counter = by_status[status] = HTTP_REQUESTS.labels(method, route, str(status))
    counter.inc()


ORG_IDS = "SELECT org_id FROM organizations"


def hold_expiry_key(org_id: str) -> str:
    """The engine's sorted set of an organization's live holds, scored by expiry (epoch ms);
    see the Redis layout in meter/engine/lua/lib.lua."""
    return org_key(org_id)[:-1] + "hx"


async def refresh_live_holds(
    pool: asyncpg.Pool, redis: aioredis.Redis, now_ms: int, *, chunk: int = 1000
) -> int:
    """Set `meter_live_holds` to the holds expiring after `now_ms`, over every organization:
    one pipelined `ZCOUNT` per organization, `chunk` per round trip. Returns the count."""
    orgs = [r[0] for r in await pool.fetch(ORG_IDS)]
    total = 0
    low = f"({now_ms}"
    for i in range(0, len(orgs), chunk):
        pipe = redis.pipeline(transaction=False)
        for org_id in orgs[i : i + chunk]:
            pipe.zcount(hold_expiry_key(org_id), low, "+inf")
        total += sum(int(n) for n in await pipe.execute())
    LIVE_HOLDS.set(total)
    return total


# -- consumer -------------------------------------------------------------------------------------

SETTLED = Counter(
    "meter_events_settled_total",
    "Settlements written to PostgreSQL by the consumer (new ones only, not duplicates)",
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "meter_events_dead_lettered_total",
    "Records sent to the dead-letter topic, by reason code",
    ["reason"],
    registry=REGISTRY,
)
DEAD_LETTERS_TRUNCATED = Counter(
    "meter_dead_letters_truncated_total",
    "Dead letters sent truncated because the producer refused the record as it is (too large)",
    registry=REGISTRY,
)
STALLED = Gauge(
    "meter_consumer_stalled_seconds",
    "Seconds since the consumer last wrote a batch while records wait (0 when none wait)",
    registry=REGISTRY,
)
OFFSET_RESETS = Counter(
    "meter_consumer_offset_resets_total",
    "Stored offsets found outside their partition's log and handled by METER_OFFSET_RESET",
    ["topic", "where", "policy"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "meter_consumer_batch_records",
    "Records per consumer batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
    registry=REGISTRY,
)
ENGINE_SECONDS = Histogram(
    "meter_consumer_engine_seconds",
    "Time one batch spends in the engine (Redis settle scripts, every organization)",
    buckets=_SLOW,
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "meter_consumer_store_seconds",
    "Time one batch's PostgreSQL transaction takes (settlements, totals, offsets)",
    buckets=_SLOW,
    registry=REGISTRY,
)
LAG = Gauge(
    "meter_consumer_lag",
    "Records in the partition after the consumer's position (high watermark - position)",
    ["topic", "partition"],
    registry=REGISTRY,
)

_lag_children: dict[tuple[str, int], Any] = {}


class _Watermarks(Protocol):
    def assignment(self) -> set[Any]: ...

    def highwater(self, partition: Any) -> int | None: ...


def consumer_positions(consumer: _Watermarks, topic: str, positions: Mapping[int, int]) -> None:
    """Set `meter_consumer_lag` for the partitions of `topic` the consumer holds, `positions`
    being partition -> next offset it reads; partitions no longer held leave the gauge.
    `consumer` is the `AIOKafkaConsumer` (its high watermarks come with each fetch)."""
    from aiokafka import TopicPartition

    assigned = consumer.assignment()
    for partition, position in positions.items():
        tp = TopicPartition(topic, partition)
        if tp not in assigned:
            continue
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        child = _lag_children.get((topic, partition))
        if child is None:
            child = _lag_children[topic, partition] = LAG.labels(topic, str(partition))
        child.set(max(0, highwater - position))
    for gone in [k for k in _lag_children if k[0] == topic and k[1] not in positions]:
        del _lag_children[gone]
        LAG.remove(gone[0], str(gone[1]))


def batch_settled(records: int, engine_s: float, dead_reasons: Iterable[str]) -> None:
    """A batch went through the engine: its size, the engine time, its dead letters' reasons."""
    BATCH_SIZE.observe(records)
    ENGINE_SECONDS.observe(engine_s)
    for reason in dead_reasons:
        DEAD_LETTERED.labels(reason).inc()


def dead_letters_truncated(n: int) -> None:
    """`n` dead letters of a batch were sent truncated."""
    if n:
        DEAD_LETTERS_TRUNCATED.inc(n)


def consumer_stalled(seconds: float) -> None:
    """The consumer has written nothing for `seconds` while records wait (0: progressing)."""
    STALLED.set(seconds)


def offset_reset(topic: str, where: str, policy: str) -> None:
    """A stored offset was `where` (`beyond_end`, `before_beginning`) of its partition's log."""
    OFFSET_RESETS.labels(topic, where, policy).inc()


def batch_written(settled: int, store_s: float) -> None:
    """A batch's PostgreSQL transaction committed with `settled` new settlements."""
    STORE_SECONDS.observe(store_s)
    SETTLED.inc(settled)


# -- exposition -----------------------------------------------------------------------------------


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


async def _metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path, readable = scope["path"], scope["method"] in ("GET", "HEAD")
    if path == "/metrics" and readable:
        status, body, media = 200, exposition(), CONTENT_TYPE.encode()
    elif path == "/livez" and readable:
        status, body, media = 200, b'{"status":"ok"}', b"application/json"
    elif path == "/readyz" and readable:
        problems = HEALTH.problems()
        status = 503 if problems else 200
        answer = {"status": "unavailable" if problems else "ok", "checks": problems}
        body, media = orjson.dumps(answer), b"application/json"
    else:
        status, body, media = 404, b"not found\n", b"text/plain"
    headers = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever runs the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_metrics(host: str, port: int) -> None:
    """Serve `GET /metrics` on `host:port` until cancelled."""
    sock = _listen(host, port)
    try:
        await _serve(sock)
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket: connections queue from now on, before the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _serve(sock: socket.socket) -> None:
    config = uvicorn.Config(
        _metrics_app,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise


@contextlib.asynccontextmanager
async def metrics_server(settings: Settings) -> AsyncIterator[None]:
    """While inside: `GET /metrics`, `GET /livez` and `GET /readyz` (503 while `HEALTH` reports
    a problem) on `api_host:metrics_port`, when `metrics_port` is set.
    The port is listening when this enters (a port in use raises `OSError` here)."""
    if settings.metrics_port is None:
        yield
        return
    sock = _listen(settings.api_host, settings.metrics_port)
    task = asyncio.create_task(_serve(sock))
    log.info("metrics_serving", host=settings.api_host, port=settings.metrics_port)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
