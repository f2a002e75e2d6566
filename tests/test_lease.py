"""The scheduler lease: one active replica, standbys that take over when it dies or hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from meter import __version__
from meter.lease import Lease, lease_state
from meter.roles import SCHEDULER_LEASE
from meter.settings import Settings

METER = str(Path(sys.executable).parent / "meter")


async def wait_for(predicate, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `await predicate()` is true; fails after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def test_one_holder_and_handover(migrated_dsn: str) -> None:
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=4)
    active: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            active.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                active.remove(name)

        return run

    a = Lease(pool, "test", holder="a", ttl_s=2.0, poll_s=0.1)
    b = Lease(pool, "test", holder="b", ttl_s=2.0, poll_s=0.1)
    task_a = asyncio.create_task(a.run(work("a")))
    await wait_for(lambda: _true(active == ["a"]), 5, "a active")
    task_b = asyncio.create_task(b.run(work("b")))
    try:
        # b stands by for several of a's renewals: never two active.
        for _ in range(30):
            await asyncio.sleep(0.1)
            assert active == ["a"]
        assert (await lease_state(pool, "test")).holder == "a"
        # a stops cleanly: it gives the lease up and b takes it at its next poll.
        task_a.cancel()
        took = await wait_for(lambda: _true(active == ["b"]), 5, "b active")
        assert took < 1.0
        assert b.terms == 1
    finally:
        task_b.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
        await pool.close()


async def test_lost_session_ends_the_term(migrated_dsn: str) -> None:
    """A holder whose renewals fail stops its work before the lease could be taken by another."""
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=1)
    ended = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    lease = Lease(pool, "test", holder="a", ttl_s=2.0, poll_s=0.1)
    task = asyncio.create_task(lease.run(work))
    try:
        await wait_for(lambda: lease_state_is(migrated_dsn, "a"), 5, "a holds")
        # Someone else takes the expired-looking lease behind a's back: a's renewal must fail.
        admin = await asyncpg.connect(migrated_dsn)
        try:
            await admin.execute(
                "UPDATE leases SET holder = 'b', expires_at = now() + interval '1 hour'"
            )
        finally:
            await admin.close()
        await asyncio.wait_for(ended.wait(), 3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def lease_state_is(dsn: str, holder: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT holder FROM leases WHERE expires_at > now()")
        return row is not None and row["holder"] == holder
    finally:
        await conn.close()


async def _true(value: bool) -> bool:
    return value


def _scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [METER, "scheduler", "--lease-ttl", "3"], env=env, stdout=sink, stderr=sink
        )


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_standby_takes_over(
    fault: str, settings: Settings, migrated_dsn: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "METER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "METER_REDIS_URL": settings.redis_url or "",
        "METER_POSTGRES_DSN": migrated_dsn,
        "METER_BILLING_TOPIC": f"lease.billing.{suffix}",
        "METER_ALERTS_TOPIC": f"lease.alerts.{suffix}",
        "METER_DATA_DIR": str(tmp_path),
        "METER_LOG_FORMAT": "json",
    }
    procs = [_scheduler(env, tmp_path / f"s{i}.log") for i in range(2)]
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    try:

        async def held_by_one() -> bool:
            state = await lease_state(pool, SCHEDULER_LEASE)
            return state.live and state.holder is not None

        await wait_for(held_by_one, 60, "a scheduler holds the lease")
        # One start-up line per process: its role, version and servers.
        for i in range(2):
            log = tmp_path / f"s{i}.log"

            async def started(log: Path = log) -> bool:
                return b'"event":"starting"' in await asyncio.to_thread(log.read_bytes)

            await wait_for(started, 60, f"scheduler {i} logs its start")
            starts = [line for line in log.read_text().splitlines() if '"event":"starting"' in line]
            assert len(starts) == 1, starts
            start = orjson.loads(starts[0])
            assert (start["role"], start["version"]) == ("scheduler", __version__)
            assert start["postgres"].endswith("(configured)")
        holder = (await lease_state(pool, SCHEDULER_LEASE)).holder
        assert holder is not None
        pid = int(holder.split(":")[1])
        active = next(p for p in procs if p.pid == pid)
        standby = next(p for p in procs if p.pid != pid)
        os.kill(active.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        stopped = time.monotonic()

        async def standby_holds() -> bool:
            state = await lease_state(pool, SCHEDULER_LEASE)
            return state.live and state.holder is not None and f":{standby.pid}:" in state.holder

        await wait_for(standby_holds, 10, "the standby holds the lease")
        failover_s = time.monotonic() - stopped
        print(f"scheduler failover after {fault}: {failover_s:.2f} s")
        assert standby.poll() is None
        if fault == "freeze":
            # The frozen replica wakes up, finds its lease gone, and stands by: one holder.
            os.kill(active.pid, signal.SIGCONT)
            woken_log = tmp_path / f"s{procs.index(active)}.log"

            async def stood_down() -> bool:
                return b"lease lost" in woken_log.read_bytes()

            await wait_for(stood_down, 20, "the thawed replica stands by")
            assert f":{standby.pid}:" in ((await lease_state(pool, SCHEDULER_LEASE)).holder or "")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await pool.close()
