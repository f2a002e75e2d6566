"""Serving the API with uvicorn (httptools, uvloop when the loop is uvloop's), as a task.

uvicorn writes a response's head and its body to the socket separately: two `send` system calls
per answer, which on the quota path cost more than the handler. `HttpProtocol` gives uvicorn a
transport that holds writes until the response is complete (or, for a streamed body, the loop's
next turn) and sends them in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
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
    """A transport whose writes are joined, sent by `flush` or at the loop's next turn."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response leaving in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeldWrites(transport, self.loop)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def uvicorn_config(
    app: Any, host: str, port: int, *, lifespan: Literal["on", "off"] = "on", **options: Any
) -> uvicorn.Config:
    """How the API is served: httptools with one write per response, no access log, no
    per-request headers of uvicorn's own, no proxy-header rewriting."""
    return uvicorn.Config(
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
        **options,
    )


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
    server = _Server(uvicorn_config(app, settings.api_host, settings.api_port))
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
