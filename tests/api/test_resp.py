"""The pipelined Redis client of the hot path, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from meter.api.resp import PipelinedRedis


async def test_concurrent_commands_get_their_own_replies(
    redis: aioredis.Redis, redis_url: str
) -> None:
    client = PipelinedRedis(redis_url)
    try:
        await asyncio.gather(*(client.execute("SET", f"k{i}", i) for i in range(500)))
        replies = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(500)))
        assert replies == [str(i).encode() for i in range(500)]
        sha = await client.script_load("return {KEYS[1], ARGV[1]}")
        assert await client.evalsha(sha.decode(), 1, "a", "b") == [b"a", b"b"]
        with pytest.raises(NoScriptError):
            await client.evalsha("0" * 40, 0)
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
