"""Engine fixtures: the two implementations behind one async interface."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from meter.engine.model import Ledger
from meter.engine.redis import RedisEngine
from meter.local_cluster import LocalRedisCluster
from meter.redis_client import connect


class AsyncLedger:
    """The reference model behind the async `Engine` interface, for tests written once."""

    def __init__(self) -> None:
        self.ledger = Ledger()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.ledger, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@pytest.fixture(params=["model", "redis", "cluster"])
def engine_url(request: pytest.FixtureRequest, redis_url: str) -> str | None:
    """Where `engine` keeps its state: nowhere (the model), the session's Redis, or the local
    Redis Cluster (started here, outside the event loop, on first use)."""
    if request.param == "model":
        return None
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return redis_url


@pytest.fixture
async def engine(engine_url: str | None) -> AsyncIterator[Any]:
    """Each test using `engine` runs against `Ledger`, against `RedisEngine` on the session's
    Redis, and against `RedisEngine` on the local Redis Cluster (organizations are unique per
    test: see `org_id`)."""
    if engine_url is None:
        yield AsyncLedger()
        return
    client = connect(engine_url)  # organizations are unique per test: no key is shared
    try:
        yield RedisEngine(client)
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_engine(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisEngine]:
    """`RedisEngine` on the local Redis Cluster, for the tests of the cluster alone."""
    client = connect(redis_cluster.url)
    try:
        yield RedisEngine(client)
    finally:
        await client.aclose()


@pytest.fixture
def org_id() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"
