"""The engine on the local Redis Cluster: its library on every primary, loaded again where a
primary forgot it, and each organization's keys on the primary owning its hash tag's slot."""

from __future__ import annotations

from meter.engine.redis import RedisEngine, library, org_key
from meter.engine.types import LimitPolicy, OrgConfig, OrgStatus, PeriodKind, Reason
from meter.local_cluster import ClusterNode, LocalRedisCluster

NOW = 1_710_000_000_000


async def _library_on(node: ClusterNode) -> bool:
    direct = node.client()
    try:
        return bool(await direct.function_list(library=library().name))
    finally:
        await direct.aclose()


async def _flush_functions(redis_cluster: LocalRedisCluster) -> None:
    for node in await redis_cluster.primaries():
        direct = node.client()
        try:
            await direct.function_flush()
        finally:
            await direct.aclose()


async def test_the_library_is_loaded_on_every_primary(
    redis_cluster: LocalRedisCluster, cluster_engine: RedisEngine
) -> None:
    await cluster_engine.load_scripts()
    for node in await redis_cluster.primaries():
        assert await _library_on(node)


async def test_a_primary_that_forgot_the_library_is_given_it_again(
    redis_cluster: LocalRedisCluster, cluster_engine: RedisEngine
) -> None:
    await cluster_engine.load_scripts()
    await _flush_functions(redis_cluster)
    result = await cluster_engine.check("nobody-here", "m", 1, NOW)
    assert result.reason is Reason.UNKNOWN_ORG
    for node in await redis_cluster.primaries():
        assert await _library_on(node)


async def test_each_organization_lives_on_the_primary_owning_its_slot(
    redis_cluster: LocalRedisCluster, cluster_engine: RedisEngine
) -> None:
    primaries = await redis_cluster.primaries()
    topology = {info.endpoint: info for info in await redis_cluster.topology()}
    owners: set[str] = set()
    for i in range(12):
        org_id = f"spread-{i}"
        await cluster_engine.put_org(
            OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, NOW, 30, LimitPolicy.ALL)
        )
        slot = await cluster_engine.client.cluster_keyslot(org_key(org_id))
        owner = next(
            node
            for node in primaries
            if any(a <= slot <= b for a, b in topology[node.endpoint].slots)
        )
        direct = owner.client()
        try:
            assert await direct.exists(org_key(org_id)) == 1
        finally:
            await direct.aclose()
        assert await cluster_engine.has_org(org_id)
        owners.add(owner.endpoint)
    assert len(owners) == 3
