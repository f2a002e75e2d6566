"""Many concurrent reservations against one small balance never admit more than the balance."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from meter.engine.redis import RedisEngine
from meter.engine.types import (
    MICRO,
    BillingGroupConfig,
    Grant,
    Kind,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
)

NOW = 1_710_000_000_000


async def test_concurrent_reservations_never_overspend(redis_url: str) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=4)
    client = aioredis.Redis(connection_pool=pool)
    engine = RedisEngine(client)
    org = f"race-{uuid.uuid4().hex[:8]}"
    await engine.put_org(OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.MONTHLY, NOW - 10**9))
    await engine.put_billing_group(BillingGroupConfig(org, "team", 40 * MICRO))
    for m in range(10):
        group = "team" if m < 5 else ""
        await engine.put_member(MemberConfig(org, f"m{m}", billing_group=group))
    await engine.apply_grant(
        Grant(org, "pool", Kind.SHARED, 50 * MICRO, NOW - 1, NOW + 10**9, NOW - 1)
    )
    try:

        async def reserve(i: int) -> bool:
            result = await engine.reserve(org, f"m{i % 10}", MICRO, NOW, f"r{i}")
            return result.allowed

        admitted = await asyncio.gather(*(reserve(i) for i in range(200)))
        held = {f"r{i}" for i, ok in enumerate(admitted) if ok}
        assert len(held) == 50  # the pool: 50 credits of 1
        team = {f"r{i}" for i in range(200) if i % 10 < 5} & held
        assert len(team) <= 40  # the group limit holds under the race too
        check = await engine.check(org, "m9", 1, NOW)
        assert not check.allowed and check.available[Kind.SHARED] == 0
        releases = await asyncio.gather(*(engine.release(org, r, NOW) for r in sorted(held)))
        assert all(releases)
        assert (await engine.check(org, "m9", 50 * MICRO, NOW)).allowed
    finally:
        await client.aclose()
        await pool.aclose()
