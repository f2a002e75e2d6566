"""Serving the API with uvicorn (httptools, uvloop when the loop is uvloop's), as a task."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator

import structlog
import uvicorn

from meter.api.app import ServiceAddresses, build_app
from meter.settings import Settings

log = structlog.get_logger("meter.api")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever runs the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
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
