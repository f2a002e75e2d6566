"""The production topology: every role its own process against the session's three servers.

`meter migrate` runs once as a job; then 2 x `meter api`, 2 x `meter consume` and
2 x `meter scheduler` (production mode, JSON logs, each with its own ports). Usage events go in
through `POST /v1/events` of both APIs with each organization's product key, checks are sent to
both APIs all the time, and mid-run the active scheduler and one consumer are killed with
SIGKILL while a period boundary passes for one organization. Then: every accepted event settled
exactly once (the dead letters are exactly the events of an unknown member sent on purpose),
Redis equals PostgreSQL equals a replay of the usage topic through the reference model
(`meter.engine.model.Ledger`), the standby scheduler holds the lease, each seated member of the
organization whose period turned has exactly one seat (occupancy and grant) per period, and the
checks kept answering: no 5xx, no connection error, no silence.

Figures of a run on the 2-core development machine (`pytest -s` prints them):
see `docs/operations.md`, "The production-topology test".
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import orjson
import redis.asyncio as aioredis
from topology_support import (
    METER,
    PARTITIONS,
    CheckLog,
    OrgUnderTest,
    Role,
    Sent,
    assigned,
    drive_checks,
    event_batch,
    now_ms,
    partition_of,
    replay,
    resumed,
    role,
    wait_for,
)

from consumers.dlq import REASON, header, scan_topic
from meter.engine.periods import DAY_MS
from meter.engine.redis import RedisEngine
from meter.engine.types import UsageEvent
from meter.lease import lease_state
from meter.roles import SCHEDULER_LEASE
from meter.services import ensure_topics
from meter.settings import Settings
from schemas.events import event_key

ADMIN = "topology-admin-token-0123456789abcdef"
ORGS = 6
"""Organizations on a monthly plan; one more, on a one-day rolling plan, turns its period."""
MEMBERS = 8
BATCHES = 80
BATCH = 250
DRIVE_S = 30.0
"""The events are spread over this long; the faults and the period boundary fall inside it."""
KILL_SCHEDULER_AT_S = 6.0
KILL_CONSUMER_AT_S = 10.0
BOUNDARY_AT_S = 20.0
GHOST_EVERY = 16
"""Every 16th batch carries one event of an unknown member: the only dead letters expected."""
SEAT = "40"
SHARED = "500"
LIMIT = "30"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def setup_orgs(api: str, boundary_ms: int) -> tuple[list[OrgUnderTest], OrgUnderTest]:
    """Plans, organizations with members (some limited), a shared pack and a product key each."""
    suffix = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(
        base_url=api, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30.0
    ) as admin:

        async def ok(method: str, path: str, body: dict[str, object], token: str = ADMIN) -> dict:  # type: ignore[type-arg]
            r = await admin.request(
                method, path, json=body, headers={"authorization": f"Bearer {token}"}
            )
            assert r.status_code in (200, 201), (path, r.text)
            out: dict = r.json()  # type: ignore[type-arg]
            return out

        common = {"seat_credits": SEAT, "prorate": False, "limit_policy": "all"}
        await ok("POST", "/v1/plans", {"plan_id": f"monthly-{suffix}", "name": "M", **common})
        await ok(
            "POST", "/v1/plans",
            {"plan_id": f"daily-{suffix}", "name": "D", "period_kind": "rolling",
             "rolling_days": 1, **common},
        )  # fmt: skip
        billing = (await ok("POST", "/v1/keys", {"scope": "billing", "name": "billing"}))["token"]
        orgs: list[OrgUnderTest] = []
        for o in range(ORGS + 1):
            org_id = f"topo-{suffix}-{o}"
            body: dict[str, object] = {
                "org_id": org_id, "name": org_id, "plan_id": f"monthly-{suffix}",
                "grace_seconds": 3600,
            }  # fmt: skip
            if o == ORGS:
                # The period of this organization ends at `boundary_ms`.
                body |= {"plan_id": f"daily-{suffix}", "billing_anchor": iso(boundary_ms - DAY_MS)}
            await ok("POST", "/v1/orgs", body)
            members = [f"m{m}" for m in range(MEMBERS)]
            for m, member in enumerate(members):
                limit = {"member_limit": LIMIT} if m % 4 == 0 else {}
                await ok("POST", f"/v1/orgs/{org_id}/members", {"member_id": member, **limit})
            await ok(
                "POST", f"/v1/orgs/{org_id}/grants",
                {"kind": "shared", "amount": SHARED, "expires_at": "2099-01-01T00:00:00Z"},
                billing,
            )  # fmt: skip
            key = await ok("POST", f"/v1/orgs/{org_id}/keys", {"scope": "product", "name": "p"})
            orgs.append(OrgUnderTest(org_id, members, key["token"]))
    return orgs, orgs[-1]


async def send_events(
    apis: list[str], orgs: list[OrgUnderTest], boundary: OrgUnderTest, boundary_ms: int,
    seats_issued: asyncio.Event, started: float, on_sent: Callable[[OrgUnderTest], None],
) -> list[Sent]:  # fmt: skip
    """`BATCHES` batches spread over `DRIVE_S`, organizations in turn, APIs in turn. The
    boundary organization's events of its new period wait until its seats are in Redis (the
    replay applies every grant first, so an event must not settle before its seat exists)."""
    rnd = random.Random(7)
    sent: list[Sent] = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        for i in range(BATCHES):
            await asyncio.sleep(max(0.0, started + i * DRIVE_S / BATCHES - time.monotonic()))
            org = orgs[i % len(orgs)]
            if org is boundary and now_ms() >= boundary_ms - 1_000 and not seats_issued.is_set():
                org = orgs[(i + 1) % len(orgs)]
            body, events = event_batch(org, BATCH, rnd, f"b{i}", ghost=i % GHOST_EVERY == 0)
            r = await client.post(
                apis[i % len(apis)] + "/v1/events",
                content=body,
                headers={
                    "authorization": f"Bearer {org.product_key}",
                    "content-type": "application/cloudevents-batch+json",
                },
            )
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == len(events), r.text
            sent.extend(events)
            on_sent(org)
    return sent


async def watch_seats(
    engine: RedisEngine, org: OrgUnderTest, boundary_ms: int, issued: asyncio.Event
) -> float:
    """Seconds from the boundary until every member's seat of the new period is in Redis."""
    wanted = {f"seat:{m}:{boundary_ms}" for m in org.members}

    async def in_redis() -> bool:
        return wanted <= set(await engine.balances(org.org_id, now_ms()))

    await wait_for(in_redis, 120, "the seats of the new period in Redis")
    issued.set()
    return (now_ms() - boundary_ms) / 1000


async def test_production_topology(
    settings: Settings, pg_dsn_clean: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    usage, dlq = f"topo.usage.{suffix}", f"topo.dlq.{suffix}"
    bootstrap = settings.kafka_bootstrap or ""
    await ensure_topics(bootstrap, {usage: PARTITIONS, dlq: 1})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("METER_")},
        "METER_ENV": "production",
        "METER_KAFKA_BOOTSTRAP": bootstrap,
        "METER_REDIS_URL": settings.redis_url or "",
        "METER_POSTGRES_DSN": pg_dsn_clean,
        "METER_USAGE_TOPIC": usage,
        "METER_DLQ_TOPIC": dlq,
        "METER_BILLING_TOPIC": f"topo.billing.{suffix}",
        "METER_ALERTS_TOPIC": f"topo.alerts.{suffix}",
        "METER_CONSUMER_GROUP": f"topo-{suffix}",
        "METER_ADMIN_TOKEN": ADMIN,
        "METER_DATA_DIR": str(tmp_path / "data"),
        "METER_LOG_FORMAT": "json",
    }
    migrate = await asyncio.create_subprocess_exec(
        METER, "migrate", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(migrate.communicate(), 120)
    assert migrate.returncode == 0, output.decode(errors="replace")

    apis = [role("api", i, env, tmp_path) for i in range(2)]
    consumers = [role("consume", i, env, tmp_path) for i in range(2)]
    schedulers = [role("scheduler", i, env, tmp_path) for i in range(2)]
    stack = apis + consumers + schedulers
    engine = RedisEngine(redis)
    pool = await asyncpg.create_pool(pg_dsn_clean, min_size=1, max_size=4)
    checks, stop_checks = CheckLog(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    drivers: list[asyncio.Task[object]] = []
    try:
        launched = time.monotonic()
        for r in stack:
            r.start()
        await asyncio.gather(*(r.wait_ready() for r in stack))
        ready_s = time.monotonic() - launched

        boundary_ms = now_ms() + int(BOUNDARY_AT_S * 1000) + 5_000
        orgs, boundary = await setup_orgs(apis[0].url, boundary_ms)
        started = time.monotonic()
        boundary_at = started + (boundary_ms - now_ms()) / 1000
        tasks = [
            asyncio.create_task(drive_checks(i, a.url, orgs, checks, stop_checks))
            for i, a in enumerate(apis)
        ]
        seats_issued = asyncio.Event()
        seats = asyncio.create_task(watch_seats(engine, boundary, boundary_ms, seats_issued))
        drivers.append(seats)
        victims: list[Role] = []
        consumer_killed = asyncio.Event()

        def kill_consumer_mid_batch(org: OrgUnderTest) -> None:
            """After `KILL_CONSUMER_AT_S`, kill the consumer owning the partition of a batch
            just acknowledged, while it settles it. Which consumer that is depends on how the
            group dealt the partitions and on which partitions the organizations hash to."""
            if consumer_killed.is_set() or time.monotonic() < started + KILL_CONSUMER_AT_S:
                return
            owner = next((c for c in consumers if partition_of(org.org_id) in assigned(c)), None)
            if owner is not None:
                victims.append(owner)
                consumer_killed.set()
                asyncio.get_running_loop().call_later(0.02, owner.kill)

        sending = asyncio.create_task(
            send_events(
                [a.url for a in apis],
                orgs,
                boundary,
                boundary_ms,
                seats_issued,
                started,
                kill_consumer_mid_batch,
            )
        )
        drivers.append(sending)

        # The active scheduler dies without giving its lease up; the standby must take it.
        await asyncio.sleep(max(0.0, started + KILL_SCHEDULER_AT_S - time.monotonic()))
        holder = (await lease_state(pool, SCHEDULER_LEASE)).holder
        assert holder is not None
        active = next(s for s in schedulers if s.pid == int(holder.split(":")[1]))
        standby = next(s for s in schedulers if s is not active)
        active.kill()
        scheduler_killed = time.monotonic()

        async def standby_holds() -> bool:
            state = await lease_state(pool, SCHEDULER_LEASE)
            return state.live and f":{standby.pid}:" in (state.holder or "")

        failover_s = await wait_for(standby_holds, 15, "the standby scheduler holds the lease")

        # One consumer dies mid-batch; the other takes its partitions after the rebalance.
        try:
            await asyncio.wait_for(consumer_killed.wait(), DRIVE_S)
        except TimeoutError:
            raise AssertionError(
                "no consumer owned a partition of a batch sent after"
                f" {KILL_CONSUMER_AT_S} s: assigned {[assigned(c) for c in consumers]},"
                f" organizations' partitions {[partition_of(o.org_id) for o in orgs]}"
            ) from None
        consumer_killed_at = time.monotonic()
        survivor = next(c for c in consumers if c is not victims[0])

        sent = await sending
        drive_s = time.monotonic() - started
        seat_delay_s = await asyncio.wait_for(seats, 60)

        valid = {(e.org_id, e.key) for e in sent if e.member_id != "ghost"}
        ghosts = {e.key for e in sent if e.member_id == "ghost"}

        async def all_settled() -> bool:
            count: int = await pool.fetchval("SELECT count(*) FROM settlements")
            return count >= len(valid)

        await wait_for(all_settled, 120, "every accepted event settled")
        settled_s = time.monotonic() - started
        stop_checks.set()
        await asyncio.gather(*tasks)
        assert survivor.proc is not None and survivor.proc.poll() is None
        assert standby.proc is not None and standby.proc.poll() is None

        # Exactly once: the settlements are the accepted events of known members, one each.
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT org_id, key, unfunded FROM settlements")
            assert len(rows) == len(valid)
            assert {(r["org_id"], r["key"]) for r in rows} == valid
            pg_lines: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
            for line in await conn.fetch(
                "SELECT org_id, key, bucket_id, amount FROM settlement_lines"
            ):
                pg_lines[(line["org_id"], line["key"])].append((line["bucket_id"], line["amount"]))
            pg_unfunded = {(r["org_id"], r["key"]): r["unfunded"] for r in rows}

            letters = [r async for r in scan_topic(bootstrap, dlq)]
            dead = Counter(header(r.headers, REASON) for r in letters)
            dead_keys = {
                event_key(d["source"], d["id"])
                for d in map(orjson.loads, (r.value for r in letters))
            }
            assert dead_keys == ghosts and dead == {"unknown_member": len(ghosts)}, dead

            # The replay: the usage topic in log order through the reference model.
            by_key = {(e.org_id, e.key): e for e in sent}
            log_events = []
            async for record in scan_topic(bootstrap, usage):
                doc = orjson.loads(record.value)
                e = by_key[(doc["data"]["org_id"], event_key(doc["source"], doc["id"]))]
                log_events.append(UsageEvent(e.key, e.org_id, e.member_id, e.credits, e.time_ms))
            assert len(log_events) == len(sent)
            at = now_ms()
            ledger, results = await replay(conn, log_events, at)
            for ev, result in zip(log_events, results, strict=True):
                if ev.member_id == "ghost":
                    assert result.reason == "unknown_member"
                    continue
                assert result.reason is None and not result.duplicate, ev.key
                assert result.unfunded == pg_unfunded[(ev.org_id, ev.key)], ev.key
                lines = sorted((line.bucket_id, line.amount) for line in result.lines)
                assert lines == sorted(pg_lines[(ev.org_id, ev.key)]), ev.key

            left_pg: dict[str, Counter[str]] = defaultdict(Counter)
            for g in await conn.fetch("SELECT org_id, bucket_id, amount FROM credit_grants"):
                left_pg[g["org_id"]][g["bucket_id"]] += g["amount"]
            for org_id, key in valid:
                for bucket_id, amount in pg_lines[(org_id, key)]:
                    left_pg[org_id][bucket_id] -= amount
            old_period = boundary_ms - 1
            for org in orgs:
                in_redis = await engine.balances(org.org_id, at)
                assert in_redis == ledger.balances(org.org_id, at), org.org_id
                assert in_redis == dict(left_pg[org.org_id]), org.org_id
                for t in (at, old_period):
                    assert await engine.usage(org.org_id, t) == ledger.usage(org.org_id, t)

            # Each seated member of the organization whose period turned: one seat a period.
            occupancy = await conn.fetch(
                "SELECT member_id, period_start FROM seat_occupancy WHERE org_id = $1",
                boundary.org_id,
            )
            seat_grants = await conn.fetch(
                "SELECT member_id, valid_from FROM credit_grants WHERE org_id = $1"
                " AND kind = 'seat'",
                boundary.org_id,
            )
        new_start = datetime.fromtimestamp(boundary_ms / 1000, UTC)
        for member in boundary.members:
            mine = [r["period_start"] for r in occupancy if r["member_id"] == member]
            assert len(mine) == 2 and mine.count(new_start) == 1, (member, mine)
            grants = [r["valid_from"] for r in seat_grants if r["member_id"] == member]
            assert len(grants) == 2 and sum(v >= new_start for v in grants) == 1, (member, grants)
        assert f":{standby.pid}:" in ((await lease_state(pool, SCHEDULER_LEASE)).holder or "")

        # Checks kept answering on both APIs: no 5xx, no connection error, never silent long.
        everything = list(range(len(checks.at)))
        again = resumed(survivor)
        statuses = Counter(checks.status)
        assert set(statuses) == {200}, statuses
        end = checks.at[-1]
        gaps = [checks.longest_gap(i, started, end) for i in range(len(apis))]
        assert max(gaps) < 5.0, gaps

        print(
            "\nproduction topology:"
            f"\n  six processes ready {ready_s:.1f} s after launch;"
            f" events accepted {len(sent)} ({len(valid)} settled, {len(ghosts)} dead letters)"
            f" in {drive_s:.1f} s through 2 APIs; all settled {settled_s:.1f} s after the first"
            f"\n  consumer killed {consumer_killed_at - started:.1f} s in; the survivor found"
            f" {again[0]} records settled already in PostgreSQL and answered {again[1]} from"
            f" results Redis kept"
            f"\n  scheduler failover {failover_s:.2f} s after kill -9;"
            f" seats of the new period in Redis {seat_delay_s:.2f} s after the boundary"
            f"\n  checks: {checks.summary(everything)}; answers {dict(checks.allowed)}"
            f"\n  longest silence per API {gaps[0]:.2f} / {gaps[1]:.2f} s"
            f"\n  10 s after the scheduler kill: "
            f"{checks.summary(checks.window(scheduler_killed, scheduler_killed + 10))}"
            f"\n  10 s after the consumer kill: "
            f"{checks.summary(checks.window(consumer_killed_at, consumer_killed_at + 10))}"
            f"\n  10 s after the boundary: "
            f"{checks.summary(checks.window(boundary_at, boundary_at + 10))}"
        )
    finally:
        stop_checks.set()
        for task in [*tasks, *drivers]:
            task.cancel()
        await asyncio.gather(*tasks, *drivers, return_exceptions=True)
        for r in stack:
            r.stop()
        await pool.close()
