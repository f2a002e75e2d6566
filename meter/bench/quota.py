"""`meter bench quota [--json]`: the quota hot path of one API process, measured over HTTP.

The API runs in a subprocess (one uvicorn worker: uvloop, httptools) against real Redis and
PostgreSQL; this process is the load generator: raw HTTP/1.1 keep-alive connections on asyncio
protocols, far cheaper per request than the server. Measured, each for `--seconds`:

- checks/s at saturation (`--connections` connections, each sending its next request as soon as
  the previous answer arrives), and check latency p50/p99 at a fixed 1,000 requests/s (requests
  are sent on schedule whatever the previous answers did: an open loop);
- the same for reserve+release pairs: saturation in pairs/s, latency of the reserve requests at a
  fixed 1,000 requests/s (500 pairs/s).

Targets (DESIGN 5): >= 5,000 checks/s; p50 <= 0.5 ms and p99 <= 2 ms at 1,000 checks/s.
With `--json` the last line is one JSON object with `check_per_s`, `check_p50_ms`,
`check_p99_ms`, `reserve_release_per_s`, `reserve_p50_ms`, `reserve_p99_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

ADMIN_TOKEN = "bench-admin-" + "0" * 16
MEMBERS = 200
FIXED_RATE = 1000


# -- load generator -------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if b"\r\n" in head[at:] else None])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def http_post(path: str, body: bytes, token: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


Op = Callable[[_Conn, int], Awaitable[float]]
"""Sends request number n on a connection; returns the latency (s) of the measured request."""


@dataclass
class Result:
    per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


class Load:
    def __init__(self, port: int, token: str, org_id: str) -> None:
        self.port = port
        self.token = token
        self.org_id = org_id
        self.errors = 0

    async def connect(self, n: int) -> list[_Conn]:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(n):
            _, proto = await loop.create_connection(_Conn, "127.0.0.1", self.port)
            conns.append(proto)
        return conns

    def _send(self, conn: _Conn, path: str, doc: dict[str, Any]) -> Awaitable[int]:
        return conn.request(http_post(path, orjson.dumps(doc), self.token))

    async def check(self, conn: _Conn, n: int) -> float:
        doc = {"org_id": self.org_id, "member_id": f"m{n % MEMBERS}", "credits": "0.5"}
        started = time.perf_counter()
        status = await self._send(conn, "/v1/check", doc)
        elapsed = time.perf_counter() - started
        if status != 200:
            self.errors += 1
        return elapsed

    async def reserve_release(self, conn: _Conn, n: int) -> float:
        rid = f"r{n}-{uuid.uuid4().hex[:6]}"
        doc = {"org_id": self.org_id, "member_id": f"m{n % MEMBERS}", "credits": "0.5",
               "reservation_id": rid}  # fmt: skip
        started = time.perf_counter()
        status = await self._send(conn, "/v1/reserve", doc)
        elapsed = time.perf_counter() - started
        release = await self._send(
            conn, "/v1/release", {"org_id": self.org_id, "reservation_id": rid}
        )
        if status != 200 or release != 200:
            self.errors += 1
        return elapsed

    async def saturate(self, op: Op, connections: int, seconds: float) -> float:
        """Operations per second with every connection busy all the time."""
        conns = await self.connect(connections)
        done = 0
        end = time.perf_counter() + seconds

        async def worker(conn: _Conn, first: int) -> None:
            nonlocal done
            n = first
            while time.perf_counter() < end:
                await op(conn, n)
                n += connections
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        for c in conns:
            assert c.transport is not None
            c.transport.close()
        return done / elapsed

    async def fixed_rate(self, op: Op, per_s: int, seconds: float) -> list[float]:
        """Latencies of operations started on a fixed schedule of `per_s` per second."""
        conns = await self.connect(32)
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        for conn in conns:
            idle.put_nowait(conn)
        latencies: list[float] = []
        pending: set[asyncio.Task[None]] = set()

        async def one(conn: _Conn, n: int) -> None:
            latencies.append(await op(conn, n))
            idle.put_nowait(conn)

        started = time.perf_counter()
        total = int(per_s * seconds)
        for n in range(total):
            delay = started + n / per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(await idle.get(), n))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        for c in conns:
            assert c.transport is not None
            c.transport.close()
        return latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- the API under test ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_ready(port: int, proc: asyncio.subprocess.Process, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the API process exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start listening") from None
            await asyncio.sleep(0.05)


async def _admin(port: int, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = orjson.dumps(body)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + raw
    )
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head[9:12])
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {payload[:200]!r}")
    out: dict[str, Any] = orjson.loads(payload) if payload else {}
    return out


async def _setup(port: int) -> tuple[str, str]:
    """A plan, an org with `MEMBERS` members and a large shared pool; a product key."""
    suffix = uuid.uuid4().hex[:8]
    plan, org = f"bench-{suffix}", f"bench-{suffix}"
    await _admin(port, "POST", "/v1/plans", {"plan_id": plan, "name": "bench"})
    await _admin(port, "POST", "/v1/orgs", {"org_id": org, "name": "bench", "plan_id": plan})
    for i in range(MEMBERS):
        await _admin(port, "POST", f"/v1/orgs/{org}/members", {"member_id": f"m{i}"})
    await _admin(
        port, "POST", f"/v1/orgs/{org}/grants",
        {"kind": "shared", "amount": "1000000000", "expires_at": "2099-01-01T00:00:00Z"},
    )  # fmt: skip
    key = await _admin(port, "POST", f"/v1/orgs/{org}/keys", {"scope": "product"})
    return org, str(key["token"])


async def _forget_org(redis_url: str, org_id: str) -> None:
    """Delete the benchmark organization's Redis keys (all share its hash tag)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        batch = []
        async for key in client.scan_iter(match=f"meter:{{{org_id}}}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def run(seconds: float, connections: int, settings: Any) -> dict[str, float]:
    from meter.migrate import migrate
    from meter.services import create_database, drop_database, provision, with_database

    async with provision(settings, durable=False) as services:
        admin_dsn = with_database(services.postgres_dsn, "postgres")
        db = f"meter_bench_{uuid.uuid4().hex[:8]}"
        await create_database(admin_dsn, db)
        dsn = with_database(services.postgres_dsn, db)
        proc: asyncio.subprocess.Process | None = None
        org = ""
        try:
            await migrate(dsn)
            port = free_port()
            env = {
                **os.environ,
                "METER_REDIS_URL": services.redis_url,
                "METER_POSTGRES_DSN": dsn,
                "METER_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
                "METER_ADMIN_TOKEN": ADMIN_TOKEN,
                "METER_API_PORT": str(port),
                "METER_LOG_LEVEL": "warning",
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meter.bench.quota", "--serve", env=env
            )
            await _wait_ready(port, proc)
            org, token = await _setup(port)
            load = Load(port, token, org)
            await load.saturate(load.check, connections, min(1.0, seconds))  # warm up
            check_per_s = await load.saturate(load.check, connections, seconds)
            check_lat = await load.fixed_rate(load.check, FIXED_RATE, seconds)
            pairs_per_s = await load.saturate(load.reserve_release, connections, seconds)
            reserve_lat = await load.fixed_rate(load.reserve_release, FIXED_RATE // 2, seconds)
            return {
                "check_per_s": round(check_per_s, 1),
                "check_p50_ms": round(percentile(check_lat, 0.50) * 1e3, 3),
                "check_p99_ms": round(percentile(check_lat, 0.99) * 1e3, 3),
                "reserve_release_per_s": round(pairs_per_s, 1),
                "reserve_p50_ms": round(percentile(reserve_lat, 0.50) * 1e3, 3),
                "reserve_p99_ms": round(percentile(reserve_lat, 0.99) * 1e3, 3),
                "errors": load.errors,
            }
        finally:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 10)
            await drop_database(admin_dsn, db)
            if org:
                await _forget_org(services.redis_url, org)


def _serve() -> None:
    """The API process: one uvicorn worker, uvloop and httptools."""
    import uvicorn

    from meter.api import build_app
    from meter.api.server import uvicorn_config
    from meter.settings import load_settings

    settings = load_settings()
    assert settings.redis_url and settings.postgres_dsn and settings.kafka_bootstrap

    @dataclass(frozen=True)
    class Addresses:
        redis_url: str
        postgres_dsn: str
        kafka_bootstrap: str

    app = build_app(
        settings,
        Addresses(settings.redis_url, settings.postgres_dsn, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
    )
    config = uvicorn_config(app, "127.0.0.1", settings.api_port, loop="uvloop", log_level="warning")
    uvicorn.Server(config).run()


def report(numbers: dict[str, float]) -> str:
    return "\n".join(
        [
            f"check:           {numbers['check_per_s']:>9,.0f} checks/s at saturation "
            "(target >= 5,000)",
            f"  at {FIXED_RATE}/s:       p50 {numbers['check_p50_ms']:.3f} ms (target <= 0.5), "
            f"p99 {numbers['check_p99_ms']:.3f} ms (target <= 2)",
            f"reserve+release: {numbers['reserve_release_per_s']:>9,.0f} pairs/s at saturation",
            f"  at {FIXED_RATE}/s:       reserve p50 {numbers['reserve_p50_ms']:.3f} ms, "
            f"p99 {numbers['reserve_p99_ms']:.3f} ms",
            f"errors: {numbers['errors']:.0f}",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=16, help="connections at saturation")


async def main_async(args: argparse.Namespace, settings: Any) -> int:
    numbers = await run(args.seconds, args.connections, settings)
    print(report(numbers), flush=True)
    if args.json:
        print(orjson.dumps(numbers).decode(), flush=True)
    return 0


def configure(
    parser: argparse.ArgumentParser,
) -> Callable[[argparse.Namespace, Any], Awaitable[int]]:
    """For the CLI: `meter bench quota`."""
    add_arguments(parser)
    return main_async


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--serve"]:
        _serve()
        return 0
    import uvloop

    from meter.settings import load_settings

    parser = argparse.ArgumentParser(prog="meter bench quota", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return uvloop.run(main_async(args, load_settings()))


if __name__ == "__main__":
    sys.exit(main())
