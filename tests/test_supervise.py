"""Supervised background loops: through a real PostgreSQL outage the reconciler resumes and
repairs Redis; a loop that fails reports it in `/readyz` until it passes again; `meter run`
restarts a component that dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from api.support import Addresses

from meter import cli
from meter.admin import AdminService
from meter.admin.scheduler import PeriodScheduler
from meter.alerts import AlertPublisher
from meter.api import App, build_app
from meter.engine.redis import RedisEngine
from meter.health import HEALTH
from meter.migrate import migrate
from meter.services import PostgresServer
from meter.settings import Settings
from meter.supervise import Backoff, cancel_and_wait, supervise, wait_event
from meter.webhooks.worker import WebhookWorker

ADMIN_TOKEN = "supervise-admin-token-0123456789"
FAST = Backoff(initial_s=0.05, max_s=0.5)


async def until(condition: Callable[[], Awaitable[bool]], what: str, deadline_s: float) -> float:
    """Wait until `condition()` holds; returns the seconds it took (fails after `deadline_s`)."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < deadline_s, f"not within {deadline_s} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def clean_health() -> None:
    HEALTH.clear()


def client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://meter",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def app_on_private(
    settings: Settings, redis: aioredis.Redis, private_postgres: PostgresServer
) -> AsyncIterator[App]:
    """The API on a PostgreSQL of its own, reconciling every 0.5 s."""
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    dsn = private_postgres.dsn("meter")
    await migrate(dsn)
    app = build_app(
        settings.model_copy(update={"admin_token": ADMIN_TOKEN}),
        Addresses(settings.redis_url, dsn, settings.kafka_bootstrap),
        reconcile_interval_s=0.5,
    )
    async with app.running():
        try:
            yield app
        finally:
            if not private_postgres.running:
                await private_postgres.start()


ABSENT = ("unknown_org", "unavailable")
"""What a check answers for an organization Redis lost (503 `unavailable` while it is known to
exist, `unknown_org` otherwise)."""


async def check_reason(c: httpx.AsyncClient, org_id: str) -> str | None:
    """The check's refusal reason, or the error code of a 503."""
    r = await c.post("/v1/check", json={"org_id": org_id, "member_id": "alice", "credits": "1"})
    if r.status_code == 503:
        code: str = r.json()["error"]["code"]
        return code
    assert r.status_code == 200, r.text
    reason: str | None = r.json().get("reason")
    return reason


async def test_reconciler_resumes_after_postgres_outage(
    app_on_private: App, redis: aioredis.Redis, private_postgres: PostgresServer
) -> None:
    async with client(app_on_private) as c:
        r = await c.post("/v1/plans", json={"plan_id": "p", "name": "P", "preset": "teams"})
        assert r.status_code == 201, r.text
        r = await c.post("/v1/orgs", json={"org_id": "acme", "name": "Acme", "plan_id": "p"})
        assert r.status_code == 201, r.text
        r = await c.post("/v1/orgs/acme/members", json={"member_id": "alice", "name": "Alice"})
        assert r.status_code == 201, r.text
        assert await check_reason(c, "acme") not in ABSENT

        # The outage overlaps the reconciler's passes (one every 0.5 s), and Redis loses the
        # organization meanwhile: only the reconciler brings it back.
        await private_postgres.stop()
        await redis.flushdb()
        assert await check_reason(c, "acme") in ABSENT

        async def reported() -> bool:
            return "reconciler" in HEALTH.problems()

        await until(reported, "the reconciler reports its failures", 30.0)
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["reconciler"].startswith("retrying: ")

        await private_postgres.start()

        async def repaired() -> bool:
            return await check_reason(c, "acme") not in ABSENT

        took = await until(repaired, "the organization is back in Redis", 30.0)
        print(f"organization repaired {took:.2f} s after PostgreSQL came back")

        async def healthy() -> bool:
            return "reconciler" not in HEALTH.problems()

        await until(healthy, "the reconciler reports healthy again", 10.0)


async def test_failing_loop_takes_readiness_until_it_passes(app_on_private: App) -> None:
    broken = True
    passes = 0

    async def step() -> None:
        nonlocal passes
        await asyncio.sleep(0.01)
        if broken:
            raise RuntimeError("unexpected state")
        passes += 1

    loop = asyncio.create_task(supervise("test_loop", step, backoff=FAST))
    try:
        async with client(app_on_private) as c:

            async def unready() -> bool:
                r = await c.get("/readyz")
                return r.status_code == 503 and "test_loop" in r.json()["checks"]

            await until(unready, "/readyz reports the failing loop", 10.0)
            r = await c.get("/readyz")
            assert r.json()["checks"]["test_loop"].startswith("failing: RuntimeError")
            assert r.json()["checks"]["postgres"] == "ok"

            broken = False

            async def ready() -> bool:
                return (await c.get("/readyz")).status_code == 200

            await until(ready, "/readyz is ready once the loop passes", 10.0)
            assert passes > 0
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert "test_loop" not in HEALTH.problems()


async def test_run_restarts_a_component_that_dies(settings: Settings) -> None:
    runs = 0
    alive = asyncio.Event()

    async def component(settings: Settings, services: Any) -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"died on run {runs}")
        alive.set()
        await asyncio.Event().wait()

    run = asyncio.create_task(cli._run_components([component], settings, None))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(alive.wait(), 30.0)
        assert not run.done()
        assert runs == 3
        assert HEALTH.problems()[component.__module__].startswith("failing: RuntimeError")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


@pytest.mark.parametrize("attempt", [1, 2, 5, 50])
def test_backoff_is_exponential_capped_and_jittered(attempt: int) -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, jitter=0.5)
    base = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert backoff.delay(attempt, rand=0.0) == base
    assert backoff.delay(attempt, rand=0.999) == pytest.approx(base * 0.5005)
    assert base * 0.5 <= backoff.delay(attempt) <= base


async def test_scheduler_reports_an_outage_and_resumes(
    redis: aioredis.Redis, private_postgres: PostgresServer
) -> None:
    dsn = private_postgres.dsn("meter")
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    engine = RedisEngine(redis)
    await engine.load_scripts()
    admin = AdminService(pool, engine)
    await admin.install_presets()
    published: list[bytes] = []

    async def publish(topic: str, key: bytes, value: bytes) -> None:
        published.append(value)

    scheduler = PeriodScheduler(admin, publish, "billing", poll_s=0.1)
    run = asyncio.create_task(scheduler.run())
    try:

        async def ticked() -> bool:
            return scheduler.pools_checked_ms is not None

        await until(ticked, "a first tick", 10.0)
        await private_postgres.stop()

        async def reported() -> bool:
            return "scheduler" in HEALTH.problems()

        await until(reported, "the scheduler reports the outage", 30.0)
        assert HEALTH.problems()["scheduler"].startswith("retrying: ")
        before = scheduler.pools_checked_ms
        await private_postgres.start()

        async def resumed() -> bool:
            ticked_again = scheduler.pools_checked_ms != before
            return ticked_again and "scheduler" not in HEALTH.problems()

        await until(resumed, "the scheduler ticks again", 30.0)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        if not private_postgres.running:
            await private_postgres.start()
        await pool.close()


async def test_cancel_and_wait_ends_a_task_that_lost_its_cancellation() -> None:
    # What `asyncio.wait_for` does on Python 3.11 when its call completes as the cancellation
    # arrives: the result is returned and the cancellation is gone.
    swallowed: list[int] = []

    async def deaf() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not swallowed:
                    swallowed.append(1)
                    continue
                raise

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(cancel_and_wait([task], again_s=0.1), 5)
    assert task.cancelled() and swallowed == [1]
    assert time.monotonic() - started < 2


async def test_cancel_and_wait_finishes_its_tasks_when_itself_cancelled() -> None:
    stopping: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.shield(asyncio.sleep(0.3))
            stopping.append("stopped")

    child = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    parent = asyncio.create_task(cancel_and_wait([child], again_s=1.0))
    await asyncio.sleep(0.05)
    parent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parent
    assert child.done() and stopping == ["stopped"]


async def test_wait_event() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True


async def test_cancel_and_wait_nested_under_repeated_cancellations() -> None:
    # A task that cancels its own deaf child, itself cancelled again and again from above: the
    # child is still cancelled again on time, and both end.
    swallowed: list[int] = []

    async def deaf() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if len(swallowed) < 3:
                    swallowed.append(1)
                    continue
                raise

    async def parent() -> None:
        child = asyncio.create_task(deaf())
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait([child], again_s=0.2)

    task = asyncio.create_task(parent())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(cancel_and_wait([task], again_s=0.05), 10)
    assert task.done() and len(swallowed) == 3


@pytest.mark.parametrize("component", ["alerts", "webhooks"])
async def test_clean_up_cut_short_by_a_cancellation_leaves_no_connection_open(
    component: str, postgres_dsn: str, kafka_bootstrap: str
) -> None:
    """A component's clean-up closes its listening connection, then its pool. A cancellation
    during the first close (a second one, as `cancel_and_wait` sends after a second) still
    leaves neither open for the garbage collector to find."""
    worker: AlertPublisher | WebhookWorker = (
        AlertPublisher(postgres_dsn, kafka_bootstrap, "unused")
        if component == "alerts"
        else WebhookWorker(postgres_dsn, production=False)
    )
    listener = await asyncpg.connect(postgres_dsn)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    worker._listener, worker._pool = listener, pool
    task = asyncio.create_task(worker._reset())
    await asyncio.sleep(0)  # the task runs up to its first wait: the listener's close
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert listener.is_closed()
    assert pool._closed, "the pool was left open"
    assert worker._listener is None and worker._pool is None
