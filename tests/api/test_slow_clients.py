"""Slow and abusive clients: requests that never finish arriving are dropped at their deadline,
connections beyond the cap are refused, and unknown keys cannot make PostgreSQL do one lookup each.

The server is uvicorn with `meter.api.server.HttpProtocol` on a real socket, with short limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import uvicorn

from api.support import ADMIN_TOKEN, client_for, make_key, make_org
from meter.api import App
from meter.api.server import HttpLimits, uvicorn_config
from meter.auth import KeyVerifier
from meter.errors import RateLimited, Unauthenticated

LIMITS = HttpLimits(
    header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1, max_connections=400,
    max_concurrency=380,
)  # fmt: skip
DEADLINE_S = 15.0
"""How long a test waits for the server to drop what it must drop (far above the limits)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _serve(app: App, limits: HttpLimits) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn_config(
        app, "127.0.0.1", _free_port(), lifespan="off", limits=limits, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        assert not task.done(), "the server stopped"
    try:
        yield server
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def served(app: App) -> AsyncIterator[int]:
    async with _serve(app, LIMITS) as server:
        yield server.config.port


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.01)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def _held(port: int, first: bytes, then: Callable[[], bytes | None]) -> float:
    """Open a connection, send `first`, keep sending what `then` gives every 0.2 s (nothing when
    None); return how long the server kept the connection open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        if first:
            writer.write(first)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                more = then()
                if more is not None:
                    writer.write(more)
                    await writer.drain()
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
            if not data:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    return time.monotonic() - opened


HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
POST_HEAD = (
    b"POST /v1/check HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
)


async def test_slow_clients_are_dropped_while_others_are_served(served: int) -> None:
    kinds: list[tuple[str, bytes, Callable[[], bytes | None]]] = [
        ("silent", b"", lambda: None),
        ("half head", HALF_HEAD, lambda: None),
        ("trickled head", HALF_HEAD + b"X-Slow: ", lambda: b"a"),
        ("half body", POST_HEAD, lambda: None),
    ]
    tasks = {
        asyncio.create_task(_held(served, first, then)): name
        for name, first, then in kinds
        for _ in range(75)
    }
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served}") as client:
        r = await client.get("/healthz")
        assert r.status_code == 200, r.text
    done, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
    for task in pending:
        task.cancel()  # the client gives up: its socket closes
    still_open = collections.Counter(tasks[t] for t in pending)
    assert not still_open, f"connections still open after {DEADLINE_S} s: {still_open}"
    for name, _, _ in kinds:
        times = sorted(t.result() for t in done if tasks[t] == name)
        print(f"{name}: held {times[0]:.2f}-{times[-1]:.2f} s")


async def test_idle_keep_alive_connections_are_closed(served: int) -> None:
    held = await _held(served, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", lambda: None)
    assert held < DEADLINE_S


async def test_connections_beyond_the_cap_make_room_or_are_refused(app: App) -> None:
    limits = HttpLimits(
        header_timeout_s=600.0, body_timeout_s=600.0, keep_alive_s=600, max_connections=20,
        max_concurrency=1000,
    )  # fmt: skip
    async with _serve(app, limits) as server:
        port = server.config.port
        connections = server.server_state.connections

        # Twenty silent connections fill the cap: a new client is served all the same, and the
        # connection that waited longest without a request makes room.
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        await _until(lambda: len(connections) == 20, "twenty connections accepted")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/healthz")
            assert r.status_code == 200, r.text
        assert await _closed_by_server(silent[0][0]), "the oldest silent connection was kept"
        for _, writer in silent:
            writer.close()
        await _until(lambda: not connections, "the silent connections closed")

        # Twenty requests in flight (bodies still to come) fill the cap: none is dropped for a
        # newcomer, which is refused instead.
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in busy:
            writer.write(POST_HEAD)
        await _until(
            lambda: len(connections) == 20 and not server.config.idle, "twenty requests in flight"
        )
        try:
            newcomer, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HALF_HEAD)
            assert await _closed_by_server(newcomer), "a connection beyond the cap was kept"
            writer.close()
            assert len(connections) == 20
        finally:
            for _, writer in busy:
                writer.close()


class CountingPool:
    """The real pool, counting the key lookups that reach PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.lookups = 0

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.lookups += 1
        return await self.pool.fetchrow(query, *args)


def random_token() -> str:
    return "mk_" + secrets.token_urlsafe(32)


async def test_unknown_tokens_are_rationed(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    good = await make_key(admin, org, "product")
    pool = CountingPool(app.pool)
    verifier = KeyVerifier(pool, ADMIN_TOKEN, miss_rate=10.0, miss_burst=50)

    async def attempt(token: str) -> str:
        try:
            await verifier.verify(f"Bearer {token}")
        except Unauthenticated:
            return "401"
        except RateLimited:
            return "429"
        return "ok"

    malformed = ["mk_" + secrets.token_hex(8), secrets.token_urlsafe(32), "x" * 46]
    outcomes = await asyncio.gather(*(attempt(t) for t in malformed * 300))
    assert set(outcomes) == {"401"} and pool.lookups == 0

    started = time.monotonic()
    outcomes = await asyncio.gather(*(attempt(random_token()) for _ in range(1000)))
    elapsed = time.monotonic() - started
    assert set(outcomes) <= {"401", "429"}
    bound = 50 + 10.0 * elapsed + 1
    assert pool.lookups <= bound, (pool.lookups, elapsed)
    print(f"1,000 random tokens: {pool.lookups} lookups in {elapsed:.2f} s, bound {bound:.0f}")

    # The budget refills: a real key is verified again (and cached) once it has.
    deadline = time.monotonic() + DEADLINE_S
    while await attempt(good) != "ok":
        assert time.monotonic() < deadline, "the budget never refilled"
        await asyncio.sleep(0.1)
    before = pool.lookups
    assert await attempt(good) == "ok" and pool.lookups == before


async def test_unknown_tokens_over_http_answer_401_or_429(app: App) -> None:
    async def attempt() -> tuple[int, str]:
        async with client_for(app, random_token()) as client:
            r = await client.get("/v1/plans")
        return r.status_code, r.json()["error"]["code"]

    answers = await asyncio.gather(*(attempt() for _ in range(300)))
    assert set(answers) == {(401, "unauthenticated"), (429, "key_lookups_throttled")}
