"""Usage events are rated by the organization's rate card before they settle; the settlement
records the card version and the per-dimension lines; what cannot be rated is dead-lettered."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import orjson
from aiokafka import AIOKafkaProducer
from conftest import Running
from pipeline_support import DAY_MS, World, caught_up, dlq_reasons, produce, read_topic, wait_for

from meter.admin import reads
from meter.admin.service import AdminService
from meter.engine.redis import RedisEngine
from meter.engine.types import VoidResult
from meter.rating import report, rerate
from meter.rating.book import create_card
from meter.rating.card import card_from_json
from meter.rating.dimensions import Usage
from meter.rating.rate import rate
from meter.reports.service import Reports
from meter.settings import Settings
from meter.store import record_void
from schemas.events import encode_event

PLAN_CARD = {
    "unknown_model": "error",
    "models": {
        "gpt-4o*": {
            "input_tokens": {"micros_per_million": 2_500_000},
            "cached_input_tokens": {"micros_per_million": 1_250_000},
            "output_tokens": {"micros_per_million": 10_000_000},
        },
        "gpt-4o-mini*": {
            "input_tokens": {"micros_per_million": 150_000},
            "output_tokens": {"micros_per_million": 600_000},
        },
    },
}
OVERRIDE = {
    "unknown_model": "default",
    "default": {"requests": {"micros_per_unit": 1_000_000}},
    "models": {
        "gpt-4o*": {
            "input_tokens": {"micros_per_unit": 1},
            "cached_input_tokens": {"micros_per_unit": 0},
            "output_tokens": {"micros_per_unit": 0},
        }
    },
}


def _event(n: str, org: str, t: int, usage: Usage | None = None, credits: int = 0) -> bytes:
    return encode_event(
        event_id=n,
        source="//rate",
        org_id=org,
        member_id="m-1",
        time_ms=t,
        usage=usage,
        credits=None if usage is not None else credits,
    )


async def _rows(dsn: str) -> dict[str, tuple[int, dict[str, object] | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT key, credits, rating FROM settlements")
    finally:
        await conn.close()
    return {r[0]: (r[1], None if r[2] is None else orjson.loads(r[2])) for r in rows}


async def test_usage_events_are_rated_and_recorded(
    pipe_settings: Settings, engine: RedisEngine, running: Running, pool: asyncpg.Pool
) -> None:
    world = World.build(n_orgs=2, members_per_org=3, seed=11)
    await world.apply(engine)
    assert pipe_settings.postgres_dsn and pipe_settings.kafka_bootstrap
    dsn, bootstrap = pipe_settings.postgres_dsn, pipe_settings.kafka_bootstrap
    await world.store(dsn)
    t = world.now_ms
    v1 = await create_card(
        pool, plan_id="p", org_id=None, effective_from_ms=t - 2 * DAY_MS, body=PLAN_CARD
    )
    v2 = await create_card(
        pool, plan_id="p", org_id="org-1", effective_from_ms=t - 2 * DAY_MS, body=OVERRIDE
    )
    big = Usage("gpt-4o-2024-08-06", {"input_tokens": 1235, "cached_input_tokens": 1000,
                                      "output_tokens": 333})  # fmt: skip
    mini = Usage("gpt-4o-mini-2024-07-18", {"input_tokens": 5, "output_tokens": 7})
    items = [
        (b"org-0", _event("big", "org-0", t, big)),
        (b"org-0", _event("mini", "org-0", t, mini)),
        (b"org-0", _event("plain", "org-0", t, credits=1_500_000)),
        (b"org-0", _event("llama", "org-0", t, Usage("llama-3", {"requests": 1}))),
        (b"org-0", _event("image", "org-0", t, Usage("gpt-4o", {"images": 1}))),
        (b"org-0", _event("early", "org-0", t - 3 * DAY_MS, big)),
        (b"org-1", _event("llama1", "org-1", t, Usage("llama-3", {"requests": 2}))),
        (b"org-1", _event("big1", "org-1", t, big)),
        (b"org-0", _event("bad", "org-0", t).replace(b'"credits":"0"',
                                                     b'"usage":{"model":"m","tokens":1}')),
    ]  # fmt: skip
    await produce(bootstrap, pipe_settings.usage_topic, items)
    consumer = running.start(pipe_settings, engine)
    group, topic = pipe_settings.consumer_group, pipe_settings.usage_topic

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    await wait_for(done, what="catch up")
    rows = await _rows(dsn)
    expected_big = rate(big, v1.card)
    # 1235 * 2.5 + 1000 * 1.25 + 333 * 10 = 7667.5 micro-credits, rounded half up once.
    assert expected_big.credits == 7668
    assert rows["//rate big"][0] == 7668
    rating = rows["//rate big"][1]
    assert rating is not None
    assert rating["card_version"] == v1.card.version and rating["rule"] == "gpt-4o*"
    assert {line["dimension"]: line["credits"] for line in rating["lines"]} == {  # type: ignore[attr-defined]
        "cached_input_tokens": "0.00125",
        "input_tokens": "0.0030875",
        "output_tokens": "0.00333",
    }
    assert rows["//rate mini"][0] == 5  # 5*0.15 + 7*0.6 = 4.95 -> 5
    assert rows["//rate mini"][1]["rule"] == "gpt-4o-mini*"  # type: ignore[index]
    assert rows["//rate plain"] == (1_500_000, None)
    # The settlement read shows how the event was rated, and nothing for a credits event.
    read = await reads.settlement(pool, "org-0", "//rate mini")
    assert read.rating == rows["//rate mini"][1] and read.credits == "0.000005"
    # org-1's override: its own rule, and a default rate for unknown models.
    assert rows["//rate llama1"][0] == 2_000_000
    assert rows["//rate llama1"][1]["card_version"] == v2.card.version  # type: ignore[index]
    assert rows["//rate big1"][0] == 1235
    dead = await read_topic(bootstrap, pipe_settings.dlq_topic)
    assert dlq_reasons(dead) == {"unrated": 3, "invalid_usage": 1}
    assert {"//rate llama", "//rate image", "//rate early", "//rate bad"}.isdisjoint(rows)

    # A new version, effective now, is picked up by the running consumer.
    per_unit = {"input_tokens": 2, "cached_input_tokens": 1, "output_tokens": 3}
    cheaper = dict(
        PLAN_CARD,
        models={"gpt-4o*": {d: {"micros_per_unit": n} for d, n in per_unit.items()}},
    )
    v3 = await create_card(
        pool, plan_id="p", org_id=None, effective_from_ms=t - DAY_MS, body=cheaper
    )
    assert v3.card == card_from_json(
        cheaper, version=v3.card.version, plan_id="p", org_id=None, effective_from_ms=t - DAY_MS
    )
    await produce(bootstrap, topic, [(b"org-0", _event("after", "org-0", t, big))])
    await wait_for(done, what="catch up again")
    await running.stop(consumer)
    rows = await _rows(dsn)
    assert rows["//rate after"][0] == 1235 * 2 + 1000 + 333 * 3
    assert rows["//rate after"][1]["card_version"] == v3.card.version  # type: ignore[index]

    # Rated usage by model and dimension: exact sums of the lines, charged credits per model,
    # from the totals by model (0022), which the batch writes keep in step.
    starts = await pool.fetch(
        "SELECT DISTINCT period_start FROM settlements WHERE org_id = 'org-0'"
    )
    assert len(starts) == 1
    period_start = starts[0]["period_start"]
    by_model = await report.usage_by_model(pool, "org-0", period_start)
    assert by_model == [
        {
            "model": "gpt-4o-2024-08-06",
            "events": 2,
            "credits": 7668 + 1235 * 2 + 1000 + 333 * 3,
            "dimensions": {
                "cached_input_tokens": {"quantity": 2000, "credits": "0.00225"},
                "input_tokens": {"quantity": 2470, "credits": "0.0055575"},
                "output_tokens": {"quantity": 666, "credits": "0.004329"},
            },
        },
        {
            "model": "gpt-4o-mini-2024-07-18",
            "events": 1,
            "credits": 5,
            "dimensions": {
                "input_tokens": {"quantity": 5, "credits": "0.00000075"},
                "output_tokens": {"quantity": 7, "credits": "0.0000042"},
            },
        },
    ]
    assert await report.usage_by_model(pool, "org-0", period_start, "nobody") == []
    # The same from a scan of the rated settlements: the totals hold what the rows hold.
    scanned = await pool.fetch(
        "SELECT rating->>'model' AS model, count(*) AS events, sum(credits) AS credits"
        " FROM settlements WHERE org_id = 'org-0' AND rating IS NOT NULL GROUP BY 1 ORDER BY 1"
    )
    assert [(m["model"], m["events"], m["credits"]) for m in by_model] == [
        (r["model"], r["events"], r["credits"]) for r in scanned
    ]
    # The member report carries the member's own usage by model.
    member = await pool.fetchval(
        "SELECT member_id FROM settlements WHERE org_id = 'org-0'"
        " AND rating->>'model' = 'gpt-4o-mini-2024-07-18'"
    )
    member_report = await Reports(pool, lambda: t).member("org-0", member, None)
    own = await report.usage_by_model(pool, "org-0", period_start, member)
    assert "gpt-4o-mini-2024-07-18" in [m.model for m in member_report.models]
    assert member_report.models == report.models_out(own)
    # A void takes its settlement back out; the report no longer needs the rows (archived).
    async with pool.acquire() as conn:
        mini = await conn.fetchrow(
            "SELECT key, rating FROM settlements WHERE org_id = 'org-0'"
            " AND rating->>'model' = 'gpt-4o-mini-2024-07-18'"
        )
        result = VoidResult(mini["key"], True, ())
        assert await record_void(conn, "org-0", mini["key"], result, t)
        await conn.execute("DELETE FROM settlements WHERE org_id = 'org-0'")
    assert await report.usage_by_model(pool, "org-0", period_start) == by_model[:1]


async def test_rerate_corrects_a_window_exactly_once(
    pipe_settings: Settings, engine: RedisEngine, running: Running, pool: asyncpg.Pool
) -> None:
    world = World.build(n_orgs=1, members_per_org=3, seed=12)
    await world.apply(engine)
    assert pipe_settings.postgres_dsn and pipe_settings.kafka_bootstrap
    dsn, bootstrap = pipe_settings.postgres_dsn, pipe_settings.kafka_bootstrap
    group, topic = pipe_settings.consumer_group, pipe_settings.usage_topic
    await world.store(dsn)
    t = world.now_ms
    await create_card(pool, plan_id="p", org_id=None, effective_from_ms=t - 2 * DAY_MS,
                      body=PLAN_CARD)  # fmt: skip
    usages = [
        Usage("gpt-4o-2024-08-06", {"input_tokens": 1000 + 7 * i, "output_tokens": 3 * i})
        for i in range(20)
    ]
    items = [
        (b"org-0", encode_event(event_id=f"u{i}", source="//rr", org_id="org-0",
                                member_id=f"m-{1 + i % 2}", time_ms=t - i, usage=u))
        for i, u in enumerate(usages)
    ]  # fmt: skip
    await produce(bootstrap, topic, items)
    consumer = running.start(pipe_settings, engine)

    async def done() -> bool:
        return await caught_up(bootstrap, dsn, group, topic)

    await wait_for(done, what="catch up")
    corrected = {
        "unknown_model": "error",
        "models": {
            "gpt-4o*": {
                "input_tokens": {"micros_per_million": 2_000_000},
                "output_tokens": {"micros_per_million": 8_000_000},
            }
        },
    }
    v2 = await create_card(pool, plan_id="p", org_id=None, effective_from_ms=t - 2 * DAY_MS,
                           body=corrected)  # fmt: skip
    found = await rerate.find(pool, "org-0", t - DAY_MS, t + DAY_MS)
    assert len(found) == 20
    diff = rerate.differences(found)
    assert sum(new for _, new in diff.values()) == sum(rate(u, v2.card).credits for u in usages)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    admin = AdminService(pool, engine)

    async def send(key: bytes, value: bytes) -> None:
        await producer.send_and_wait(topic, value=value, key=key)

    async def void(org: str, key: str) -> None:
        await admin.void(org, key, "test")

    try:
        assert await rerate.apply(found, "org-0", produce=send, void=void) == 20
        # A run stopped before its voids is finished by the next: the copies are dropped.
        assert await rerate.apply(found[:3], "org-0", produce=send, void=void) == 3
    finally:
        await producer.stop()
    await wait_for(done, what="corrections settled")
    await running.stop(consumer)
    assert await rerate.find(pool, "org-0", t - DAY_MS, t + DAY_MS) == []

    fresh = sum(rate(u, v2.card).credits for u in usages)
    live = await pool.fetchval(
        "SELECT sum(credits) FROM settlements s WHERE org_id = 'org-0' AND NOT EXISTS"
        " (SELECT 1 FROM voids v WHERE v.org_id = s.org_id AND v.event_key = s.key"
        " AND v.voided)"
    )
    totals = await pool.fetchval(
        "SELECT sum(credits) FROM org_period_totals WHERE org_id = 'org-0'"
    )
    assert live == totals == fresh
    assert await pool.fetchval("SELECT count(*) FROM settlements WHERE key LIKE '%:r%'") == 20
