"""`meter bench engine [--json]`: the settle script alone, against real Redis.

Sets up `--orgs` organizations with `--members` members in all (each member a seat and a personal
bucket, each organization three shared packs, billing groups with limits and member limits, so
every event walks the full rule set), then settles `--events` synthetic events per batch size in
batches of that size, one script call per batch, the organizations in parallel. Reported per
batch size: events/s seen by this client, and Redis CPU microseconds per event: the `fcall` and
`fcall_ro` time of INFO commandstats over the run (settle and confirm functions) divided by the
events.
Then `--calls` checks and as many reservations (one credit each, distinct ids) on the first
organization, random members: Redis CPU microseconds per call of each. Also the Redis memory per
member (every key of the organizations except the pending results, which `confirm` removes).

Target (DESIGN 5): <= 6 us of Redis time per event at batch 100.
With `--json` the last line is one JSON object with `events_per_s` and `redis_us_per_event` (of
the smallest batch size), `by_batch`, and `check_us` / `reserve_us` per call.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from meter.engine.periods import DAY_MS, period_at
from meter.engine.redis import RedisEngine, org_key
from meter.engine.types import (
    MICRO,
    BillingGroupConfig,
    Grant,
    Kind,
    MemberConfig,
    MemberEncoding,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    UsageEvent,
)
from meter.redis_client import connect as redis_connect

KEY_SUFFIXES = ("o", "g", "m", "sh", "r", "v", "h", "hx", "ha")


async def _redis_usec(client: aioredis.Redis) -> int:
    """Redis CPU microseconds spent in the engine's functions so far (commands a function runs
    are counted in its time, and again under their own names, so only the calls are summed)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("fcall", "fcall_ro"))


async def _setup(engine: RedisEngine, org: OrgConfig, members: int) -> list[str]:
    ids = [f"m{i:04d}" for i in range(members)]
    period = period_at(org, org.anchor_ms)
    for g in range(3):
        await engine.put_billing_group(BillingGroupConfig(org.org_id, f"g{g}", 10**9 * MICRO))
    for p in range(3):
        await engine.apply_grant(
            Grant(org.org_id, f"pack{p}", Kind.SHARED, 10**8 * MICRO, org.anchor_ms,
                  org.anchor_ms + (90 + p) * DAY_MS, org.anchor_ms)
        )  # fmt: skip
    for i, m in enumerate(ids):
        limit = None if i % 2 else 10**7 * MICRO
        await engine.put_member(MemberConfig(org.org_id, m, True, limit, f"g{i % 4}"))
        await engine.apply_grant(
            Grant(org.org_id, f"{m}-seat", Kind.SEAT, 3000 * MICRO, period.start_ms,
                  period.end_ms, period.start_ms, m)
        )  # fmt: skip
        await engine.apply_grant(
            Grant(org.org_id, f"{m}-addon", Kind.PERSONAL, 1000 * MICRO, period.start_ms,
                  period.end_ms + 30 * DAY_MS, period.start_ms, m)
        )  # fmt: skip
    return ids


async def _org_keys(client: aioredis.Redis, org_id: str) -> list[str]:
    prefix = org_key(org_id)[:-1]
    keys = [prefix + s for s in KEY_SUFFIXES]
    keys += [k.decode() async for k in client.scan_iter(match=f"{prefix}c:*", count=1000)]
    return keys


async def bench_engine(
    redis_url: str,
    *,
    json_out: bool,
    orgs: int = 10,
    members: int = 1000,
    events: int = 100_000,
    batch_sizes: Sequence[int] = (100, 1000),
    calls: int = 2000,
    seed: int = 1,
    encoding: MemberEncoding = "binary",
) -> dict[str, Any]:
    """Run the benchmark against `redis_url`, print the report (and a JSON line when
    `json_out`), return the numbers. Creates its own organizations and deletes them after."""
    rng = random.Random(seed)
    client = redis_connect(redis_url, max_connections=orgs + 2)
    engine = RedisEngine(client, encoding=encoding)
    run_id = uuid.uuid4().hex[:8]
    anchor = int(time.time() * 1000) - 10 * DAY_MS
    configs = [
        OrgConfig(f"bench-{run_id}-{o}", OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor)
        for o in range(orgs)
    ]
    try:
        await engine.load_scripts()
        member_ids: dict[str, list[str]] = {}
        for org in configs:
            await engine.put_org(org)
            member_ids[org.org_id] = await _setup(engine, org, members // orgs)
        by_batch: dict[str, dict[str, float]] = {}
        for size in batch_sizes:
            per_org = max(1, events // (orgs * size))

            async def settle_org(org: OrgConfig, size: int = size, per_org: int = per_org) -> None:
                now = anchor + DAY_MS
                ids = member_ids[org.org_id]
                for b in range(per_org):
                    batch = [
                        UsageEvent(
                            f"{size}-{b}-{i}",
                            org.org_id,
                            rng.choice(ids),
                            rng.randrange(1, 20) * MICRO // 10,
                            now,
                        )
                        for i in range(size)
                    ]
                    await engine.settle_batch(org.org_id, batch, now, trusted=True)
                    # As the settlement store does once it holds the batch.
                    await engine.confirm(org.org_id, [ev.key for ev in batch])

            before = await _redis_usec(client)
            started = time.perf_counter()
            await asyncio.gather(*(settle_org(org) for org in configs))
            elapsed = time.perf_counter() - started
            settled = per_org * orgs * size
            redis_us = (await _redis_usec(client) - before) / settled
            by_batch[str(size)] = {
                "events": settled,
                "events_per_s": round(settled / elapsed),
                "redis_us_per_event": round(redis_us, 2),
            }
        org = configs[0]
        ids = member_ids[org.org_id]
        now = anchor + DAY_MS
        before = await _redis_usec(client)
        for _ in range(calls):
            await engine.check(org.org_id, rng.choice(ids), MICRO, now)
        check_us = (await _redis_usec(client) - before) / max(1, calls)
        before = await _redis_usec(client)
        for i in range(calls):
            await engine.reserve(org.org_id, rng.choice(ids), MICRO, now, f"bench-{i}")
        reserve_us = (await _redis_usec(client) - before) / max(1, calls)
        for i in range(calls):
            await engine.release(org.org_id, f"bench-{i}", now)
        used = 0
        for org in configs:
            for key in await _org_keys(client, org.org_id):
                if not key.endswith(":r"):
                    used += await client.memory_usage(key) or 0
        first = by_batch[str(min(batch_sizes))]
        result: dict[str, Any] = {
            "events_per_s": first["events_per_s"],
            "redis_us_per_event": first["redis_us_per_event"],
            "redis_bytes_per_member": round(used / members),
            "orgs": orgs,
            "members": members,
            "encoding": encoding,
            "by_batch": by_batch,
            "check_us": round(check_us, 2),
            "reserve_us": round(reserve_us, 2),
        }
    finally:
        for org in configs:
            keys = await _org_keys(client, org.org_id)
            for at in range(0, len(keys), 500):
                await client.delete(*keys[at : at + 500])
        await client.aclose()
    for label, numbers in by_batch.items():
        print(
            f"batch {label:>5}: {numbers['events']:>8} events, {numbers['events_per_s']:>8} "
            f"events/s, {numbers['redis_us_per_event']:>6} us of Redis per event"
        )
    print(f"check: {result['check_us']} us of Redis per call, reserve: {result['reserve_us']} us")
    print(f"Redis memory: {result['redis_bytes_per_member']} bytes per member")
    if json_out:
        print(orjson.dumps(result).decode())
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--members", type=int, default=1000, help="in all organizations")
    parser.add_argument("--events", type=int, default=100_000, help="per batch size")
    parser.add_argument("--calls", type=int, default=2000, help="checks, and reservations")
    parser.add_argument(
        "--batch", type=int, action="append", help="batch size (repeatable; default 100 and 1000)"
    )
    parser.add_argument(
        "--encoding", choices=["binary", "text"], default="binary", help="of the members written"
    )


async def run(args: argparse.Namespace, settings: Any) -> int:
    """Handler of `meter bench engine`: uses the configured Redis or starts a local one."""
    from meter.services import provision

    async with provision(settings, only=["redis"]) as services:
        await bench_engine(
            services.redis_url,
            json_out=args.json,
            orgs=args.orgs,
            members=args.members,
            events=args.events,
            batch_sizes=args.batch or (100, 1000),
            calls=args.calls,
            encoding=args.encoding,
        )
    return 0


def configure(
    parser: argparse.ArgumentParser,
) -> Callable[[argparse.Namespace, Any], Awaitable[int]]:
    """For the CLI: `meter bench engine`."""
    add_arguments(parser)
    return run


async def main(argv: Sequence[str]) -> int:
    """`meter bench engine` without the CLI: parse `argv`, run."""
    from meter.settings import load_settings

    parser = argparse.ArgumentParser(prog="meter bench engine", description=__doc__)
    add_arguments(parser)
    return await run(parser.parse_args(argv), load_settings())
