"""One organization whose state cannot be applied is quarantined; the others keep settling,
rebuilding and answering, and a release after the data is fixed settles everything."""

from __future__ import annotations

import argparse
import time

import asyncpg  # type: ignore[import-untyped]
import pytest
from conftest import Running
from pipeline_support import (
    World,
    assert_consistent,
    caught_up,
    dlq_reasons,
    make_events,
    now_ms,
    produce_events,
    read_topic,
    wait_for,
)

from consumers.dlq import replay
from meter import quarantine
from meter.alerts import alert_event
from meter.engine.redis import RedisEngine
from meter.engine.types import MAX_AMOUNT, Reason
from meter.settings import Settings

BEYOND = MAX_AMOUNT + 1
"""A grant amount the engine cannot hold exactly (PostgreSQL's bigint can)."""


async def run_cli(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    handle = quarantine.configure(parser)
    return await handle(parser.parse_args(list(argv)), settings)


async def settled_keys(dsn: str, keys: set[str]) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT key FROM settlements WHERE key = ANY($1)", list(keys))
    finally:
        await conn.close()
    return {r[0] for r in rows}


async def test_unappliable_org_is_quarantined_and_others_keep_settling(
    pipe_settings: Settings,
    engine: RedisEngine,
    running: Running,
    pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = pipe_settings
    assert settings.kafka_bootstrap and settings.postgres_dsn
    bootstrap, dsn = settings.kafka_bootstrap, settings.postgres_dsn
    usage, dlq, group = settings.usage_topic, settings.dlq_topic, settings.consumer_group
    world = World.build(n_orgs=2, members_per_org=4, seed=7)
    await world.store(dsn)
    await world.apply(engine)
    before = make_events(world, 300, seed=8, prefix="a")
    after = make_events(world, 300, seed=9, prefix="b")
    good_after = {e.key for e in after if e.org_id == "org-0"}
    bad_after = {e.key for e in after if e.org_id == "org-1"}
    assert good_after and bad_after

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, usage)

    consumer = running.start(settings, engine)
    await produce_events(bootstrap, usage, before)
    await wait_for(done, what="the first events to settle")

    # org-1's data goes beyond what the engine holds exactly; then Redis loses everything.
    await pool.execute(
        "UPDATE credit_grants SET amount = $1 WHERE org_id = 'org-1' AND kind = 'shared'", BEYOND
    )
    await engine.client.flushall()
    started = time.perf_counter()
    await produce_events(bootstrap, usage, after)

    async def good_settled() -> bool:
        return await settled_keys(dsn, good_after) == good_after

    await wait_for(good_settled, what="the unaffected organization to settle")
    good_settle_s = time.perf_counter() - started
    await wait_for(done, what="every event handled")

    # The consumer rebuilt (it did not exit), with org-1 left out and quarantined.
    assert consumer.recovery is not None and consumer.recovery.rebuilds >= 1
    assert await engine.has_org("org-0") and not await engine.has_org("org-1")
    held = await quarantine.get(pool, "org-1")
    assert held is not None and held.reason == "engine_input"
    assert "amount" in held.details
    assert await quarantine.get(pool, "org-0") is None
    assert await settled_keys(dsn, bad_after) == set()
    dead = await read_topic(bootstrap, dlq)
    assert dlq_reasons(dead) == {"org_quarantined": len(bad_after)}

    # Checks: the good organization answers, the quarantined one says so (never unknown_org).
    good = await engine.check("org-0", "m-1", 1, now_ms())
    assert good.reason is not Reason.UNKNOWN_ORG and good.period_end_ms is not None
    bad = await engine.check("org-1", "m-1", 1, now_ms())
    assert bad.reason is Reason.ORG_QUARANTINED
    assert not await engine.has_org("org-1")

    # An alert was recorded for it.
    rows = await pool.fetch("SELECT * FROM alerts WHERE subject_kind = 'quarantine'")
    assert [r["org_id"] for r in rows] == ["org-1"]
    assert b'"kind":"org_quarantined"' in alert_event(rows[0])

    # The operator's view.
    capsys.readouterr()
    assert await run_cli(settings, "list") == 0
    listed = capsys.readouterr().out
    assert "org-1\tengine_input" in listed and "org-0" not in listed
    assert await run_cli(settings, "show", "org-1") == 0
    assert "amount" in capsys.readouterr().out

    # Released while the data is still wrong: it stays quarantined and the command says why.
    assert await run_cli(settings, "release", "org-1") == 1
    assert "stays quarantined" in capsys.readouterr().err
    assert await quarantine.get(pool, "org-1") is not None

    # Fixed, released, dead letters replayed: everything settles.
    await pool.execute(
        "UPDATE credit_grants SET amount = $1 WHERE org_id = 'org-1' AND kind = 'shared'",
        next(g.amount for g in world.grants if g.org_id == "org-1" and g.kind.value == "shared"),
    )
    assert await run_cli(settings, "release", "org-1") == 0
    assert await quarantine.get(pool, "org-1") is None
    assert await engine.has_org("org-1")
    report = await replay(bootstrap, dlq, usage, reasons={"org_quarantined"})
    assert report.replayed == len(bad_after)

    async def all_settled() -> bool:
        return await settled_keys(dsn, bad_after) == bad_after

    await wait_for(all_settled, what="the replayed events to settle")
    await wait_for(done, what="catch up after the replay")
    await running.stop(consumer)
    await assert_consistent(world, engine, dsn, [*before, *after])
    print(
        f"\nunaffected organization: {len(good_after)} events settled "
        f"{good_settle_s * 1000:.0f} ms after Redis was flushed (rebuild included)"
    )
