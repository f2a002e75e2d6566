"""Engine fixtures: the two implementations behind one async interface."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from meter.engine.model import Ledger
from meter.engine.redis import RedisEngine


class AsyncLedger:
    """The reference model behind the async `Engine` interface, for tests written once."""

    def __init__(self) -> None:
        self.ledger = Ledger()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.ledger, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@pytest.fixture(params=["model", "redis"])
async def engine(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """Each test using `engine` runs once against `Ledger` and once against `RedisEngine`
    (organizations are unique per test: see `org_id`)."""
    if request.param == "model":
        yield AsyncLedger()
        return
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield RedisEngine(client)
    finally:
        await client.aclose()


@pytest.fixture
def org_id() -> str:
    return f"org-{uuid.uuid4().hex[:8]}"
