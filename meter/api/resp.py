"""A minimal pipelined Redis client for the quota hot path.

The engine talks to Redis only through `EVALSHA` and `SCRIPT LOAD`. redis-py's asyncio client
checks a connection out of its pool for every command, which costs more than the Lua script
itself; this client keeps one connection. A command issued while none is in flight is written at
once; others pipeline on the wire (the commands issued in one event-loop iteration leave in one
write), and replies are matched to callers in order (RESP replies come back in command order).
Replies are parsed by hiredis. Errors are redis-py's exception classes, so the engine's
`NoScriptError` handling works unchanged.

A frozen server (the connection open, no reply) must not hold checks: when commands wait and no
reply has come for `timeout_s`, the connection is aborted and every waiting command fails with
redis-py's `ConnectionError` (the API answers 503 `unavailable`); the next command reconnects.
A watchdog timer per connection looks every quarter of `timeout_s`, so the hot path pays nothing.

Only plain `redis://` and `unix://` URLs are handled (`supports`); others use redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def supports(url: str) -> bool:
    return url.startswith(("redis://", "unix://"))


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = str(arg).encode()
        else:
            raise TypeError(f"cannot send {kind.__name__} to Redis")
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


DEFAULT_TIMEOUT_S = 0.5
"""How long commands may wait without any reply before the connection is given up (the quota
scripts take tens of microseconds)."""


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.outgoing: list[bytes] = []
        self.timeout_s = timeout_s
        self.progress = 0
        """Replies received so far; the watchdog compares it between two looks."""
        self._seen = -1
        self._stalled_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def _watch(self) -> None:
        """Abort the connection when commands have waited `timeout_s` without any reply."""
        self._watchdog = self.loop.call_later(self.timeout_s / 4, self._watch)
        now = self.loop.time()
        if not self.waiting or self.progress != self._seen:
            self._seen = self.progress
            self._stalled_since = now if self.waiting else None
            return
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self.timeout_s and self.transport is not None:
            self.transport.abort()

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Write a command at once when no other is in flight; else queue it, and everything
        queued in one loop iteration goes out in one write."""
        if not self.waiting and self.transport is not None:
            self.waiting.append(future)
            self.transport.write(command)
            return
        self.waiting.append(future)
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(command)

    def flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.transport is not None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._watch()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            self.progress += 1
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        error = RedisConnectionError(f"connection to Redis lost: {exc}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)


class PipelinedRedis:
    """`evalsha`, `script_load` and `execute` over one auto-pipelined connection."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not supports(url):
            raise ValueError("only redis:// and unix:// URLs")
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        self._unix = parsed.path if parsed.scheme == "unix" else None
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        db_text = query.get("db", ["0"])[0] if parsed.scheme == "unix" else parsed.path.lstrip("/")
        self._db = int(db_text or "0")
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        factory = functools.partial(_Protocol, self._timeout_s)
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                if self._unix is not None:
                    _, proto = await loop.create_unix_connection(factory, self._unix)
                else:
                    _, proto = await loop.create_connection(factory, self._host, self._port)
        except OSError as exc:  # refused, unreachable, and the timeout
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._proto = proto
        if self._password is not None:
            auth = (self._username, self._password) if self._username else (self._password,)
            await self.execute("AUTH", *auth)
        if self._db:
            await self.execute("SELECT", self._db)
        return proto

    async def execute(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.transport is None:
            async with self._connecting:
                proto = self._proto
                if proto is None or proto.transport is None:
                    self._proto = None
                    proto = await self._connect()
        assert proto.transport is not None
        future: asyncio.Future[Any] = proto.loop.create_future()
        proto.send(_encode(args), future)
        return await future

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> Any:
        return await self.execute("SCRIPT", "LOAD", script)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            await proto.closed
