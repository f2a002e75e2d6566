"""The API on a Redis Cluster URL: administration and the quota routes go through redis-py's
cluster client (the single-server pipelined client is not used), each organization's calls on
the primary owning its slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio

from api import test_quota as quota
from api.support import ADMIN_TOKEN, Addresses, client_for, make_org
from meter.api import App, build_app
from meter.engine.redis import org_key
from meter.local_cluster import LocalRedisCluster
from meter.redis_client import connect
from meter.settings import Settings


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_app(
    settings: Settings,
    migrated_dsn: str,
    redis_cluster: LocalRedisCluster,
    new_topic: Callable[..., Awaitable[str]],
) -> AsyncIterator[App]:
    topic = await new_topic(partitions=2, prefix="api")
    configured = settings.model_copy(
        update={
            "admin_token": ADMIN_TOKEN,
            "usage_topic": topic,
            "redis_url": redis_cluster.url,
        }
    )
    assert settings.kafka_bootstrap is not None
    application = build_app(
        configured,
        Addresses(redis_cluster.url, migrated_dsn, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
    )
    async with application.running():
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_admin(cluster_app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(cluster_app, ADMIN_TOKEN) as client:
        yield client


async def test_check_reserve_release_on_a_cluster(
    cluster_app: App, cluster_admin: httpx.AsyncClient
) -> None:
    await quota.test_check_reserve_release(cluster_app, cluster_admin)


async def test_organizations_on_every_primary_answer_checks(
    cluster_app: App, cluster_admin: httpx.AsyncClient, redis_cluster: LocalRedisCluster
) -> None:
    topology = {info.endpoint: info for info in await redis_cluster.topology()}
    client = connect(redis_cluster.url)
    owners: set[str] = set()
    try:
        for _ in range(40):  # random ids: until every primary owns one of them
            if len(owners) == 3:
                break
            org = await make_org(cluster_admin)
            r = await cluster_admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})
            assert r.status_code == 201, r.text
            r = await cluster_admin.post(
                "/v1/check", json={"org_id": org, "member_id": "ann", "credits": 1}
            )
            assert r.status_code == 200, r.text
            assert r.json()["reason"] == "insufficient_credits"
            slot = await client.cluster_keyslot(org_key(org))
            owners |= {
                endpoint
                for endpoint, info in topology.items()
                if info.primary and any(a <= slot <= b for a, b in info.slots)
            }
    finally:
        await client.aclose()
    assert len(owners) == 3
