"""`meter bench scale`: settle throughput with 1, 2 and 4 `meter consume` processes, against one
Redis and against a local Redis Cluster, plus the bound of one hot organization.

For each Redis and each process count, in a database and on a topic of their own:
1. The world of `meter bench pipeline` (organizations with a shared pool, members with a seat) is
   written to PostgreSQL and Redis, and N events are produced over `--partitions` partitions.
2. The consumers start (real `meter consume` processes, one consumer group). Once their
   assignments cover every partition once (read from their `partitions_assigned` log lines), the
   settled count is noted; the rate is what is settled from then to the last event, so the group's
   start-up and rebalances are left out.
3. Each process's CPU time over that window, from the operating system: CPU microseconds per
   event, all processes together (what sizing a deployment needs), and per process.
4. Lag at a fixed offered rate (`--rate`), as in `meter bench pipeline`: produced -> its
   partition's stored offset past it in PostgreSQL.

The hot organization: one organization and many members, so every event has the same key, one
partition and one Redis slot: one consumer process and one Redis core bound its throughput
whatever the number of processes. Measured with one and two processes on one Redis.

On a machine with two cores the processes share them with Kafka, Redis and PostgreSQL: the
events/s do not grow much with processes here; the CPU per event is the figure to size with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.bench.cpu import process_cpu_s
from meter.bench.pipeline import (
    _now_ms,
    _Offer,
    _offer_and_watch,
    _percentile,
    _produce,
    _settled_count,
    _World,
)
from meter.engine.redis import RedisEngine
from meter.redis_client import connect as redis_connect
from meter.settings import Settings

if TYPE_CHECKING:
    from meter.cli import Handler

METER = str(Path(sys.executable).parent / "meter")


@dataclass(frozen=True)
class Case:
    redis: str
    """`single` or `cluster`."""
    processes: int
    hot: bool = False


def _assignments(log: Path) -> list[int] | None:
    """The partitions of the last `partitions_assigned` line of a consumer's log."""
    last = None
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_bytes().splitlines():
            if b'"partitions_assigned"' in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    last = orjson.loads(line).get("partitions")
    return last


def _stable(logs: list[Path], partitions: int) -> bool:
    """Every partition assigned once, to the processes' latest assignments."""
    seen: list[int] = []
    for log in logs:
        parts = _assignments(log)
        if parts is None:
            return False
        seen.extend(parts)
    return sorted(seen) == list(range(partitions))


async def run_case(
    settings: Settings,
    redis_url: str,
    case: Case,
    *,
    events: int,
    partitions: int,
    rate: int,
    lag_seconds: float,
    work_dir: Path,
) -> dict[str, Any]:
    """One case on a fresh database and topic of the servers in `settings`."""
    from meter.migrate import migrate
    from meter.services import create_database, drop_database, ensure_topics, with_database

    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap = settings.kafka_bootstrap
    name = f"meter_scale_{uuid.uuid4().hex[:8]}"
    admin_dsn = with_database(settings.postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    dsn = with_database(settings.postgres_dsn, name)
    procs: list[asyncio.subprocess.Process] = []
    client = redis_connect(redis_url)
    try:
        await migrate(dsn)
        topic = f"scale.{uuid.uuid4().hex[:8]}"
        await ensure_topics(bootstrap, {topic: partitions, f"{topic}.dlq": 1})
        world = _World(orgs=1, members=4000) if case.hot else _World(orgs=100, members=40)
        t = _now_ms()
        conn = await asyncpg.connect(dsn)
        try:
            await world.apply(conn, RedisEngine(client), t)
        finally:
            await conn.close()
        await _produce(bootstrap, topic, world.events(events, "pre", t))
        group = f"scale-{uuid.uuid4().hex[:6]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
        env.update(
            {
                "METER_KAFKA_BOOTSTRAP": bootstrap,
                "METER_REDIS_URL": redis_url,
                "METER_POSTGRES_DSN": dsn,
                "METER_USAGE_TOPIC": topic,
                "METER_DLQ_TOPIC": f"{topic}.dlq",
                "METER_CONSUMER_GROUP": group,
                "METER_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
                "METER_LOG_FORMAT": "json",
                "METER_DATA_DIR": str(work_dir),
            }
        )
        logs = [work_dir / f"{name}-consumer-{i}.log" for i in range(case.processes)]
        for log in logs:
            with log.open("wb") as sink:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        METER, "consume", env=env, stdout=sink, stderr=subprocess.STDOUT
                    )
                )
        pids = [p.pid for p in procs]
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + 120
            while not _stable(logs, partitions):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumers not assigned within 120 s: see {logs}")
                if any(p.returncode is not None for p in procs):
                    raise RuntimeError(f"a consumer exited: see {logs}")
                await asyncio.sleep(0.02)
            started = time.perf_counter()
            first = await _settled_count(conn, group, topic)
            cpu0 = [process_cpu_s(pid) for pid in pids]
            while (done := await _settled_count(conn, group, topic)) < events:
                if any(p.returncode is not None for p in procs):
                    raise RuntimeError(f"a consumer exited: see {logs}")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = [process_cpu_s(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
            measured = done - first
            n_lag = int(rate * lag_seconds)
            offer = _Offer(bootstrap, topic, dsn, group, world, rate, n_lag)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                lags = await asyncio.get_running_loop().run_in_executor(
                    pool, _offer_and_watch, offer
                )
        finally:
            await conn.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await client.aclose()
        await drop_database(admin_dsn, name)
    return {
        "redis": case.redis,
        "hot_org": case.hot,
        "processes": case.processes,
        "events_measured": measured,
        "events_per_s": round(measured / elapsed),
        "cpu_us_per_event": round(sum(cpu) / measured * 1e6, 1),
        "cpu_s_per_process": [round(c, 2) for c in cpu],
        "lag_p50_ms": round(_percentile(lags, 0.5), 1),
        "lag_p99_ms": round(_percentile(lags, 0.99), 1),
    }


async def bench(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case of the benchmark; the cluster is started here, in a directory of its own."""
    from meter.local_cluster import LocalRedisCluster

    assert settings.redis_url
    results: list[dict[str, Any]] = []
    counts = [int(n) for n in args.processes.split(",")]
    options = {
        "events": args.events,
        "partitions": args.partitions,
        "rate": args.rate,
        "lag_seconds": args.lag_seconds,
    }
    with tempfile.TemporaryDirectory(prefix="meter-bench-scale-") as tmp:
        work = Path(tmp)

        async def run(redis_url: str, case: Case) -> None:
            print(f"{case} ...", file=sys.stderr, flush=True)
            result = await run_case(settings, redis_url, case, work_dir=work, **options)
            print(orjson.dumps(result).decode(), file=sys.stderr, flush=True)
            results.append(result)

        for n in counts:
            await run(settings.redis_url, Case("single", n))
        if not args.no_cluster:
            async with LocalRedisCluster(work / "cluster") as cluster:
                for n in counts:
                    await run(cluster.url, Case("cluster", n))
        for n in (1, 2):
            await run(settings.redis_url, Case("single", n, hot=True))
    base = {(r["redis"], r["hot_org"]): r["events_per_s"] for r in results if r["processes"] == 1}
    for r in results:
        r["ratio_to_one"] = round(r["events_per_s"] / base[(r["redis"], r["hot_org"])], 2)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=300_000, help="per case")
    parser.add_argument("--processes", default="1,2,4", help="consumer process counts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=int, default=5_000, help="offered rate for the lag test")
    parser.add_argument("--lag-seconds", type=float, default=5.0)
    parser.add_argument("--no-cluster", action="store_true", help="one Redis only")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter bench scale` (registered under the `bench` command)."""
    add_arguments(parser)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        async with provision(settings) as services:
            results = await bench(services.apply(settings), args)
        header = (
            f"{'redis':<8} {'hot':<4} {'procs':>5} {'events/s':>10} {'x one':>6}"
            f" {'cpu us/ev':>10} {'lag p99 ms':>11}"
        )
        print(header)
        for r in results:
            print(
                f"{r['redis']:<8} {'yes' if r['hot_org'] else 'no':<4} {r['processes']:>5}"
                f" {r['events_per_s']:>10,} {r['ratio_to_one']:>6} {r['cpu_us_per_event']:>10}"
                f" {r['lag_p99_ms']:>11}"
            )
        if args.json:
            print(orjson.dumps({"cases": results}).decode())
        return 0

    return handle
