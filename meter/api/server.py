"""Serving the API with uvicorn (httptools, uvloop when the loop is uvloop's), as a task.

uvicorn writes a response's head and its body to the socket separately: two `send` system calls
per answer, which on the quota path cost more than the handler. `HttpProtocol` gives uvicorn a
transport that holds the head and sends it with the body in one call.
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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response leaving in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeldWrites(transport)  # type: ignore[assignment]

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
