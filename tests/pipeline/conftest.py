"""Fixtures of the pipeline tests: fresh topics, consumer group and database per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import pytest_asyncio
import redis.asyncio as aioredis

from consumers.settle import ConsumerOptions, SettleConsumer, build_consumer
from meter.engine.redis import RedisEngine
from meter.recovery import Recovery
from meter.settings import Settings


@pytest_asyncio.fixture(loop_scope="session")
async def pipe_settings(
    settings: Settings, migrated_dsn: str, new_topic: Callable[..., Awaitable[str]]
) -> Settings:
    """Settings with a new usage topic, dead-letter topic, consumer group and database."""
    usage = await new_topic(prefix="usage")
    dlq = await new_topic(prefix="dlq")
    return settings.model_copy(
        update={
            "usage_topic": usage,
            "dlq_topic": dlq,
            "consumer_group": f"settle-{uuid.uuid4().hex[:8]}",
            "postgres_dsn": migrated_dsn,
        }
    )


@pytest_asyncio.fixture(loop_scope="session")
async def pool(migrated_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(redis: aioredis.Redis) -> RedisEngine:
    return RedisEngine(redis)


class Running:
    """Consumers running in this process, stopped (and awaited) at the end of the test. Each
    rebuilds a Redis that lost its data (`meter.rebuild.Recovery`), as `meter consume` does."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.tasks: list[tuple[SettleConsumer, asyncio.Task[None]]] = []

    def start(
        self,
        settings: Settings,
        engine: RedisEngine,
        options: ConsumerOptions | None = None,
        *,
        redis: aioredis.Redis | None = None,
    ) -> SettleConsumer:
        """A consumer settling through `engine`, whose client is `redis` (default: the
        session's Redis)."""
        assert settings.postgres_dsn
        recovery = Recovery(settings.postgres_dsn, redis or self.redis, engine)
        consumer = build_consumer(
            settings,
            engine,
            options=options or ConsumerOptions(batch_max_records=500),
            recovery=recovery,
        )
        self.tasks.append((consumer, asyncio.create_task(consumer.run())))
        return consumer

    async def stop(self, consumer: SettleConsumer) -> None:
        for c, task in self.tasks:
            if c is consumer:
                c.stop()
                await task

    async def stop_all(self) -> None:
        for c, _ in self.tasks:
            c.stop()
        await asyncio.gather(*(t for _, t in self.tasks))
        self.tasks.clear()


@pytest_asyncio.fixture(loop_scope="session")
async def running(redis: aioredis.Redis) -> AsyncIterator[Running]:
    r = Running(redis)
    try:
        yield r
    finally:
        await r.stop_all()
