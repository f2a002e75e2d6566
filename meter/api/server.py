"""The API served by uvicorn as a task (httptools; uvloop, which every `meter` command runs on).

uvicorn writes a response's head and its body to the socket separately: two `send` system calls
per answer, which on the quota path cost more than the handler. `HttpProtocol` gives uvicorn a
transport that holds the head and sends it with the body in one call.

Slow clients (`HttpLimits`, from the `METER_HTTP_*` settings): uvicorn closes idle keep-alive
connections (and answers 503 beyond `limit_concurrency` when set), but waits forever for a
request that never finishes arriving. `HttpProtocol` gives each request a deadline: its line and
headers must be in within `header_timeout_s` of the connection opening (or of the request's first
byte on a reused connection), its body within `body_timeout_s` of the headers; a client that
trickles a byte at a time gains nothing. A connection past its deadline is dropped. A connection
accepted beyond `max_connections` makes room by dropping the connection that has waited longest
without a request in flight (still sending its head, or idle between requests); when every
connection has a request in flight, the new one is dropped instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meter.api.app import ServiceAddresses, build_app
from meter.settings import Settings

log = structlog.get_logger("meter.api")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever runs the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _HeldWrites:
    """A transport that holds a response head until the next write (the body, or its first
    chunk) and sends both in one call; `flush` sends a head still held. Interim (1xx) responses
    and everything else go out at once."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1":
            self._held = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How long a client may take and how many may connect, per API process."""

    header_timeout_s: float
    body_timeout_s: float
    keep_alive_s: int
    max_connections: int
    max_concurrency: int | None

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keep_alive_s=settings.http_keep_alive_s,
            max_connections=settings.http_max_connections,
            max_concurrency=settings.http_max_concurrency,
        )


DEFAULT_LIMITS = HttpLimits.of(Settings.model_construct())
"""The documented defaults (`Settings` without the environment)."""


class _Config(uvicorn.Config):
    """A uvicorn configuration that carries the limits to each connection's protocol, and the
    server's connections without a request in flight, oldest first."""

    limits: HttpLimits = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle: dict[HttpProtocol, None] = {}


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response leaving in one write, each request arriving
    within its deadline."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        if isinstance(config, _Config):
            self._limits, self._idle = config.limits, config.idle
        else:
            self._limits, self._idle = DEFAULT_LIMITS, {}
        self._deadline: asyncio.TimerHandle | None = None
        self._body_due: float | None = None
        """When the body must be complete; None while the headers are still due."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeldWrites(transport)  # type: ignore[assignment]
        if len(self.connections) > self._limits.max_connections:
            # Make room by dropping the connection that has waited longest without a request in
            # flight (a slow or idle client); when every one is busy, drop the new one.
            oldest = next(iter(self._idle), None)
            if oldest is None:
                transport.abort()
                return
            oldest.transport.abort()
            oldest._set_busy()
        self._set_idle()
        self._expect_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._set_busy()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._expect_request()

    def on_headers_complete(self) -> None:
        self._set_busy()
        super().on_headers_complete()
        self._body_due = self.loop.time() + self._limits.body_timeout_s
        deadline = self._deadline
        if deadline is not None and deadline.when() > self._body_due:
            deadline.cancel()
            self._deadline = self.loop.call_at(self._body_due, self._timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._set_idle()

    def _set_idle(self) -> None:
        """No request in flight: the connection may be dropped to make room for a new one."""
        self._idle.pop(self, None)
        self._idle[self] = None

    def _set_busy(self) -> None:
        self._idle.pop(self, None)

    def _expect_request(self) -> None:
        """Arm the deadline of a request's line and headers."""
        self._body_due = None
        self._deadline = self.loop.call_later(self._limits.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._body_due = None

    def _timed_out(self) -> None:
        self._deadline = None
        due = self._body_due
        if due is not None and due > self.loop.time():
            # The headers came in time; the body has until its own deadline.
            self._deadline = self.loop.call_at(due, self._timed_out)
            return
        self.transport.abort()


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    *,
    lifespan: Literal["on", "off"] = "on",
    limits: HttpLimits = DEFAULT_LIMITS,
    **options: Any,
) -> uvicorn.Config:
    """How the API is served: httptools with one write per response and a deadline per request,
    `limits` on connections, no access log, no per-request headers of uvicorn's own, no
    proxy-header rewriting."""
    config = _Config(
        app,
        host=host,
        port=port,
        http=HttpProtocol,
        lifespan=lifespan,
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_concurrency,
        **options,
    )
    config.limits = limits
    return config


def local_admin_settings(settings: Settings) -> Settings:
    """In local mode without `METER_ADMIN_TOKEN`, a fresh admin key for this run."""
    if settings.admin_token is not None or settings.env != "local":
        return settings
    return settings.model_copy(update={"admin_token": "mk_local_" + secrets.token_urlsafe(24)})


async def serve(settings: Settings, services: ServiceAddresses) -> None:
    """Run the HTTP API on `settings.api_host:api_port` until cancelled (a `meter run` component).

    In local mode without a configured admin token, one is generated and printed.
    """
    generated = settings.admin_token is None
    settings = local_admin_settings(settings)
    app = build_app(settings, services)
    config = uvicorn_config(
        app, settings.api_host, settings.api_port, limits=HttpLimits.of(settings)
    )
    server = _Server(config)
    url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"  api       {url}  (OpenAPI: {url}/openapi.json)", flush=True)
    if generated and settings.admin_token is not None:
        print(f"  admin key {settings.admin_token}  (local run only)", flush=True)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # Stop accepting, finish requests in flight, run the lifespan shutdown, then stop.
        server.should_exit = True
        await task
        raise
