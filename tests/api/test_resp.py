"""The pipelined Redis client of the hot path, against a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meter.api.resp import PipelinedRedis
from meter.services import RedisServer


async def test_concurrent_commands_get_their_own_replies(
    redis: aioredis.Redis, redis_url: str
) -> None:
    client = PipelinedRedis(redis_url)
    try:
        await asyncio.gather(*(client.execute("SET", f"k{i}", i) for i in range(500)))
        replies = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(500)))
        assert replies == [str(i).encode() for i in range(500)]
        code = (
            "#!lua name=resp_test\n"
            "redis.register_function{function_name='resp_test_echo', flags={'no-writes'},"
            " callback=function(keys, args) return {keys[1], args[1]} end}"
        )
        assert await client.function_load(code, replace=True) == b"resp_test"
        assert await client.fcall("resp_test_echo", 1, "a", "b") == [b"a", b"b"]
        assert await client.fcall_ro("resp_test_echo", 1, "a", "b") == [b"a", b"b"]
        with pytest.raises(ResponseError, match=r"^Function not found"):
            await client.fcall("resp_test_nothing", 0)
        with pytest.raises(ResponseError):
            await client.execute("NOT-A-COMMAND")
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_reconnects_after_the_connection_drops(redis: aioredis.Redis, redis_url: str) -> None:
    client = PipelinedRedis(redis_url)
    try:
        client_id = await client.execute("CLIENT", "ID")
        pending = asyncio.ensure_future(client.execute("BLPOP", "never", 5))
        await asyncio.sleep(0)
        await redis.execute_command("CLIENT", "KILL", "ID", client_id)
        with pytest.raises(RedisConnectionError):
            await pending
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_a_frozen_redis_fails_commands_within_the_deadline(
    private_redis: RedisServer,
) -> None:
    """SIGSTOP of the server: commands in flight and new ones fail with TimeoutError near the
    deadline (never hang), and the client works again once the server is thawed."""
    client = PipelinedRedis(private_redis.address, timeout_s=0.2, connect_timeout_s=0.2)
    pid = private_redis.pid
    assert pid is not None
    try:
        assert await client.execute("PING") == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                results = await asyncio.gather(
                    *(client.execute("PING") for _ in range(20)), return_exceptions=True
                )
                took = time.monotonic() - started
                assert all(isinstance(r, RedisTimeoutError) for r in results), results
                assert took < 1.0, took
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await client.execute("PING") == b"PONG"
                break
            except (RedisTimeoutError, RedisConnectionError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_dead_redis_fails_fast(private_redis: RedisServer) -> None:
    client = PipelinedRedis(private_redis.address)
    try:
        assert await client.execute("PING") == b"PONG"
        await private_redis.kill()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")
        assert time.monotonic() - started < 1.0
    finally:
        await client.aclose()
