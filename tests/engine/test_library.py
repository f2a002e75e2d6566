"""The engine's Redis Functions library: loaded again after FUNCTION FLUSH (FLUSHALL keeps it),
on one Redis and on every primary of the local Redis Cluster; versioned by its source."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from meter.engine.redis import RedisEngine, library
from meter.engine.types import (
    MICRO,
    Grant,
    Kind,
    LimitPolicy,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    UsageEvent,
)
from meter.local_cluster import LocalRedisCluster
from meter.redis_client import connect

NOW = 1_710_000_000_000
ANCHOR = 1_709_251_200_000  # 2024-03-01
MARCH_END = 1_711_929_600_000  # 2024-04-01


@pytest.fixture(params=["redis", "cluster"])
def cluster(request: pytest.FixtureRequest) -> LocalRedisCluster | None:
    """The local Redis Cluster (started here, outside the event loop), or None: one Redis."""
    if request.param == "cluster":
        found: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return found
    return None


@pytest.fixture
async def target(
    cluster: LocalRedisCluster | None, redis_url: str
) -> AsyncIterator[tuple[RedisEngine, list[aioredis.Redis]]]:
    """An engine, and a direct client of each server it loads the library on."""
    if cluster is not None:
        client = connect(cluster.url)
        servers = [node.client() for node in await cluster.primaries()]
    else:
        client = connect(redis_url)
        servers = [aioredis.Redis.from_url(redis_url)]
    try:
        yield RedisEngine(client), servers
    finally:
        for server in servers:
            await server.aclose()
        await client.aclose()


async def test_settles_and_checks_after_function_flush(
    target: tuple[RedisEngine, list[aioredis.Redis]], org_id: str
) -> None:
    engine, servers = target
    await engine.put_org(
        OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, ANCHOR, 30, LimitPolicy.ALL)
    )
    await engine.put_member(MemberConfig(org_id, "ann", True, None, "team"))
    await engine.apply_grant(
        Grant(org_id, "seat", Kind.SEAT, 10 * MICRO, ANCHOR, MARCH_END, ANCHOR, "ann")
    )
    for server in servers:
        assert await server.function_flush() in (True, b"OK")
        assert not await server.function_list(library=library().name)
    [settled] = await engine.settle_batch(
        org_id, [UsageEvent(f"{org_id}-e1", org_id, "ann", 4 * MICRO, NOW)], NOW
    )
    assert settled.reason is None and settled.unfunded == 0
    assert sum(line.amount for line in settled.lines) == 4 * MICRO
    for server in servers:
        await server.function_flush()
    checked = await engine.check(org_id, "ann", 6 * MICRO, NOW)
    assert checked.allowed and checked.available[Kind.SEAT] == 6 * MICRO
    assert not (await engine.check(org_id, "ann", 6 * MICRO + 1, NOW)).allowed
    await engine.confirm(org_id, [settled.key])


async def test_flushall_keeps_the_library(redis: aioredis.Redis) -> None:
    engine = RedisEngine(redis)
    await engine.load_scripts()
    await redis.flushall()
    assert await redis.function_list(library=library().name)


def test_the_library_is_named_for_its_source() -> None:
    lib = library()
    version = lib.name.removeprefix("meter_")
    assert len(version) == 12 and lib.source.startswith(f"#!lua name={lib.name}\n")
    assert all(name.endswith(f"_{version}") for name in lib.functions.values())
