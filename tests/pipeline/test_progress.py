"""A consumer that makes no progress while records wait says so: readiness and a metric."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    make_events,
    produce_events,
    wait_for,
)

from meter import metrics
from meter.engine.redis import RedisEngine
from meter.migrate import migrate
from meter.services import PostgresServer, create_database, free_port, with_database
from meter.settings import Settings


async def test_readiness_fails_while_postgres_is_down_and_recovers(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    private_postgres: PostgresServer,
) -> None:
    dsn = private_postgres.dsn("meter_progress")
    await create_database(with_database(dsn, "postgres"), "meter_progress")
    await migrate(dsn)
    settings = pipe_settings.model_copy(
        update={
            "postgres_dsn": dsn,
            "consumer_group": f"settle-{uuid.uuid4().hex[:8]}",
            "consumer_stall_s": 2.0,
            "metrics_port": free_port(),
        }
    )
    assert settings.kafka_bootstrap
    bootstrap, topic, group = (
        settings.kafka_bootstrap,
        settings.usage_topic,
        settings.consumer_group,
    )
    world = World.build(n_orgs=2, members_per_org=3, seed=91)
    await world.apply(engine)
    await world.store(dsn)
    first = make_events(world, 100, seed=92, prefix="a")
    second = make_events(world, 100, seed=93, prefix="b")
    base = f"http://{settings.api_host}:{settings.metrics_port}"

    async with metrics.metrics_server(settings), httpx.AsyncClient(base_url=base) as http:

        async def ready() -> tuple[int, Any]:
            r = await http.get("/readyz")
            return r.status_code, r.json()

        async def done() -> bool:
            return await caught_up(bootstrap, dsn, group, topic)

        assert (await http.get("/livez")).status_code == 200
        await produce_events(bootstrap, topic, first)
        consumer = running.start(settings, engine)
        await wait_for(done, what="the first events to settle")
        assert await ready() == (200, {"status": "ok", "checks": {}})

        await private_postgres.stop()
        await produce_events(bootstrap, topic, second)

        async def stalled() -> bool:
            return (await ready())[0] == 503

        await wait_for(stalled, what="readiness to fail")
        _, body = await ready()
        assert body["status"] == "unavailable"
        assert body["checks"]["consumer"].startswith("no_progress")
        assert (metrics.REGISTRY.get_sample_value("meter_consumer_stalled_seconds") or 0) > 0
        assert (await http.get("/livez")).status_code == 200

        await private_postgres.start()

        async def recovered() -> bool:
            return await ready() == (200, {"status": "ok", "checks": {}})

        await wait_for(recovered, what="readiness to recover")
        await wait_for(done, what="the second events to settle")
        await running.stop(consumer)
    assert metrics.REGISTRY.get_sample_value("meter_consumer_stalled_seconds") == 0
    await assert_consistent(world, engine, dsn, [*first, *second])
