"""An API application on the session's servers, a fresh database per test, HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio
import redis.asyncio as aioredis

from api.support import ADMIN_TOKEN, Addresses, client_for
from meter.api import App, build_app
from meter.settings import Settings


@pytest_asyncio.fixture(loop_scope="session")
async def app(
    settings: Settings,
    migrated_dsn: str,
    redis: aioredis.Redis,
    new_topic: Callable[..., Awaitable[str]],
) -> AsyncIterator[App]:
    topic = await new_topic(partitions=2, prefix="api")
    configured = settings.model_copy(update={"admin_token": ADMIN_TOKEN, "usage_topic": topic})
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    application = build_app(
        configured,
        Addresses(settings.redis_url, migrated_dsn, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
    )
    async with application.running():
        yield application


@pytest_asyncio.fixture(loop_scope="session")
async def admin(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, ADMIN_TOKEN) as client:
        yield client
