"""The reconciler never re-applies grants at their full amount to an organization whose Redis
state is gone: it rebuilds it from PostgreSQL under the rebuild lock, and leaves quarantined
organizations alone."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
from conftest import Running
from pipeline_support import (
    World,
    caught_up,
    make_events,
    produce_events,
    replay_model,
    wait_for,
)

from meter import quarantine
from meter.admin import AdminService, reconcile_all
from meter.engine.redis import RedisEngine
from meter.rebuild import clear_org
from meter.settings import Settings


async def test_reconcile_pass_rebuilds_an_org_whose_keys_were_lost(
    pipe_settings: Settings, engine: RedisEngine, running: Running, pool: asyncpg.Pool
) -> None:
    assert pipe_settings.kafka_bootstrap and pipe_settings.postgres_dsn
    bootstrap, dsn = pipe_settings.kafka_bootstrap, pipe_settings.postgres_dsn
    world = World.build(n_orgs=3, members_per_org=3, seed=21)
    await world.store(dsn)
    await world.apply(engine)
    events = make_events(world, 300, seed=22)
    consumer = running.start(pipe_settings, engine)
    await produce_events(bootstrap, pipe_settings.usage_topic, events)

    async def done() -> bool:
        return await caught_up(
            bootstrap, dsn, pipe_settings.consumer_group, pipe_settings.usage_topic
        )

    await wait_for(done, what="the events to settle")
    await running.stop(consumer)
    drawn = await pool.fetchval("SELECT sum(amount) FROM settlement_lines WHERE org_id = 'org-0'")
    assert drawn > 0

    # org-0 loses its keys (its marker with them); org-2 is quarantined.
    await clear_org(engine.client, "org-0")
    await quarantine.record(pool, "org-2", "engine_input", "test")
    await clear_org(engine.client, "org-2")
    await quarantine.mark(engine.client, "org-2", "engine_input")

    admin = AdminService(pool, engine, clock=lambda: world.now_ms)
    assert await reconcile_all(admin) == 0

    # org-0 was rebuilt, not re-credited: Redis agrees with a replay of the settled events.
    assert await engine.has_org("org-0")
    at = world.now_ms + 1_000
    ledger, _ = replay_model(world, events, at)
    for org_id in ("org-0", "org-1"):
        assert await engine.balances(org_id, at) == ledger.balances(org_id, at), org_id
        assert await engine.usage(org_id, at) == ledger.usage(org_id, at), org_id
    # The quarantined organization was left alone.
    assert not await engine.has_org("org-2")
    assert await quarantine.get(pool, "org-2") is not None
