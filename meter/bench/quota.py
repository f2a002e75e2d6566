"""`meter bench quota [--json]`: the quota hot path of one API process, measured over HTTP.

The API runs in a subprocess (one uvicorn worker: uvloop, httptools) against real Redis and
PostgreSQL; this process is the load generator: raw HTTP/1.1 keep-alive connections on asyncio
protocols, far cheaper per request than the server. Measured, each for `--seconds`:

- checks/s at saturation (`--connections` connections, each sending its next request as soon as
  the previous answer arrives), and check latency p50/p99 at a fixed 1,000 requests/s (requests
  are sent on schedule whatever the previous answers did: an open loop; each latency runs from
  the request's scheduled send instant, so a late send counts against it, and the generator's
  own lag is reported beside it);
- the same for reserve+release pairs: saturation in pairs/s, latency of the reserve requests at a
  fixed 1,000 requests/s (500 pairs/s).

Targets (DESIGN 5): >= 10,000 checks/s; p50 <= 0.5 ms and p99 <= 1 ms at 1,000 checks/s.
With `--json` the last line is one JSON object with `check_per_s`, `check_p50_ms`,
`check_p99_ms`, `reserve_release_per_s`, `reserve_p50_ms`, `reserve_p99_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import selectors
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from meter.bench.cpu import process_cpu_s

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
        self.answered_at = 0.0
        """When the last complete answer was read (`time.perf_counter`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        at = buffer.find(b"content-length:", 0, end)
        length = int(buffer[at + 15 : buffer.find(b"\r\n", at)]) if at >= 0 else 0
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        self.answered_at = time.perf_counter()
        status = int(buffer[9:12])
        self.buffer = buffer[end + 4 + length :]
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


Op = Callable[[_Conn, int, float], Awaitable[float]]
"""Sends request number n on a connection; returns the latency (s) of the measured request,
counted from the given instant (`time.perf_counter`)."""


SPIN_S = 100e-6
"""A fixed-rate sender wakes this much before a request is due and spins the rest: a wake-up on
this machine comes 80-120 us late even with fine timers."""
PR_SET_TIMERSLACK = 29


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers wake to the microsecond: `select` takes its timeout in
    microseconds, where epoll (and libuv's timers) round to whole milliseconds, which would send
    a fixed-rate load in bursts. On Linux the calling thread's timer slack (50 us by default) is
    set to 1 ns."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


@dataclass
class Latencies:
    """Of a fixed-rate phase: each measured request's latency from its scheduled send instant,
    and how late each request left (the generator's own lag, part of the latency)."""

    latency: list[float]
    send_lag: list[float]


class Load:
    def __init__(self, port: int, token: str, org_id: str) -> None:
        self.port = port
        self.token = token
        self.org_id = org_id
        self.errors = 0
        self._checks = [
            http_post(
                "/v1/check",
                orjson.dumps({"org_id": org_id, "member_id": f"m{i}", "credits": "0.5"}),
                token,
            )
            for i in range(MEMBERS)
        ]
        self._run = uuid.uuid4().hex[:6]

    async def connect(self, n: int) -> list[_Conn]:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(n):
            _, proto = await loop.create_connection(_Conn, "127.0.0.1", self.port)
            conns.append(proto)
        return conns

    async def check(self, conn: _Conn, n: int, since: float) -> float:
        status = await conn.request(self._checks[n % MEMBERS])
        elapsed = conn.answered_at - since
        if status != 200:
            self.errors += 1
        return elapsed

    async def reserve_release(self, conn: _Conn, n: int, since: float) -> float:
        rid = f"r{n}-{self._run}"
        doc = {"org_id": self.org_id, "member_id": f"m{n % MEMBERS}", "credits": "0.5",
               "reservation_id": rid}  # fmt: skip
        status = await conn.request(http_post("/v1/reserve", orjson.dumps(doc), self.token))
        elapsed = conn.answered_at - since
        release = await conn.request(
            http_post(
                "/v1/release",
                orjson.dumps({"org_id": self.org_id, "reservation_id": rid}),
                self.token,
            )
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
                await op(conn, n, time.perf_counter())
                n += connections
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        for c in conns:
            assert c.transport is not None
            c.transport.close()
        return done / elapsed

    async def fixed_rate(self, op: Op, per_s: int, seconds: float) -> Latencies:
        """Operations started on a fixed schedule of `per_s` per second whatever the answers do
        (an open loop), run on a `precise_loop` in a thread of its own."""

        def in_thread() -> Latencies:
            loop = precise_loop()
            try:
                return loop.run_until_complete(self._fixed_rate(op, per_s, seconds))
            finally:
                loop.close()

        return await asyncio.to_thread(in_thread)

    async def _fixed_rate(self, op: Op, per_s: int, seconds: float) -> Latencies:
        idle = await self.connect(32)
        out = Latencies([], [])
        pending: set[asyncio.Task[None]] = set()
        all_conns = list(idle)

        async def one(conn: _Conn, n: int, scheduled: float) -> None:
            out.latency.append(await op(conn, n, scheduled))
            idle.append(conn)

        started = time.perf_counter() + 0.01
        for n in range(int(per_s * seconds)):
            scheduled = started + n / per_s
            delay = scheduled - SPIN_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while time.perf_counter() < scheduled:
                pass
            if not idle:
                # Every connection is waiting on an answer: open another rather than wait, so
                # a slow answer never delays the requests scheduled after it.
                idle.extend(await self.connect(1))
                all_conns.append(idle[-1])
            out.send_lag.append(time.perf_counter() - scheduled)
            task = asyncio.create_task(one(idle.pop(), n, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        for c in all_conns:
            assert c.transport is not None
            c.transport.close()
        return out


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by process `pid` and by this one."""
    own = os.times()
    return process_cpu_s(pid), own.user + own.system


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


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
    from meter.redis_client import connect as redis_connect

    client = redis_connect(redis_url)
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
                # As deployed: a JSON line per request, here thrown away.
                "METER_LOG_LEVEL": "info",
                "METER_LOG_FORMAT": "json",
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meter.bench.quota",
                "--serve",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            await _wait_ready(port, proc)
            org, token = await _setup(port)
            load = Load(port, token, org)
            await load.saturate(load.check, connections, min(1.0, seconds))  # warm up
            cpu_before = _cpu_s(proc.pid)
            check_per_s = await load.saturate(load.check, connections, seconds)
            (server_cpu, load_cpu) = (
                a - b for a, b in zip(_cpu_s(proc.pid), cpu_before, strict=True)
            )
            check_lat = await load.fixed_rate(load.check, FIXED_RATE, seconds)
            pairs_per_s = await load.saturate(load.reserve_release, connections, seconds)
            reserve_lat = await load.fixed_rate(load.reserve_release, FIXED_RATE // 2, seconds)
            lag = check_lat.send_lag + reserve_lat.send_lag
            return {
                "check_per_s": round(check_per_s, 1),
                "check_p50_ms": _ms(percentile(check_lat.latency, 0.50)),
                "check_p99_ms": _ms(percentile(check_lat.latency, 0.99)),
                "reserve_release_per_s": round(pairs_per_s, 1),
                "reserve_p50_ms": _ms(percentile(reserve_lat.latency, 0.50)),
                "reserve_p99_ms": _ms(percentile(reserve_lat.latency, 0.99)),
                "server_cpu_per_s": round(server_cpu / seconds, 2),
                "load_cpu_per_s": round(load_cpu / seconds, 2),
                "send_lag_p50_ms": _ms(percentile(lag, 0.50)),
                "send_lag_p99_ms": _ms(percentile(lag, 0.99)),
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
    """The API process: one uvicorn worker, uvloop and httptools, its logging and garbage
    collector set up as `meter api` sets them."""
    import uvicorn

    from meter.api import build_app
    from meter.api.server import uvicorn_config
    from meter.cli import secrets_of, tune_gc
    from meter.logging import configure_logging
    from meter.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, secrets=secrets_of(settings))
    tune_gc()
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
            "(target >= 10,000)",
            f"  CPU cores used at saturation: API {numbers['server_cpu_per_s']:.2f}, "
            f"load generator {numbers['load_cpu_per_s']:.2f}",
            f"  at {FIXED_RATE}/s:       p50 {numbers['check_p50_ms']:.3f} ms (target <= 0.5), "
            f"p99 {numbers['check_p99_ms']:.3f} ms (target <= 1)",
            f"reserve+release: {numbers['reserve_release_per_s']:>9,.0f} pairs/s at saturation",
            f"  at {FIXED_RATE}/s:       reserve p50 {numbers['reserve_p50_ms']:.3f} ms, "
            f"p99 {numbers['reserve_p99_ms']:.3f} ms",
            f"  (latencies from each request's scheduled send; the generator sent late by "
            f"p50 {numbers['send_lag_p50_ms']:.3f} ms, p99 {numbers['send_lag_p99_ms']:.3f} ms)",
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
