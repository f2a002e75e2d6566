"""The local Redis Cluster the cluster tests share: three primaries with a replica each, routed
by hash tag, and a primary's SIGKILL answered by its replica's promotion."""

from __future__ import annotations

from meter.engine.redis import org_key
from meter.local_cluster import ClusterNode, LocalRedisCluster
from meter.redis_client import connect


async def test_three_primaries_share_the_slots(redis_cluster: LocalRedisCluster) -> None:
    primaries = await redis_cluster.primaries()
    assert len(primaries) == 3
    topology = await redis_cluster.topology()
    assert sum(1 for info in topology if not info.primary) == 3
    covered = sum(last - first + 1 for info in topology for first, last in info.slots)
    assert covered == 16384


async def test_a_killed_primary_is_replaced_by_its_replica(
    redis_cluster: LocalRedisCluster,
) -> None:
    client = connect(redis_cluster.url)
    try:
        await client.set(org_key("kill-me"), "kept")
        slot = await client.execute_command("CLUSTER KEYSLOT", org_key("kill-me"))
        owner = next(
            info
            for info in await redis_cluster.topology()
            if any(first <= slot <= last for first, last in info.slots)
        )
        victim = redis_cluster.node_at(owner.endpoint)
        await _wait_replicated(victim)
        promoted = await redis_cluster.kill_primary(victim)
        assert promoted is not victim
        assert not victim.running
        assert await client.get(org_key("kill-me")) == b"kept"
    finally:
        await client.aclose()
    await redis_cluster.restart(victim)
    assert len(await redis_cluster.primaries()) == 3
    assert victim not in await redis_cluster.primaries()


async def _wait_replicated(node: ClusterNode) -> None:
    """WAIT until the node's writes reached its replica."""
    direct = node.client()
    try:
        assert await direct.execute_command("WAIT", 1, 5000) == 1
    finally:
        await direct.aclose()
