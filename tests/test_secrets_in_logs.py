"""No secret in any log line: error and outage paths run for real, their logs grepped for the
tokens and passwords they handled."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import structlog
from api.support import Addresses

from meter import cli
from meter.admin import scheduler
from meter.api import App, build_app
from meter.api.http import Access, Call, Response, Route, Router
from meter.api.routes import ROUTES
from meter.logging import configure_logging
from meter.migrate import migrate
from meter.services import PostgresServer
from meter.settings import Settings

ADMIN_TOKEN = "admin-token-" + secrets.token_hex(12)
DB_PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """JSON logs of structlog and the standard library, captured; restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream, secrets=[ADMIN_TOKEN], cache_loggers=False)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    """Every line logged so far, each checked to be one JSON object."""
    out = stream.getvalue().splitlines()
    for line in out:
        assert isinstance(orjson.loads(line), dict), line
    return out


async def wait_for_line(stream: io.StringIO, *needles: str, deadline_s: float = 30.0) -> None:
    """Wait until one of `needles` was logged."""
    limit = time.monotonic() + deadline_s
    while not any(needle in stream.getvalue() for needle in needles):
        assert time.monotonic() < limit, f"none of {needles} logged:\n{stream.getvalue()}"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="session")
async def private_dsn(private_postgres: PostgresServer) -> str:
    dsn = private_postgres.dsn("meter")
    await migrate(dsn)
    return dsn


@pytest_asyncio.fixture(loop_scope="session")
async def app_on_private(
    settings: Settings, private_dsn: str, private_postgres: PostgresServer
) -> AsyncIterator[App]:
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    configured = settings.model_copy(update={"admin_token": ADMIN_TOKEN})
    app = build_app(
        configured,
        Addresses(settings.redis_url, private_dsn, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
    )
    async with app.running():
        try:
            yield app
        finally:
            if not private_postgres.running:
                await private_postgres.start()


def client(app: App, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://meter",
        headers={"authorization": f"Bearer {token}"},
    )


async def asgi_post(app: App, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """POST `body` to `app` as an ASGI server would; returns the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_no_token_logged_while_postgres_is_down(
    logs: io.StringIO, app_on_private: App, private_postgres: PostgresServer
) -> None:
    await private_postgres.stop()
    tokens = ["mk_" + secrets.token_urlsafe(32) for _ in range(5)]
    tokens.append("never-seen-" + secrets.token_hex(16))
    statuses: dict[str, set[int]] = {}
    for token in tokens:
        async with client(app_on_private, token) as c:
            r = await c.post("/v1/check", json={"org_id": "acme", "member_id": "m", "credits": "1"})
            statuses.setdefault(token, set()).add(r.status_code)
            r = await c.get("/v1/orgs/acme/members")
            statuses.setdefault(token, set()).add(r.status_code)
    # Well-formed keys need PostgreSQL (503); a malformed one is refused without a lookup (401).
    assert all(s >= 500 for token in tokens[:5] for s in statuses[token]), statuses
    assert statuses[tokens[5]] == {401}, statuses
    logged = lines(logs)
    assert any("exception" in orjson.loads(line) for line in logged), logged
    for token in tokens:
        assert not [line for line in logged if token in line]
        assert not [line for line in logged if token[8:30] in line]


async def test_no_token_and_no_headers_logged_on_a_500(
    logs: io.StringIO, app_on_private: App
) -> None:
    async def broken(call: Call) -> Response:
        raise RuntimeError("a bug in a handler")

    app_on_private.router = Router(
        [*ROUTES, Route("POST", "/v1/test-broken", broken, "always fails", Access.ADMIN)]
    )
    # Straight to the ASGI app, as uvicorn calls it, headers in a client's order.
    headers = [
        (b"host", b"meter"),
        (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
        (b"x-api-key", ("mk_" + secrets.token_urlsafe(32)).encode()),
        (b"cookie", b"s=private"),
        (b"content-type", b"application/json"),
        (b"content-length", b"7"),
    ]
    status = await asgi_post(app_on_private, "/v1/test-broken", headers, b'{"x":1}')
    assert status == 500
    logged = lines(logs)
    assert any("a bug in a handler" in line for line in logged), logged
    for line in logged:
        assert ADMIN_TOKEN[12:28] not in line
        assert "authorization" not in line.lower()
        assert "x-api-key" not in line and "private" not in line


async def test_database_password_not_logged_when_a_component_fails(
    logs: io.StringIO, settings: Settings, private_dsn: str, private_postgres: PostgresServer
) -> None:
    """The scheduler component cannot reach PostgreSQL (stopped) through a DSN with a password;
    `meter run`'s supervision logs the failure, asyncpg's connection frames included."""
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    dsn = private_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    assert DB_PASSWORD in dsn
    await private_postgres.stop()
    addresses = Addresses(settings.redis_url, dsn, settings.kafka_bootstrap)
    run = asyncio.create_task(
        cli._run_components([scheduler.run_component], settings, addresses)  # type: ignore[arg-type]
    )
    try:
        await wait_for_line(logs, "component_failed", "component failed")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await private_postgres.start()
    logged = lines(logs)
    assert not [line for line in logged if DB_PASSWORD in line]
    structlog.get_logger("t").warning("connecting", dsn=dsn, redis=f"redis://:{DB_PASSWORD}@r:1")
    logging.getLogger("asyncpg").warning("cannot reach %s", dsn)
    logged = lines(logs)
    assert any("postgres:***@" in line for line in logged), logged
    assert not [line for line in logged if DB_PASSWORD in line]
