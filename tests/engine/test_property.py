"""Random call sequences through the model and the Redis engine: identical results, and the
invariants of the rules (no bucket below zero, counters equal the settlements, idempotence,
burn-down order) hold after every call. Then the same sequences, a Redis that loses everything,
and a restore from what `balances` and `usage` said."""

from __future__ import annotations

import inspect
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meter.engine.model import Ledger, prunable
from meter.engine.periods import period_at
from meter.engine.redis import RedisEngine
from meter.engine.types import (
    KIND_RANK,
    MAX_AMOUNT,
    MAX_HOLD_MS,
    BillingGroupConfig,
    Grant,
    Kind,
    LimitPolicy,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    Settlement,
    UsageEvent,
)
from meter.local_cluster import LocalRedisCluster
from meter.redis_client import connect

T0 = int(datetime(2024, 1, 20, 10, tzinfo=UTC).timestamp() * 1000)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
MEMBERS = ["m0", "m1", "m2", "m3"]
GROUPS = ["g0", "g1", "g2"]
KEYS = [f"k{i}" for i in range(16)]
HOLDS = [f"r{i}" for i in range(4)]
ORG_IDS = itertools.count()

# A third of the bound and more: three such events take a counter of their period past
# MAX_AMOUNT, which the engines refuse (`counter_overflow`).
HUGE = MAX_AMOUNT // 3 + 1
credits = st.sampled_from([0, 1, 5, 10, 10, 30, 30, 60, HUGE])
amounts = st.sampled_from([0, 10, 30, 30, 100, 300, HUGE, MAX_AMOUNT])
limits = st.one_of(st.none(), st.none(), st.sampled_from([0, 10, 50, 200, MAX_AMOUNT]))
starts = st.sampled_from([-40 * DAY, -3 * DAY, -3 * DAY, -HOUR, -HOUR, 0, HOUR, 2 * DAY])
lengths = st.sampled_from([1, HOUR, 2 * DAY, 20 * DAY, 70 * DAY, 70 * DAY, 200 * DAY])
kinds = st.sampled_from([Kind.SEAT, Kind.SEAT, Kind.PERSONAL, Kind.SHARED, Kind.SHARED,
                         Kind.SHARED, Kind.ON_DEMAND])  # fmt: skip

JAN31 = int(datetime(2024, 1, 31, 23, tzinfo=UTC).timestamp() * 1000)
orgs = st.tuples(
    st.sampled_from(PeriodKind),
    st.sampled_from([T0, T0 - 19 * DAY, JAN31, T0 - 400 * DAY]),
    st.integers(1, 40),
    st.sampled_from(LimitPolicy),
    limits,
    st.sampled_from([0, HOUR, 3 * DAY]),
)

event_args = st.tuples(
    st.sampled_from(KEYS),
    st.sampled_from([*MEMBERS, *MEMBERS, *MEMBERS, "mx"]),
    credits,
    st.sampled_from([0, 0, -MIN, -HOUR, -2 * DAY, -35 * DAY]),
    st.one_of(st.none(), st.none(), st.sampled_from(HOLDS)),
)
STEPS: dict[str, Any] = {
    "member": st.tuples(
        st.just("member"),
        st.sampled_from(MEMBERS),
        st.sampled_from([True, True, False]),
        limits,
        st.sampled_from(["", "", *GROUPS]),
    ),
    "group": st.tuples(st.just("group"), st.sampled_from(GROUPS), limits),
    "grant": st.tuples(
        st.just("grant"),
        kinds,
        st.sampled_from(MEMBERS),
        amounts,
        starts,
        lengths,
        st.integers(0, 3),
    ),
    "settle": st.tuples(st.just("settle"), st.lists(event_args, min_size=1, max_size=5)),
    "reserve": st.tuples(
        st.just("reserve"),
        st.sampled_from(MEMBERS),
        credits,
        st.sampled_from(HOLDS),
        st.sampled_from([1, MIN, 20 * MIN]),
    ),
    "remove": st.tuples(st.just("remove"), st.sampled_from(MEMBERS)),
    "ungroup": st.tuples(st.just("ungroup"), st.sampled_from(GROUPS)),
    "regrant": st.tuples(st.just("regrant")),
    "revoke": st.tuples(st.just("revoke"), st.integers(0, 7)),
    "check": st.tuples(st.just("check"), st.sampled_from(MEMBERS), credits),
    "release": st.tuples(st.just("release"), st.sampled_from(HOLDS)),
    "void": st.tuples(st.just("void"), st.sampled_from(KEYS)),
    "prune": st.tuples(st.just("prune")),
    "confirm": st.tuples(st.just("confirm"), st.lists(st.sampled_from(KEYS), max_size=3)),
    "advance": st.tuples(
        st.just("advance"), st.sampled_from([1, 30_000, MIN, 15 * MIN, DAY, 10 * DAY, 31 * DAY])
    ),
    "org": st.tuples(
        st.just("org"),
        st.sampled_from([*OrgStatus, OrgStatus.ACTIVE, OrgStatus.ACTIVE]),
        st.sampled_from(LimitPolicy),
        limits,
    ),
}
WEIGHTS = {"settle": 8, "grant": 3, "reserve": 3, "check": 2, "advance": 2, "void": 2}
ops = st.sampled_from([n for n in STEPS for _ in range(WEIGHTS.get(n, 1))]).flatmap(
    lambda name: STEPS[name]
)
setups = st.tuples(
    st.lists(STEPS["member"], min_size=4, max_size=4),
    st.lists(STEPS["group"], max_size=2),
    st.lists(STEPS["grant"], min_size=2, max_size=6),
)


@dataclass
class World:
    """What the test knows independently of both engines, to check invariants."""

    org: OrgConfig
    now: int = T0
    grants: dict[str, Grant] = field(default_factory=dict)
    bucket_ids: Iterator[int] = field(default_factory=itertools.count)
    drawn: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    settled: dict[str, Settlement] = field(default_factory=dict)
    """Live (not voided) settlements by key, including confirmed ones."""
    pending: dict[str, Settlement] = field(default_factory=dict)
    """Results the engines still remember (settled, not confirmed), voided or not."""
    revoked: set[str] = field(default_factory=set)
    """Bucket ids revoked: nothing left in them, whatever was drawn."""


@pytest_asyncio.fixture(loop_scope="session")
async def redis_engine(redis_url: str) -> AsyncIterator[RedisEngine]:
    client = aioredis.Redis.from_url(redis_url)
    engine = RedisEngine(client)
    await engine.load_scripts()
    try:
        yield engine
    finally:
        await client.aclose()


class RollingUpgrade:
    """Two engines on one Redis taking calls in turn, as processes of two releases do while one
    replaces the other: one writes members as text (what earlier releases read), one binary."""

    def __init__(self, *engines: RedisEngine) -> None:
        self._engines = engines
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        engine = self._engines[self._calls % len(self._engines)]
        self._calls += 1
        return getattr(engine, name)


@pytest_asyncio.fixture(loop_scope="session")
async def upgrading_engine(redis_url: str) -> AsyncIterator[RollingUpgrade]:
    client = aioredis.Redis.from_url(redis_url)
    engines = [RedisEngine(client, encoding="text"), RedisEngine(client, encoding="binary")]
    for engine in engines:
        await engine.load_scripts()
    try:
        yield RollingUpgrade(*engines)
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_engine(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisEngine]:
    client = connect(redis_cluster.url)
    engine = RedisEngine(client)
    await engine.load_scripts()
    try:
        yield engine
    finally:
        await client.aclose()


def order_key(g: Grant) -> tuple[int, int, int, str]:
    return (KIND_RANK[g.kind], g.expires_at_ms, g.granted_at_ms, g.bucket_id)


async def run_op(op: tuple[Any, ...], w: World, model: Ledger, redis: RedisEngine) -> None:
    org_id = w.org.org_id
    name = op[0]
    if name == "member":
        _, m, seated, limit, group = op
        cfg = MemberConfig(org_id, m, seated, None if limit is None else limit, group)
        model.put_member(cfg)
        await redis.put_member(cfg)
    elif name == "remove":
        model.remove_member(org_id, op[1])
        await redis.remove_member(org_id, op[1])
    elif name == "group":
        cfg_g = BillingGroupConfig(org_id, op[1], op[2])
        model.put_billing_group(cfg_g)
        await redis.put_billing_group(cfg_g)
    elif name == "ungroup":
        model.delete_billing_group(org_id, op[1])
        await redis.delete_billing_group(org_id, op[1])
    elif name in ("grant", "regrant"):
        if name == "grant":
            _, kind, m, amount, start, length, age = op
            start = w.now + start
            g = Grant(
                org_id, f"b{next(w.bucket_ids)}", kind, amount, start, start + length, w.now - age,
                None if kind is Kind.SHARED else m,
            )  # fmt: skip
            w.grants[g.bucket_id] = g
        elif w.grants:
            g = next(iter(w.grants.values()))
        else:
            return
        added = model.apply_grant(g)
        assert await redis.apply_grant(g) == added
        assert added == (name == "grant")
    elif name == "revoke":
        if not w.grants:
            return
        g = list(w.grants.values())[op[1] % len(w.grants)]
        was = model.revoke_grant(org_id, g.member_id, g.bucket_id, w.now)
        assert await redis.revoke_grant(org_id, g.member_id, g.bucket_id, w.now) == was
        assert was == (0 if g.bucket_id in w.revoked else g.amount - w.drawn[g.bucket_id])
        w.revoked.add(g.bucket_id)
        event("revoked" if was else "revoked: nothing left")
        w.grants[g.bucket_id] = replace(g, expires_at_ms=min(g.expires_at_ms, w.now))
    elif name == "settle":
        events = [
            UsageEvent(key, org_id, m, credits, w.now + dt, rid)
            for key, m, credits, dt, rid in op[1]
        ]
        expected = model.settle_batch(org_id, events, w.now)
        trusted = len(events) % 2 == 0  # the same results without the input checks
        assert await redis.settle_batch(org_id, events, w.now, trusted=trusted) == expected
        for ev, s in zip(events, expected, strict=True):
            check_settlement(w, ev, s)
    elif name == "check":
        _, m, credits = op
        assert await redis.check(org_id, m, credits, w.now) == model.check(
            org_id, m, credits, w.now
        )
    elif name == "reserve":
        _, m, credits, rid, ttl = op
        expected_r = model.reserve(org_id, m, credits, w.now, rid, ttl)
        assert await redis.reserve(org_id, m, credits, w.now, rid, ttl) == expected_r
    elif name == "release":
        assert await redis.release(org_id, op[1], w.now) == model.release(org_id, op[1], w.now)
    elif name == "void":
        key = op[1]
        given_s = w.settled.get(key) if key not in w.pending else None
        expected_v = model.void(org_id, key, w.now, given_s)
        assert await redis.void(org_id, key, w.now, given_s) == expected_v
        if expected_v.voided and not expected_v.duplicate:
            s = w.settled.pop(key)
            for line in expected_v.returned:
                w.drawn[line.bucket_id] -= line.amount
            assert s.period is not None
            if w.now > s.period.end_ms + w.org.grace_ms:  # closed: its counters stay
                w.settled[f"void{len(w.settled)}:{key}"] = s
    elif name == "confirm":
        model.confirm(org_id, op[1])
        await redis.confirm(org_id, op[1])
        for key in op[1]:
            w.pending.pop(key, None)
    elif name == "advance":
        w.now += op[1]
    elif name == "prune":
        dropped = model.prune(org_id, w.now)
        assert await redis.prune(org_id, w.now) == dropped
        left = model.balances(org_id, w.now)
        gone = [bucket_id for bucket_id in w.grants if bucket_id not in left]
        assert len(gone) == dropped
        for bucket_id in gone:
            assert prunable(w.org, w.grants.pop(bucket_id).expires_at_ms, w.now)
    elif name == "org":
        w.org = replace(w.org, status=op[1], limit_policy=op[2], default_member_limit=op[3])
        model.put_org(w.org)
        await redis.put_org(w.org)


def check_settlement(w: World, ev: UsageEvent, s: Settlement) -> None:
    """Idempotence, conservation and burn-down order of one settlement."""
    if s.duplicate:
        assert ev.key in w.pending and s == replace(w.pending[ev.key], duplicate=True)
        return
    if s.reason is not None:
        assert s.period is None and not s.lines
        event(f"refused: {s.reason.value}")
        return
    assert ev.key not in w.pending
    assert sum(line.amount for line in s.lines) + s.unfunded == ev.credits
    keys = [order_key(w.grants[line.bucket_id]) for line in s.lines]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    at = w.now if s.late else ev.time_ms
    for line in s.lines:
        g = w.grants[line.bucket_id]
        assert g.valid_from_ms <= at < g.expires_at_ms and line.kind is g.kind
        assert g.member_id in (None, ev.member_id)
        w.drawn[line.bucket_id] += line.amount
    if ev.key in w.settled:  # confirmed earlier, then settled again: both count
        w.settled[f"old{len(w.settled)}:{ev.key}"] = w.settled[ev.key]
    w.settled[ev.key] = s
    w.pending[ev.key] = s


def expected_usage(w: World) -> dict[str, int]:
    """The current period's counters, recomputed from the live settlements."""
    start = period_at(w.org, w.now).start_ms
    out: dict[str, int] = defaultdict(int)
    for s in w.settled.values():
        if s.period is None or s.period.start_ms != start:
            continue
        drawn = sum(line.amount for line in s.lines)
        out[f"member:{s.member_id}"] += drawn
        out[f"member_shared:{s.member_id}"] += sum(
            line.amount for line in s.lines if line.kind is Kind.SHARED
        )
        out[f"group:{s.billing_group}"] += drawn
        out["drawn"] += drawn
        out["unfunded"] += s.unfunded
    return {k: v for k, v in out.items() if v}


def call_sequences(examples: int) -> Callable[[Callable[..., Any]], Any]:
    """A test of `examples` random call sequences: an org, its setup, then 8 to 30 steps
    (derandomized, so every run draws the same)."""
    return lambda test: settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )(given(org=orgs, setup=setups, steps=st.lists(ops, min_size=8, max_size=30))(test))


@call_sequences(2000)
async def test_model_and_redis_agree(
    redis_engine: RedisEngine,
    org: tuple[Any, ...],
    setup: tuple[list[tuple[Any, ...]], ...],
    steps: list[tuple[Any, ...]],
) -> None:
    await agree(redis_engine, f"p{next(ORG_IDS)}", org, setup, steps)


@call_sequences(100)
async def test_model_and_redis_cluster_agree(
    cluster_engine: RedisEngine,
    org: tuple[Any, ...],
    setup: tuple[list[tuple[Any, ...]], ...],
    steps: list[tuple[Any, ...]],
) -> None:
    """A subset of the examples on the local Redis Cluster: each organization's scripts run on
    the primary owning its hash tag's slot (the ids spread them over every primary)."""
    await agree(cluster_engine, f"c{next(ORG_IDS)}", org, setup, steps)


@call_sequences(300)
async def test_model_and_a_rolling_upgrade_agree(
    upgrading_engine: RollingUpgrade,
    org: tuple[Any, ...],
    setup: tuple[list[tuple[Any, ...]], ...],
    steps: list[tuple[Any, ...]],
) -> None:
    """Members written as text and binary by turns, each read by the other's next call: every
    call answers as the model does, whichever encoding the values it reads are in."""
    await agree(cast(RedisEngine, upgrading_engine), f"u{next(ORG_IDS)}", org, setup, steps)


async def agree(
    redis_engine: RedisEngine,
    org_id: str,
    org: tuple[Any, ...],
    setup: tuple[list[tuple[Any, ...]], ...],
    steps: list[tuple[Any, ...]],
) -> None:
    """Run `setup` then `steps` through the model and `redis_engine`, comparing as they go."""
    kind, anchor, days, policy, default, grace = org
    w = World(OrgConfig(org_id, OrgStatus.ACTIVE, kind, anchor, days, policy, default, grace))
    model = Ledger()
    model.put_org(w.org)
    await redis_engine.put_org(w.org)
    for op in itertools.chain(*setup):
        await run_op(op, w, model, redis_engine)
    for op in steps:
        await run_op(op, w, model, redis_engine)
        if op[0] in ("settle", "void", "grant", "prune"):
            await compare_state(w, model, redis_engine)
    w.now += 1
    await compare_state(w, model, redis_engine)


async def compare_state(w: World, model: Ledger, redis_engine: RedisEngine) -> None:
    """Balances and counters agree, and match what the settlements add up to."""
    balances = model.balances(w.org.org_id, w.now)
    assert await redis_engine.balances(w.org.org_id, w.now) == balances
    assert all(left >= 0 for left in balances.values())
    for bucket_id, g in w.grants.items():
        left = 0 if bucket_id in w.revoked else g.amount - w.drawn[bucket_id]
        assert balances[bucket_id] == left
    usage = model.usage(w.org.org_id, w.now)
    assert await redis_engine.usage(w.org.org_id, w.now) == usage
    assert usage == expected_usage(w)
    assert all(value <= MAX_AMOUNT for value in usage.values())


@call_sequences(150)
async def test_restore_after_redis_lost_everything(
    redis: aioredis.Redis,
    redis_engine: RedisEngine,
    org: tuple[Any, ...],
    setup: tuple[list[tuple[Any, ...]], ...],
    steps: list[tuple[Any, ...]],
) -> None:
    kind, anchor, days, policy, default, grace = org
    w = World(OrgConfig(f"q{next(ORG_IDS)}", OrgStatus.ACTIVE, kind, anchor, days, policy,
                        default, grace))  # fmt: skip
    org_id = w.org.org_id
    model = Ledger()
    model.put_org(w.org)
    await redis_engine.put_org(w.org)
    for op in [*itertools.chain(*setup), *steps]:
        await run_op(op, w, model, redis_engine)
    w.now += MAX_HOLD_MS  # past every hold: restore drops them, and so does time
    before = await snapshot(redis_engine, org_id, w.now)
    assert before == await snapshot(model, org_id, w.now)
    assert await redis_engine.has_org(org_id)

    await redis.flushdb()
    assert not await redis_engine.has_org(org_id)  # the marker goes with the data
    fresh = Ledger()
    for target in (redis_engine, fresh):
        await reput(target, model, org_id)
        await maybe_await(target.restore(org_id, before[0], before[1], w.now))
        assert await snapshot(target, org_id, w.now) == before

    # Settling on goes on identically (the model forgets its stored results like Redis did).
    model.confirm(org_id, list(model.results[org_id]))
    events = [UsageEvent(f"after{i}", org_id, m, 30, w.now) for i, m in enumerate(MEMBERS * 2)]
    expected = model.settle_batch(org_id, events, w.now)
    assert await redis_engine.settle_batch(org_id, events, w.now) == expected
    assert fresh.settle_batch(org_id, events, w.now) == expected
    assert await snapshot(redis_engine, org_id, w.now) == await snapshot(model, org_id, w.now)


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def snapshot(engine: Any, org_id: str, now: int) -> tuple[Any, ...]:
    """Balances, counters and the checks of every member at `now`."""
    checks = [
        await maybe_await(engine.check(org_id, m, c, now)) for m in MEMBERS for c in (1, 30, 300)
    ]
    return (
        await maybe_await(engine.balances(org_id, now)),
        await maybe_await(engine.usage(org_id, now)),
        checks,
    )


async def reput(target: Any, source: Ledger, org_id: str) -> None:
    """Put `source`'s config and grants of the org into `target`, as a rebuild does."""
    await maybe_await(target.put_org(source.orgs[org_id]))
    for (org, _), member in source.members.items():
        if org == org_id:
            await maybe_await(target.put_member(member.config))
            if member.removed:
                await maybe_await(target.remove_member(org_id, member.config.member_id))
    for group_id, limit in source.groups[org_id].items():
        await maybe_await(target.put_billing_group(BillingGroupConfig(org_id, group_id, limit)))
    for bucket in source.buckets[org_id].values():
        assert await maybe_await(target.apply_grant(bucket.grant))


pytestmark = pytest.mark.slow
