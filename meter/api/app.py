"""The API application: resources, lifecycle and the ASGI entry point.

`build_app(settings, services)` returns an `App`, a plain ASGI callable. Its lifespan (or
`async with app.running()` in tests) opens the Redis client, the PostgreSQL pool and the engine,
starts the reconciler, and closes everything at shutdown; the Kafka producer starts on the first
ingested event so checks keep working while Kafka is away.

Checks see a period's seats from its first instant whatever the scheduler does: the first check
or reservation of an organization in a period (per process) makes sure its seats are issued
(`App.issue_seats`, `meter.admin.issuance.SeatPeriods`), waiting at most `seats_wait_s` for it;
every other check pays a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asyncpg.exceptions._base import DataError as ArgumentError  # type: ignore[import-untyped]

from meter import kafka, metrics
from meter.admin import AdminService, run_reconciler
from meter.admin.clock import now_ms
from meter.admin.issuance import SeatPeriods
from meter.admin.reconcile import repair
from meter.api import ui
from meter.api.http import (
    Access,
    Call,
    Receive,
    Response,
    Router,
    Scope_,
    Send,
    check_query,
    error_response,
    read_body,
    send_response,
)
from meter.api.resp import PipelinedRedis, supports
from meter.auth import KeyVerifier
from meter.engine.redis import RedisEngine
from meter.engine.types import EngineInputError
from meter.errors import (
    InvalidInput,
    MeterError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from meter.logging import log_request
from meter.rating.book import CardCache
from meter.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from meter.redis_client import connect as redis_connect
from meter.settings import Settings
from meter.supervise import cancel_and_wait
from meter.ui.assets import is_ui

log = structlog.get_logger("meter.api")


class ServiceAddresses(Protocol):
    """Where the servers are (`meter.services.Services` is one)."""

    @property
    def redis_url(self) -> str: ...

    @property
    def postgres_dsn(self) -> str: ...

    @property
    def kafka_bootstrap(self) -> str: ...


REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}").fullmatch


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's `X-Request-Id` when it is 1 to 128 id characters, else a new random one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _REQUEST_ID(value) is not None:
            return value.decode()
    return secrets.token_hex(8)


INTERNAL_ERROR = Response(
    500, b'{"error":{"code":"internal","message":"internal error","details":[]}}'
)

POSTGRES_TIMEOUT_S = 5.0
SEATS_WAIT_S = 0.5
"""How long a check waits for its organization's seats of a new period to be issued (once per
organization and period) before answering from Redis as it is; the issuance goes on."""
"""Deadline of each PostgreSQL statement and connection attempt of the API (client side, and
`statement_timeout` on the server): a frozen server is a 503 after it, never a hang."""

_POSTGRES_DOWN = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: the connection failed or is gone
    asyncpg.OperatorInterventionError,  # 57: canceled (statement_timeout), shutting down
    asyncpg.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.InterfaceError,  # the pool or the connection is closed
)


def edge_error(exc: Exception) -> MeterError | None:
    """The typed error that an exception of a dependency stands for, by class; None for a bug.

    Text or a value PostgreSQL refuses (SQLSTATE class 22, or an argument asyncpg cannot encode)
    is bad input, 422: validation refuses it first, this is the last line. A dependency that is
    down, frozen or overloaded is 503 `unavailable`: the caller may retry."""
    if isinstance(exc, asyncpg.DataError | ArgumentError):
        return InvalidInput("a value in the request cannot be stored", code="invalid_input")
    if isinstance(exc, _POSTGRES_DOWN):
        return Unavailable("PostgreSQL is not available; retry later")
    if isinstance(exc, REDIS_UNAVAILABLE):
        return Unavailable("Redis is not available; retry later")
    if isinstance(exc, KafkaError):
        return Unavailable("Kafka is not available; retry later")
    if isinstance(exc, OSError):  # refused connections, and every timeout (asyncio's included)
        return Unavailable("a dependency did not answer in time; retry later")
    return None


class App:
    """The ASGI application and everything its handlers use."""

    def __init__(
        self,
        settings: Settings,
        services: ServiceAddresses,
        *,
        reconcile_interval_s: float = 60.0,
        key_cache_ttl_s: float = 5.0,
        postgres_timeout_s: float = POSTGRES_TIMEOUT_S,
        seats_wait_s: float = SEATS_WAIT_S,
    ) -> None:
        from meter.api.routes import ROUTES

        self.settings = settings
        self.services = services
        self.router = Router(ROUTES)
        self.reconcile_interval_s = reconcile_interval_s
        self.key_cache_ttl_s = key_cache_ttl_s
        self.postgres_timeout_s = postgres_timeout_s
        self.request_log_all = settings.request_log == "all"
        """One `request` log line per request; else only for failures (`METER_REQUEST_LOG`)."""
        self.seats_wait_s = seats_wait_s
        self.clock = now_ms
        self.cards = CardCache(check_interval_s=1.0)
        """Rate cards for checks and reservations in usage terms (`meter.api.rating`)."""
        self._redis: aioredis.Redis | None = None
        self._pool: asyncpg.Pool | None = None
        self._fast_redis: PipelinedRedis | None = None
        self._engine: RedisEngine | None = None
        self._admin: AdminService | None = None
        self._seats: SeatPeriods | None = None
        self._issuing: set[asyncio.Task[None]] = set()
        self._keys: KeyVerifier | None = None
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- resources ------------------------------------------------------------------------

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "app not started"
        return self._redis

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "app not started"
        return self._pool

    @property
    def engine(self) -> RedisEngine:
        assert self._engine is not None, "app not started"
        return self._engine

    @property
    def admin(self) -> AdminService:
        assert self._admin is not None, "app not started"
        return self._admin

    @property
    def seats(self) -> SeatPeriods:
        assert self._seats is not None, "app not started"
        return self._seats

    async def issue_seats(self, org_id: str, now: int) -> None:
        """The first check of `org_id` in a new period (for this process): make sure the
        period's seats are issued, waiting at most `seats_wait_s`. A failure (PostgreSQL away)
        is logged and the check answered from Redis as it is; the organization is looked at
        again `SeatPeriods.retry_ms` later. Never raises."""
        task = asyncio.create_task(self.seats.ensure(org_id, (now,)), name=org_id)
        self._issuing.add(task)
        task.add_done_callback(self._issued)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.seats_wait_s)
        except Exception:
            if not task.done():
                self.seats.defer(org_id)  # the issuance goes on; checks do not wait for it
                log.warning("seat_issuance_slow", org_id=org_id, waited_s=self.seats_wait_s)

    def _issued(self, task: asyncio.Task[None]) -> None:
        self._issuing.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            org_id = task.get_name()
            self.seats.defer(org_id)
            log.warning("seat_issuance_failed", org_id=org_id, error=repr(exc))

    @property
    def keys(self) -> KeyVerifier:
        assert self._keys is not None, "app not started"
        return self._keys

    async def producer(self) -> AIOKafkaProducer:
        """The Kafka producer, started on first use (acks from all in-sync replicas)."""
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.services.kafka_bootstrap,
                    enable_idempotence=False,
                    acks="all",
                    linger_ms=1,
                    request_timeout_ms=10_000,
                    **kafka.client_options(),
                )
                try:
                    await asyncio.wait_for(producer.start(), self.settings.produce_timeout_s)
                except (KafkaError, OSError) as exc:  # OSError: asyncio's timeouts included
                    await producer.stop()
                    raise Unavailable(f"Kafka is not reachable: {exc!r}") from exc
                except BaseException:  # cancelled (the caller's deadline): leave nothing running
                    await asyncio.shield(producer.stop())
                    raise
                self._producer = producer
        return self._producer

    async def startup(self) -> None:
        redis_timeout = self.settings.redis_timeout_s
        self._redis = redis_connect(
            self.services.redis_url,
            socket_timeout=redis_timeout,
            socket_connect_timeout=redis_timeout,
        )
        timeout = self.postgres_timeout_s
        self._pool = await asyncpg.create_pool(
            self.services.postgres_dsn,
            min_size=1,
            max_size=8,
            timeout=timeout,
            command_timeout=timeout,
            server_settings={"statement_timeout": str(int(timeout * 1000))},
        )
        url = self.services.redis_url
        if supports(url):
            # The engine only sends FCALL / FCALL_RO / FUNCTION LOAD: pipelined on one connection.
            self._fast_redis = PipelinedRedis(url, timeout_s=timeout, connect_timeout_s=timeout)
            self._engine = RedisEngine(
                cast(aioredis.Redis, self._fast_redis), encoding=self.settings.member_encoding
            )
        else:
            self._engine = RedisEngine(self._redis, encoding=self.settings.member_encoding)
        await self._engine.load_scripts()
        self._admin = AdminService(
            self._pool, self._engine, clock=lambda: self.clock(), redis=self._redis
        )
        await self._admin.install_presets()
        self._seats = SeatPeriods(self._admin)
        self._keys = KeyVerifier(
            self._pool,
            self.settings.admin_token,
            self.key_cache_ttl_s,
            miss_rate=self.settings.auth_miss_rate,
            miss_burst=self.settings.auth_miss_burst,
        )
        # Organizations Redis lost (a new or emptied server, a shard that restarted empty):
        # rebuild them before serving, rather than answer 503 until the reconciler's first pass.
        await repair(self._admin)
        self._tasks.append(
            asyncio.create_task(run_reconciler(self._admin, self.reconcile_interval_s))
        )
        # What exists now lives as long as the process: out of the collector's way, so a full
        # collection under load does not walk it (a pause of several ms otherwise).
        gc.freeze()

    async def shutdown(self) -> None:
        await cancel_and_wait(self._issuing)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._fast_redis is not None:
            await self._fast_redis.aclose()
            self._fast_redis = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        await self.startup()
        try:
            yield self
        finally:
            await self.shutdown()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("api startup failed", exc_info=True)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope_, receive: Receive, send: Send) -> None:
        started = time.perf_counter_ns()
        method: str = scope["method"]
        path: str = scope["path"]
        request_id = request_id_of(scope["headers"])
        cause: str | None = None
        try:
            response = await self._dispatch(scope, receive, method, path)
        except MeterError as exc:
            response = error_response(exc)
        except EngineInputError as exc:
            response = error_response(InvalidInput(str(exc), code="invalid_input"))
        except Exception as exc:
            mapped = edge_error(exc)
            if mapped is None:
                log.error(
                    "unhandled error", method=method, path=path, request_id=request_id,
                    exc_info=True,
                )  # fmt: skip
                response = INTERNAL_ERROR
            else:
                cause = type(exc).__name__
                response = error_response(mapped)
        await send_response(send, response, ((REQUEST_ID_HEADER, request_id.encode()),))
        elapsed_ns = time.perf_counter_ns() - started
        route = scope.get("meter.route", metrics.UNMATCHED)
        metrics.observe_request(method, route, response.status, elapsed_ns / 1e9)
        failed = response.status >= 500 or cause is not None
        if failed or self.request_log_all:
            log_request(
                failed,
                method=method,
                route=route,
                status=response.status,
                us=elapsed_ns // 1000,
                request_id=request_id,
                key_id=scope.get("meter.key_id"),
                error=cause,
            )

    async def _dispatch(self, scope: Scope_, receive: Receive, method: str, path: str) -> Response:
        try:
            route, params = self.router.match(method, path)
        except NotFound:
            if not is_ui(path):
                raise
            scope["meter.route"] = ui.ROUTE
            return ui.serve(method, path, scope["headers"])
        scope["meter.route"] = route.path
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query: bytes = scope.get("query_string", b"")
        call = Call(self, method, path, query, headers, params)
        if route.access != Access.PUBLIC:
            principal = await self.keys.verify(headers.get("authorization"))
            scope["meter.key_id"] = principal.key_id
            call.principal = principal
            if route.access == Access.ADMIN:
                principal.require_platform(*route.scopes)
            elif route.access == Access.ORG:
                principal.require_org(params["org_id"], *route.scopes)
        if query:
            check_query(query)
        if method in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > route.max_body:
                raise PayloadTooLarge(f"request body is larger than {route.max_body} bytes")
            call.body = await read_body(receive, route.max_body)
            if call.body:
                _check_content_type(headers.get("content-type"), route.content_types)
        return await route.handler(call)


def _check_content_type(value: str | None, allowed: tuple[str, ...]) -> None:
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted here; use {' or '.join(allowed)}"
        )


def build_app(settings: Settings, services: ServiceAddresses, **options: Any) -> App:
    """The ASGI application of the HTTP API (start it with its lifespan, or `app.running()`)."""
    return App(settings, services, **options)
