"""The local Redis Cluster the cluster tests share: three primaries with a replica each, routed
by hash tag, and a primary's SIGKILL answered by its replica's promotion."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

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


async def test_a_key_in_a_slot_being_moved_is_reached_through_ask(
    redis_cluster: LocalRedisCluster,
) -> None:
    """While a slot is split, the owner answers ASK for a key already moved; the client sends
    ASKING and the command on one connection (alone or from a pipeline), however many
    connections it holds to the importing node (ASKING on one and the command on another is
    answered MOVED, back to the owner, until the client gives up)."""
    client = connect(redis_cluster.url)
    key = org_key("asked-for")
    slot = key_slot(key.encode())
    source = await _owner(redis_cluster, slot)
    target = next(n for n in await redis_cluster.primaries() if n is not source)
    on_target = [org_key(f"on-target-{i}") for i in range(100)]
    there = [k for k in on_target if await _owner(redis_cluster, key_slot(k.encode())) is target]
    read: list[object] = []

    async def while_migrating() -> None:
        read.append(await client.get(key))
        await client.set(key, "written while split")
        read.append(await client.get(key))
        pipe = client.pipeline(transaction=False)  # as the rebuild reads organizations
        pipe.get(key)
        read.extend(await pipe.execute())

    try:
        await client.set(key, "moved")
        # Several commands at once open as many connections to the importing node.
        assert await asyncio.gather(*(client.get(there[0]) for _ in range(8))) == [None] * 8
        await redis_cluster.migrate_slot(slot, target, while_migrating=while_migrating)
        assert read == [b"moved", b"written while split", b"written while split"]
        assert await client.get(key) == b"written while split"
    finally:
        if await _owner(redis_cluster, slot) is not source:
            await redis_cluster.migrate_slot(slot, source)
        await client.delete(key)
        await client.aclose()


async def _owner(redis_cluster: LocalRedisCluster, slot: int) -> ClusterNode:
    return next(
        redis_cluster.node_at(info.endpoint)
        for info in await redis_cluster.topology()
        if info.primary and any(first <= slot <= last for first, last in info.slots)
    )
