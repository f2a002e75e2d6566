"""A minimal pipelined Redis client for the quota hot path.

The engine talks to Redis only through `FCALL`, `FCALL_RO` and `FUNCTION LOAD`. redis-py's
asyncio client checks a connection out of its pool for every command, which costs more than the
Lua function itself; this client keeps one connection. A command issued while none is in flight
is written at once; others pipeline on the wire (the commands issued in one event-loop iteration
leave in one write), and replies are matched to callers in order (RESP replies come back in
command order). Replies are parsed by hiredis. Errors are redis-py's exception classes with
redis-py's messages (without the `ERR ` prefix), so the engine handles a missing function alike
on both clients.

Only plain `redis://` and `unix://` URLs are handled (`supports`); others use redis-py.

Deadlines: connecting has `connect_timeout_s`; a command has `timeout_s` from when it is sent.
Replies come back in order, so one watchdog timer looks at the oldest command in flight only:
when it is overdue, Redis is frozen or the network is, and every command in flight fails with
redis-py's `TimeoutError` and the connection is dropped (the next command reconnects). That costs
the hot path one monotonic clock read per command, not a timer each.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

TIMEOUT_S = 0.5
"""Default deadline of a command, and of connecting: a frozen Redis fails a check this fast."""


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
    return ResponseError(str(reply).removeprefix("ERR "))


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.sent_at: collections.deque[float] = collections.deque()
        self.timeout_s = timeout_s
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.outgoing: list[bytes] = []

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Write a command at once when no other is in flight; else queue it, and everything
        queued in one loop iteration goes out in one write."""
        self.sent_at.append(time.monotonic())
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout_s, self.watch)
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

    def watch(self) -> None:
        """Fail everything in flight when the oldest command is overdue; else look again when
        it would be."""
        self.watchdog = None
        if not self.sent_at:
            return
        overdue_in = self.sent_at[0] + self.timeout_s - time.monotonic()
        if overdue_in > 0:
            self.watchdog = self.loop.call_later(overdue_in, self.watch)
            return
        error = RedisTimeoutError(f"Redis did not answer within {self.timeout_s:g} s")
        self.fail_all(error)
        if self.transport is not None:
            self.transport.abort()

    def fail_all(self, error: Exception) -> None:
        self.sent_at.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            self.sent_at.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.fail_all(RedisConnectionError(f"connection to Redis lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


class PipelinedRedis:
    """`fcall`, `fcall_ro`, `function_load` and `execute` over one auto-pipelined connection."""

    def __init__(
        self, url: str, *, timeout_s: float = TIMEOUT_S, connect_timeout_s: float = TIMEOUT_S
    ) -> None:
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
        self._connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()

        def protocol() -> _Protocol:
            return _Protocol(self._timeout_s)

        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._unix is not None:
                    _, proto = await loop.create_unix_connection(protocol, self._unix)
                else:
                    _, proto = await loop.create_connection(protocol, self._host, self._port)
        except TimeoutError as exc:
            raise RedisTimeoutError(
                f"cannot connect to Redis within {self._connect_timeout_s:g} s"
            ) from exc
        except OSError as exc:
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

    async def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("FCALL", function, numkeys, *keys_and_args)

    async def fcall_ro(self, function: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("FCALL_RO", function, numkeys, *keys_and_args)

    async def function_load(self, code: str, replace: bool = False) -> Any:
        if replace:
            return await self.execute("FUNCTION", "LOAD", "REPLACE", code)
        return await self.execute("FUNCTION", "LOAD", code)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            await proto.closed
