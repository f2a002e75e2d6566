"""Each organization's loss marker lives beside its data: its config hash holds `c`, and `b`
while it is being rebuilt. Every script takes an organization without it for absent, on one
Redis and on the local cluster (where a shard restarted empty loses only its own markers)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from meter.engine.redis import RedisEngine, begin_rebuild, end_rebuild, org_key, org_present
from meter.engine.types import (
    Grant,
    Kind,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    Reason,
    UsageEvent,
)
from meter.local_cluster import LocalRedisCluster
from meter.redis_client import connect

JAN1 = 1_704_067_200_000
NOW = 1_710_000_000_000
FAR = 1_900_000_000_000
C = 1_000_000


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's Redis, or the local cluster (started outside the event loop)."""
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return redis_url


@pytest.fixture
async def engine(url: str) -> AsyncIterator[RedisEngine]:
    client = connect(url)
    try:
        yield RedisEngine(client)
    finally:
        await client.aclose()


async def _org(engine: RedisEngine) -> str:
    org_id = f"mk-{uuid.uuid4().hex[:8]}"
    await engine.put_org(OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1))
    await engine.put_member(MemberConfig(org_id, "ann"))
    await engine.apply_grant(Grant(org_id, "pool", Kind.SHARED, 100 * C, JAN1, FAR, JAN1))
    return org_id


async def test_an_org_being_rebuilt_is_absent_to_every_script(engine: RedisEngine) -> None:
    org_id = await _org(engine)
    redis = engine.client
    assert await org_present(redis, org_id) and await engine.has_org(org_id)

    await begin_rebuild(redis, org_id)
    assert not await engine.has_org(org_id)
    assert (await engine.check(org_id, "ann", 1, NOW)).reason is Reason.UNKNOWN_ORG
    settled = await engine.settle_batch(org_id, [UsageEvent("k1", org_id, "ann", C, NOW)], NOW)
    assert [s.reason for s in settled] == [Reason.UNKNOWN_ORG]
    assert await redis.hget(org_key(org_id), "r") is None  # no result stored
    # restore, the rebuild's last step, still reads it
    await engine.restore(org_id, {"pool": 60 * C}, {"drawn": 40 * C}, NOW)

    await end_rebuild(redis, org_id)
    assert await engine.has_org(org_id)
    assert await engine.balances(org_id, NOW) == {"pool": 60 * C}
    assert (await engine.check(org_id, "ann", 1, NOW)).allowed


async def test_an_org_whose_config_is_gone_is_absent(engine: RedisEngine) -> None:
    org_id = await _org(engine)
    await engine.client.delete(org_key(org_id))  # as a shard restarted empty would
    assert not await engine.has_org(org_id)
    settled = await engine.settle_batch(org_id, [UsageEvent("k1", org_id, "ann", C, NOW)], NOW)
    assert [s.reason for s in settled] == [Reason.UNKNOWN_ORG]
