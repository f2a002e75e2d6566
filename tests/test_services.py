"""The provisioner against real servers: local ones start, stop, restart and die with us;
configured ones are reused, and an unreachable one is an error naming its variable."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import psutil  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from meter.services import (
    KafkaServer,
    PostgresServer,
    RedisServer,
    ServiceError,
    Services,
    free_port,
    probe_kafka,
    provision,
    settings_topics,
    topic_partitions,
)
from meter.settings import Settings


async def test_session_services_answer(
    services: Services, settings: Settings, redis: aioredis.Redis, pg_dsn_clean: str
) -> None:
    assert await redis.ping()
    conn = await asyncpg.connect(pg_dsn_clean)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    for topic in settings_topics(settings):
        assert await topic_partitions(services.kafka_bootstrap, topic) == settings.topic_partitions
    assert settings.redis_url == services.redis_url
    assert settings.postgres_dsn == services.postgres_dsn
    assert settings.kafka_bootstrap == services.kafka_bootstrap


async def test_redis_restarts_empty_on_the_same_port(private_redis: RedisServer) -> None:
    server = private_redis
    url, pid = server.address, server.pid
    client = aioredis.Redis.from_url(url)
    await client.set("k", "v")
    await client.aclose()
    await server.stop()
    assert not server.running
    assert pid is not None and not psutil.pid_exists(pid)
    client = aioredis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.ping()
    await client.aclose()

    await server.start()
    assert server.address == url
    client = aioredis.Redis.from_url(url)
    assert await client.get("k") is None
    await client.aclose()

    await server.kill()
    assert not server.running


async def test_postgres_keeps_committed_data_across_kill_and_restart(
    private_postgres: PostgresServer,
) -> None:
    server = private_postgres
    dsn = server.address
    assert dsn.endswith("/meter")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
    held = await asyncpg.connect(dsn)  # a backend the kill must take down too
    await conn.close()

    pid = server.pid
    await server.kill()
    assert pid is not None and not psutil.pid_exists(pid)
    with pytest.raises(asyncpg.PostgresConnectionError):
        await held.fetchval("SELECT 1")
    held.terminate()

    await server.start()
    assert server.address == dsn
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT v FROM t") == 42
    await conn.close()

    await server.stop()
    assert not server.running
    await server.start()
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT count(*) FROM t") == 1
    await conn.close()


async def test_start_on_a_taken_port_is_an_error_with_the_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(port=taken.getsockname()[1])
        with pytest.raises(ServiceError, match="redis exited with code") as caught:
            await server.start(timeout_s=10)
    assert "Address already in use" in str(caught.value)
    assert not server.running


async def test_private_kafka_has_the_service_topics(
    private_kafka: KafkaServer, settings: Settings
) -> None:
    assert private_kafka.address != settings.kafka_bootstrap
    for topic in settings_topics(settings):
        assert await topic_partitions(private_kafka.address, topic) == settings.topic_partitions


async def test_kafka_creates_topics_again_after_restart() -> None:
    async with KafkaServer(topics={"orders": 3, "other": 1}) as server:
        assert await topic_partitions(server.address, "orders") == 3
        assert await topic_partitions(server.address, "other") == 1
        await server.stop()
        with pytest.raises(OSError):
            await probe_kafka(server.address, 1.0)
        await server.start()
        assert await topic_partitions(server.address, "orders") == 3
    assert not server.running


async def test_configured_servers_are_reused(services: Services, settings: Settings) -> None:
    async with provision(settings) as reused:
        assert reused.started == []
        assert reused.redis_url == services.redis_url
        assert reused.postgres_dsn == services.postgres_dsn
        assert reused.kafka_bootstrap == services.kafka_bootstrap
        assert set(reused.describe()) == {"kafka", "redis", "postgres"}
        assert all("configured" in line for line in reused.describe().values())


async def test_unset_address_starts_a_private_server(settings: Settings, tmp_path: Path) -> None:
    unset = settings.model_copy(update={"redis_url": None, "data_dir": tmp_path})
    async with provision(unset, only={"redis"}) as private:
        assert private.redis is not None
        assert private.started == [private.redis]
        assert private.redis_url != settings.redis_url
        assert private.postgres is None
        assert private.kafka is None
        client = aioredis.Redis.from_url(private.redis_url)
        assert await client.ping()
        await client.aclose()
        pid = private.redis.pid
    assert pid is not None and not psutil.pid_exists(pid)


@pytest.mark.parametrize(
    ("field", "variable", "service", "address"),
    [
        ("redis_url", "METER_REDIS_URL", "redis", "redis://127.0.0.1:{port}/0"),
        (
            "postgres_dsn",
            "METER_POSTGRES_DSN",
            "postgres",
            "postgresql://postgres@127.0.0.1:{port}/x",
        ),
        ("kafka_bootstrap", "METER_KAFKA_BOOTSTRAP", "kafka", "127.0.0.1:{port}"),
    ],
)
async def test_unreachable_configured_server_is_an_error(
    settings: Settings, field: str, variable: str, service: str, address: str
) -> None:
    unreachable = address.format(port=free_port())
    broken = settings.model_copy(update={field: unreachable, "connect_timeout_s": 0.3})
    with pytest.raises(ServiceError) as caught:
        async with provision(broken, only={service}):
            pass
    assert f"{variable}={unreachable} is not reachable" in str(caught.value)


async def test_topics_get_the_configured_partition_count(
    services: Services, settings: Settings
) -> None:
    suffix = os.urandom(4).hex()
    custom = settings.model_copy(
        update={
            "usage_topic": f"usage.{suffix}",
            "dlq_topic": f"dlq.{suffix}",
            "billing_topic": f"billing.{suffix}",
            "alerts_topic": f"alerts.{suffix}",
            "topic_partitions": 3,
        }
    )
    async with provision(custom, only={"kafka"}) as provisioned:
        for topic in settings_topics(custom):
            assert await topic_partitions(provisioned.kafka_bootstrap, topic) == 3


async def test_new_topic_fixture(new_topic: object, kafka_bootstrap: str) -> None:
    from collections.abc import Awaitable, Callable
    from typing import cast

    create = cast(Callable[..., Awaitable[str]], new_topic)
    name = await create(partitions=2)
    assert await topic_partitions(kafka_bootstrap, name) == 2


def _read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """Stdout of `process` up to the line containing `marker` (fails after timeout_s)."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
    finally:
        selector.close()
    raise AssertionError(f"{marker!r} not printed within {timeout_s}s:\n{''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_meter_run_starts_local_services_and_stops_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env["METER_DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.Popen(
        [sys.executable, "-m", "meter.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _read_until(process, "meter is running", 60)
        children = psutil.Process(process.pid).children()
        assert {"kafka", "redis", "postgres"} <= {
            line.split()[0] for line in output.splitlines() if "(local, pid" in line
        }
        assert len(children) == 3
        process.send_signal(sig)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        rest = process.stdout.read()
        assert "service stopped" in rest
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_a_missing_local_package_says_how_to_install_it() -> None:
    from meter.services import _local_package

    with pytest.raises(ServiceError, match=r"pip install 'meter\[local\]'"):
        _local_package("meter_no_such_local_server", "kafka")


def test_permission_changes_outside_the_data_directory_are_logged(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from meter.services import _allow_traversal

    private = tmp_path / "private"
    inner = private / "data"
    inner.mkdir(parents=True)
    private.chmod(0o700)
    inner.chmod(0o700)
    with capture_logs() as logs:
        _allow_traversal(inner)
    changed = {entry["path"] for entry in logs if entry["log_level"] == "warning"}
    assert {str(private), str(inner)} <= changed
    assert private.stat().st_mode & 0o011 == 0o011
