"""Pieces of the production-topology test: the role processes, the load it drives through the
APIs (usage events and checks), and what it records of them."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import orjson
from aiokafka.partitioner import DefaultPartitioner

from meter.admin import queries as q
from meter.admin.service import member_config, org_config
from meter.engine.model import Ledger
from meter.engine.types import Settlement, UsageEvent
from meter.plans.store import grant_of
from meter.services import free_port
from schemas.events import encode_event, event_key

METER = str(Path(sys.executable).parent / "meter")
PARTITIONS = 4
"""Partitions of the usage topic."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Role:
    """One `meter <role>` process of the stack, with its log and the port it answers probes on."""

    role: str
    name: str
    env: dict[str, str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> None:
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [METER, self.role, *args], env=self.env, stdout=sink, stderr=sink
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll `/readyz` until it answers 200 (the process must stay alive meanwhile)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.tail()}"
                try:
                    if (await client.get(self.url + "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} did not become ready:\n{self.tail()}")

    def kill(self) -> None:
        """`kill -9`: no clean stop, no lease given up, no consumer group left."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def role(kind: str, index: int, base_env: dict[str, str], logs: Path) -> Role:
    """A `meter <kind>` process with its own API and metrics ports (not started yet)."""
    api_port, metrics_port = free_port(), free_port()
    env = {**base_env, "METER_API_PORT": str(api_port), "METER_METRICS_PORT": str(metrics_port)}
    port = api_port if kind == "api" else metrics_port
    return Role(kind, f"{kind}-{index}", env, logs / f"{kind}-{index}.log", port)


@dataclass(frozen=True)
class Sent:
    """A usage event accepted by an API (202, acknowledged by the broker)."""

    key: str
    org_id: str
    member_id: str
    credits: int
    time_ms: int


@dataclass
class OrgUnderTest:
    org_id: str
    members: list[str]
    product_key: str


def event_batch(
    org: OrgUnderTest, n: int, rnd: random.Random, prefix: str, ghost: bool
) -> tuple[bytes, list[Sent]]:
    """A CloudEvents batch body of `n` events of `org` at the current time (credits 0.001-0.5),
    plus one of a member that does not exist when `ghost` (a dead letter on purpose)."""
    values, sent = [], []
    t = now_ms()
    for i in range(n + (1 if ghost else 0)):
        member = "ghost" if i == n else rnd.choice(org.members)
        credits = rnd.randint(1_000, 500_000)
        ident = f"{prefix}-{i}"
        values.append(
            encode_event(
                event_id=ident,
                source="//topology",
                org_id=org.org_id,
                member_id=member,
                credits=credits,
                time_ms=t,
            )
        )
        sent.append(Sent(event_key("//topology", ident), org.org_id, member, credits, t))
    return b"[" + b",".join(values) + b"]", sent


@dataclass
class CheckLog:
    """Every check the driver sent: when (monotonic), to which API, the answer and its latency."""

    at: list[float] = field(default_factory=list)
    api: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    """HTTP status, or 0 for a transport error (no answer)."""
    latency_ms: list[float] = field(default_factory=list)
    allowed: Counter[str] = field(default_factory=Counter)

    def add(self, at: float, api: int, status: int, latency_ms: float) -> None:
        self.at.append(at)
        self.api.append(api)
        self.status.append(status)
        self.latency_ms.append(latency_ms)

    def window(self, start: float, end: float) -> list[int]:
        """Indexes of the checks sent within [start, end)."""
        return [i for i, t in enumerate(self.at) if start <= t < end]

    def summary(self, indexes: list[int]) -> str:
        lat = sorted(self.latency_ms[i] for i in indexes)
        statuses = Counter(self.status[i] for i in indexes)
        if not lat:
            return "no checks"
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{len(lat)} checks, statuses {dict(sorted(statuses.items()))},"
            f" latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms"
        )

    def longest_gap(self, api: int, start: float, end: float) -> float:
        """The longest time within [start, end] without a 200 answer from `api`."""
        answered = [start] + [
            t + self.latency_ms[i] / 1000
            for i, t in enumerate(self.at)
            if self.api[i] == api and self.status[i] == 200
        ]
        return max(b - a for a, b in itertools.pairwise([*sorted(answered), end]))


async def drive_checks(
    api: int, url: str, orgs: list[OrgUnderTest], log: CheckLog, stop: asyncio.Event
) -> None:
    """Checks of random members against one API until `stop`: a fresh answer every few ms."""
    rnd = random.Random(api)
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while not stop.is_set():
            org = rnd.choice(orgs)
            member = rnd.choice(org.members)
            body = {"org_id": org.org_id, "member_id": member, "credits": "0.01"}
            headers = {"authorization": f"Bearer {org.product_key}"}
            started = time.monotonic()
            try:
                r = await client.post("/v1/check", json=body, headers=headers)
            except httpx.TransportError:
                log.add(started, api, 0, (time.monotonic() - started) * 1000)
                await asyncio.sleep(0.05)
                continue
            log.add(started, api, r.status_code, (time.monotonic() - started) * 1000)
            if r.status_code == 200:
                answer = r.json()
                log.allowed["allowed" if answer["allowed"] else answer["reason"]] += 1
            await asyncio.sleep(0.005)


def partition_of(org_id: str) -> int:
    """The usage topic's partition of an organization's events (the producer's partitioner)."""
    partitions = list(range(PARTITIONS))
    return int(DefaultPartitioner()(org_id.encode(), partitions, partitions))


def assigned(consumer: Role) -> list[int]:
    """The partitions a `meter consume` process last logged as assigned to it."""
    lines = [orjson.loads(line) for line in consumer.log.read_bytes().splitlines()]
    return next(
        (d["partitions"] for d in reversed(lines) if d.get("event") == "partitions_assigned"), []
    )


def resumed(consumer: Role) -> tuple[int, int]:
    """Records the consumer found settled already when it took partitions over: (in
    PostgreSQL, answered by Redis from a result stored before the kill)."""
    lines = [orjson.loads(line) for line in consumer.log.read_bytes().splitlines()]
    batches = [d for d in lines if d.get("event") == "batch"]
    return sum(d["duplicates"] for d in batches), sum(d["replayed"] for d in batches)


async def wait_for(predicate, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def replay(
    conn: asyncpg.Connection, records: list[UsageEvent], at_ms: int
) -> tuple[Ledger, list[Settlement]]:
    """The reference model: the organizations, members and every grant PostgreSQL holds, then
    the usage topic's events settled in log order; returns it and each event's result."""
    ledger = Ledger()
    for (org_id,) in await conn.fetch("SELECT org_id FROM organizations"):
        ledger.put_org(org_config(await conn.fetchrow(q.SELECT_ORG_CONFIG, org_id)))
        for row in await conn.fetch(q.SELECT_ALL_MEMBERS, org_id):
            ledger.put_member(member_config(row))
    for row in await conn.fetch("SELECT * FROM credit_grants ORDER BY granted_at, bucket_id"):
        ledger.apply_grant(grant_of(row))
    results = [ledger.settle_batch(ev.org_id, [ev], at_ms)[0] for ev in records]
    return ledger, results
