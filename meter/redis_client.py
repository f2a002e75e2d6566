"""The one way meter builds a Redis client from `METER_REDIS_URL`: one server, or a Redis Cluster.

- `redis://`, `rediss://`, `unix://`: one server (redis-py's `Redis.from_url`), the default.
- `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` with TLS): a
  Redis (or Valkey) Cluster reached through any of the seed nodes listed. The client
  (`MeterCluster`, redis-py's asyncio `RedisCluster`) learns the slot map from them, sends each
  command to the primary owning its first key's slot, follows MOVED and ASK, sends FUNCTION LOAD
  to every primary, and refreshes the slot map after a failover. Every key of an organization
  carries the hash tag `{org_id}`, so each engine function runs on the one primary owning that
  organization.

`connect` returns the cluster client typed as `redis.asyncio.Redis`: it serves the commands meter
sends (FCALL, FCALL_RO, FUNCTION LOAD, GET/SET/EXISTS/DELETE of one key, SCAN over every
primary, PING), which is all the engine, the rebuild and the admin service use.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,  # refused, reset, or loading its data (BusyLoadingError)
    RedisTimeoutError,
    ClusterError,  # a cluster still redirecting or failing over when the client gave up
    TryAgainError,  # a multi-key command during a slot migration
    SlotNotCoveredError,  # no primary owns the slot yet (a failover under way)
)
"""Redis is down, frozen or (a cluster) failing over: retry later. Everything else Redis answers
is about the command or the data."""

SINGLE_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
FUNCTION_CALLS = ("FCALL", "FCALL_RO")


class _LastInFirstOut(deque[Connection]):
    """A node's free connections, the one released last taken first."""

    def popleft(self) -> Connection:
        return self.pop()


class MeterCluster(RedisCluster):
    """redis-py's asyncio cluster client with two changes:

    - FCALL and FCALL_RO are routed by the keys they name, as EVALSHA is. redis-py asks a
      server for the keys of a function call (COMMAND GETKEYS, one round trip, always to the
      same node, which fails while that node is down).
    - A node reached by an ASK redirection serves the command on the connection that carried
      ASKING. redis-py sends ASKING and then the command as two calls, each taking a free
      connection of the node (first in, first out): with two or more free, the command went
      out without ASKING, the importing node answered MOVED back to the owner, and the call
      bounced between them until it failed with "TTL exhausted" for as long as the slot was
      split. The node's free connections are taken last in, first out, and nothing runs
      between the two calls, so the command takes the connection ASKING was just sent on.
    """

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is not None and not isinstance(node._free, _LastInFirstOut):
            node._free = _LastInFirstOut(node._free, maxlen=node._free.maxlen)
        return node

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in FUNCTION_CALLS and len(args) >= 2 and int(args[1]) > 0:
            slots = {self.keyslot(key) for key in args[2 : 2 + int(args[1])]}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)


def is_cluster(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return url.startswith(CLUSTER_SCHEMES)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The seed nodes (host, port), user name and password of a cluster URL; `ValueError` when it
    is not `redis+cluster://[user:password@]host:port[,host:port...][/]`."""
    if not is_cluster(url):
        raise ValueError("must start with redis+cluster:// or rediss+cluster://")
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    if path not in ("", "0") or "?" in netloc:
        raise ValueError("a cluster URL takes no database and no options (database 0 only)")
    userinfo, at, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds: list[tuple[str, int]] = []
    for server in hosts.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be redis+cluster://host:port[,host:port...]")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, username, password


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client of `url`: `Redis.from_url(url, **options)` for one server, a `RedisCluster` on
    the seed nodes of a cluster URL (the same options: timeouts, `max_connections` per node)."""
    if not is_cluster(url):
        return aioredis.Redis.from_url(url, **options)
    seeds, username, password = cluster_seeds(url)
    client = MeterCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        username=username,
        password=password,
        ssl=url.startswith("rediss+"),
        **options,
    )
    return cast(aioredis.Redis, client)
