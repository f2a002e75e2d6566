"""Shared fixtures: real Kafka, Redis and PostgreSQL for the whole test session.

`services` uses the servers named by `METER_KAFKA_BOOTSTRAP`, `METER_REDIS_URL` and
`METER_POSTGRES_DSN`, and starts local ones for those left unset (see `meter.services`).
Tests get isolation from fresh PostgreSQL databases (`pg_dsn_clean`, `migrated_dsn`), a flushed
Redis database (`redis`) and uniquely named Kafka topics (`new_topic`). Fault tests that stop or
kill a server use servers of their own: `private_redis`, `private_postgres`, `private_kafka`.
Tests that need a Redis Cluster share one local cluster per run (`redis_cluster`), started on
first use.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from meter.local_cluster import LocalRedisCluster
from meter.migrate import migrate
from meter.services import (
    KafkaServer,
    PostgresServer,
    RedisServer,
    Services,
    create_database,
    drop_database,
    ensure_topics,
    provision,
    settings_topics,
    with_database,
)
from meter.settings import Settings, load_settings


def _server_dir(prefix: str) -> Path:
    """A directory for a local server's data, outside pytest's temporary tree: pytest makes that
    tree private to root at each start, which the unprivileged PostgreSQL user cannot enter."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A session-wide directory for local server data and logs."""
    path = _server_dir("meter-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def env_settings(data_dir: Path) -> Settings:
    """Settings from the environment, with the data directory moved to a temporary one. With the
    local broker, the consumers' session timeout is 3 s: that broker holds a new group's first
    join for half of it (5 s with the default of 10 s), and most pipeline tests start a consumer
    or several. A configured broker keeps the configured value (Apache Kafka refuses one below
    its `group.min.session.timeout.ms`, 6 s by default)."""
    settings = load_settings()
    update: dict[str, object] = {"data_dir": data_dir}
    if settings.kafka_bootstrap is None:
        update["consumer_session_timeout_ms"] = 3_000
    return settings.model_copy(update=update)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def services(env_settings: Settings) -> AsyncIterator[Services]:
    """The three servers for the session: configured ones, or local ones stopped at the end."""
    async with provision(env_settings, durable=False) as provisioned:
        yield provisioned


@pytest.fixture(scope="session")
def settings(env_settings: Settings, services: Services) -> Settings:
    """Settings with the Kafka, Redis and PostgreSQL addresses of `services` filled in."""
    return services.apply(env_settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def postgres_dsn(services: Services) -> str:
    """The session's PostgreSQL DSN. Tests should write into `pg_dsn_clean`/`migrated_dsn`."""
    return services.postgres_dsn


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the session's Redis database, flushed before the test (bytes responses)."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def pg_dsn_clean(postgres_dsn: str) -> AsyncIterator[str]:
    """DSN of a new, empty database (`meter_test_<random>`) for this test, dropped afterwards."""
    name = f"meter_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = with_database(postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    try:
        yield with_database(postgres_dsn, name)
    finally:
        await drop_database(admin_dsn, name)


@pytest_asyncio.fixture(loop_scope="session")
async def migrated_dsn(pg_dsn_clean: str) -> str:
    """DSN of a new database with every migration of `schemas/migrations` applied."""
    await migrate(pg_dsn_clean)
    return pg_dsn_clean


@pytest.fixture
def new_topic(kafka_bootstrap: str, settings: Settings) -> Callable[..., Awaitable[str]]:
    """`await new_topic(partitions=None, prefix="test")` creates a uniquely named topic."""

    async def create(partitions: int | None = None, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        await ensure_topics(kafka_bootstrap, {name: partitions or settings.topic_partitions})
        return name

    return create


@pytest_asyncio.fixture(loop_scope="session")
async def private_redis() -> AsyncIterator[RedisServer]:
    """A local Redis of this test's own, running; the test may stop, kill and restart it."""
    async with RedisServer() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def private_postgres() -> AsyncIterator[PostgresServer]:
    """A local PostgreSQL of this test's own (database `meter` at `.address`), running; the test
    may stop, kill and restart it. Its data is removed afterwards."""
    path = _server_dir("meter-test-pg-")
    try:
        async with PostgresServer(path / "postgres", durable=False) as server:
            yield server
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def private_kafka(settings: Settings) -> AsyncIterator[KafkaServer]:
    """A local broker of this test's own with the service's topics, running; the test may stop,
    kill and restart it (topics are created again on start, their records are lost)."""
    async with KafkaServer(topics=settings_topics(settings)) as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_cluster() -> AsyncIterator[LocalRedisCluster]:
    """A local Redis Cluster (three primaries, one replica each) for the whole run, started by
    the first test that asks for it. Tests keep to organizations of their own; a test that
    kills a node restarts it (`restart`) before it ends."""
    path = _server_dir("meter-test-cluster-")
    try:
        async with LocalRedisCluster(path) as cluster:
            yield cluster
    finally:
        shutil.rmtree(path, ignore_errors=True)
