"""The engine's exact range (README "Bounds"), against the model and Redis: counters never pass
`MAX_AMOUNT` (the event that would is refused, nothing changed), revoked grants, and input
validation that raises only `EngineInputError` and changes nothing, whatever it is given."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from engine.conftest import AsyncLedger
from engine.test_examples import FAR, JAN1, MARCH, NOW, event, setup_org
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.engine.model import Ledger
from meter.engine.redis import RedisEngine
from meter.engine.types import (
    MAX_AMOUNT,
    BillingGroupConfig,
    EngineInputError,
    Grant,
    Kind,
    Line,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    Reason,
    Settlement,
    UsageEvent,
)

HALF = MAX_AMOUNT // 2 + 1
"""Two events of this many micro-credits take a counter past `MAX_AMOUNT`."""


def micro_event(org_id: str, key: str, member: str, micro: int, t: int = NOW) -> UsageEvent:
    return UsageEvent(key, org_id, member, micro, t)


async def test_an_event_that_would_overflow_a_counter_is_refused(engine: Any, org_id: str) -> None:
    """Unfunded usage (nothing granted): the org's unfunded counter reaches the bound."""
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "a"))
    await engine.put_member(MemberConfig(org_id, "b"))
    events = [micro_event(org_id, f"k{i}", "a", HALF) for i in range(3)]
    events.insert(2, micro_event(org_id, "rest", "b", MAX_AMOUNT - HALF))
    out = await engine.settle_batch(org_id, events, NOW)
    assert [s.reason for s in out] == [None, Reason.COUNTER_OVERFLOW, None, Reason.COUNTER_OVERFLOW]
    assert out[1].period is None and out[1].unfunded == 0
    usage = await engine.usage(org_id, NOW)
    assert usage == {"unfunded": MAX_AMOUNT}
    # Nothing of a refused event is stored: it is not a duplicate, and refused again.
    again = await engine.settle_batch(org_id, [events[1]], NOW)
    assert again[0].reason is Reason.COUNTER_OVERFLOW and not again[0].duplicate
    # The next period starts from zero.
    april = micro_event(org_id, "april", "a", HALF, t=MARCH.end_ms)
    (s,) = await engine.settle_batch(org_id, [april], MARCH.end_ms)
    assert s.reason is None and s.unfunded == HALF


async def test_drawn_counters_refuse_at_the_bound(engine: Any, org_id: str) -> None:
    """Member, member_shared, group and org counters of drawn credits; a hold named by the
    refused event stays."""
    await setup_org(engine, org_id)
    await engine.put_billing_group(BillingGroupConfig(org_id, "g"))
    await engine.put_member(MemberConfig(org_id, "a", billing_group="g"))
    for bucket in ("p1", "p2"):
        grant = Grant(org_id, bucket, Kind.SHARED, MAX_AMOUNT, JAN1, FAR, JAN1)
        assert await engine.apply_grant(grant)
    assert (await engine.reserve(org_id, "a", 1, NOW, "r1")).allowed
    first = micro_event(org_id, "k1", "a", MAX_AMOUNT - 5)
    second = UsageEvent("k2", org_id, "a", 6, NOW, reservation_id="r1")
    third = micro_event(org_id, "k3", "a", 5)
    out = await engine.settle_batch(org_id, [first, second, third], NOW)
    assert [s.reason for s in out] == [None, Reason.COUNTER_OVERFLOW, None]
    assert out[2].lines == (Line("p1", Kind.SHARED, 5),)
    usage = await engine.usage(org_id, NOW)
    assert usage == {
        "member:a": MAX_AMOUNT, "member_shared:a": MAX_AMOUNT, "group:g": MAX_AMOUNT,
        "drawn": MAX_AMOUNT,
    }  # fmt: skip
    assert await engine.balances(org_id, NOW) == {"p1": 0, "p2": MAX_AMOUNT}
    # The hold of the refused event is still live: releasing it finds it.
    assert await engine.release(org_id, "r1", NOW) is True
    # Checks report at most MAX_AMOUNT available, though the buckets hold more together.
    await engine.apply_grant(Grant(org_id, "p3", Kind.SHARED, MAX_AMOUNT, JAN1, FAR, JAN1))
    checked = await engine.check(org_id, "a", 0, NOW)
    assert checked.available[Kind.SHARED] == MAX_AMOUNT


async def test_a_revoked_grant_gives_nothing_more(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "a"))
    for bucket, kind, member, expires in [
        ("seat", Kind.SEAT, "a", FAR), ("early", Kind.SHARED, None, FAR - 1),
        ("pack", Kind.SHARED, None, FAR),
    ]:  # fmt: skip
        grant = Grant(org_id, bucket, kind, 10 * 10**6, JAN1, expires, JAN1, member)
        assert await engine.apply_grant(grant)
    (s,) = await engine.settle_batch(org_id, [event(org_id, "k1", "a", 25)], NOW)
    assert s.lines == (
        Line("seat", Kind.SEAT, 10 * 10**6), Line("early", Kind.SHARED, 10 * 10**6),
        Line("pack", Kind.SHARED, 5 * 10**6),
    )  # fmt: skip
    assert await engine.revoke_grant(org_id, None, "pack", NOW) == 5 * 10**6
    assert await engine.revoke_grant(org_id, None, "pack", NOW + 1) == 0  # idempotent
    assert await engine.revoke_grant(org_id, "a", "pack", NOW) is None  # not a's bucket
    assert await engine.revoke_grant(org_id, None, "nope", NOW) is None
    assert await engine.revoke_grant(org_id, "a", "seat", NOW) == 0

    # An event of an earlier time draws nothing from it either.
    (late,) = await engine.settle_batch(org_id, [event(org_id, "k2", "a", 1, t=NOW - 1)], NOW)
    assert late.lines == () and late.unfunded == 10**6
    checked = await engine.check(org_id, "a", 1, NOW)
    assert not checked.allowed and checked.available[Kind.SHARED] == 0
    # A void returns nothing to revoked buckets (they expired at the revocation); the rest goes
    # back to "early".
    voided = await engine.void(org_id, "k1", NOW + 10)
    assert voided.returned == (Line("early", Kind.SHARED, 10 * 10**6),)
    assert await engine.balances(org_id, NOW) == {"seat": 0, "early": 10 * 10**6, "pack": 0}
    # A new grant is still placed in burn-down order around the revoked ones.
    await engine.apply_grant(Grant(org_id, "later", Kind.SHARED, 10**6, JAN1, FAR, JAN1))
    (s3,) = await engine.settle_batch(org_id, [event(org_id, "k3", "a", 11)], NOW + 20)
    assert s3.lines == (Line("early", Kind.SHARED, 10 * 10**6), Line("later", Kind.SHARED, 10**6))


# -- input validation ------------------------------------------------------------------------

ints = st.one_of(
    st.integers(),
    st.sampled_from([-1, 0, MAX_AMOUNT, MAX_AMOUNT + 1, -MAX_AMOUNT - 1, 2**63, -(2**63)]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "{x}", "a}", "\x1f", "\x1e", "\x00", "a\nb", "\x7f", "x" * 100_000]),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)


def _calls(org: str, member: str, key: str, n: Any, s: Any) -> list[Callable[[Any], Any]]:
    """One call of each kind with one argument replaced by a generated value."""
    org_cfg = OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1)

    def voided(lines: tuple[Line, ...]) -> Settlement:
        return Settlement(key, org, member, 1, NOW, MARCH, lines=lines)

    return [
        lambda e: e.put_org(OrgConfig(s, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1)),
        lambda e: e.put_org(OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.MONTHLY, n)),
        lambda e: e.put_org(OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.ROLLING, JAN1, n)),
        lambda e: e.put_org(OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1, grace_ms=n)),
        lambda e: e.put_org(
            OrgConfig(org, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1, default_member_limit=n)
        ),
        lambda e: e.put_member(MemberConfig(org, s)),
        lambda e: e.put_member(MemberConfig(org, member, member_limit=n)),
        lambda e: e.put_member(MemberConfig(org, member, billing_group=s)),
        lambda e: e.put_billing_group(BillingGroupConfig(org, s)),
        lambda e: e.put_billing_group(BillingGroupConfig(org, "g", n)),
        lambda e: e.apply_grant(Grant(org, s, Kind.SHARED, 1, JAN1, FAR, JAN1)),
        lambda e: e.apply_grant(Grant(org, "b", Kind.SHARED, n, JAN1, FAR, JAN1)),
        lambda e: e.apply_grant(Grant(org, "b", Kind.SHARED, 1, n, FAR, JAN1)),
        lambda e: e.apply_grant(Grant(org, "s1", Kind.SEAT, 1, JAN1, n, JAN1, member)),
        lambda e: e.apply_grant(Grant(org, "s2", Kind.SEAT, 1, JAN1, FAR, JAN1, s)),
        lambda e: e.revoke_grant(org, s, "b", NOW),
        lambda e: e.revoke_grant(org, None, s, NOW),
        lambda e: e.revoke_grant(org, None, "b", n),
        lambda e: e.settle_batch(org, [UsageEvent(s, org, member, 1, NOW)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, org, s, 1, NOW)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, org, member, n, NOW)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, org, member, 1, n)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, org, member, 1, NOW, s)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, s, member, 1, NOW)], NOW),
        lambda e: e.settle_batch(org, [UsageEvent(key, org, member, 1, NOW)], n),
        lambda e: e.check(org, member, n, NOW),
        lambda e: e.check(org, member, 1, n),
        lambda e: e.reserve(org, member, n, NOW, "r"),
        lambda e: e.reserve(org, member, 1, NOW, s),
        lambda e: e.reserve(org, member, 1, NOW, "r", n),
        lambda e: e.release(org, "r", n),
        lambda e: e.void(org, s, NOW),
        lambda e: e.void(org, key, n),
        lambda e: e.void(org, key, NOW, Settlement(key, s, member, 1, NOW, MARCH)),
        lambda e: e.void(org, key, NOW, Settlement(key, org, s, 1, NOW, MARCH)),
        lambda e: e.void(org, key, NOW, Settlement(key, org, member, 1, NOW, MARCH, unfunded=n)),
        lambda e: e.void(
            org,
            key,
            NOW,
            Settlement(key, org, member, 1, NOW, MARCH, lines=(Line(s, Kind.SHARED, 1),)),
        ),
        lambda e: e.void(
            org,
            key,
            NOW,
            Settlement(key, org, member, 1, NOW, MARCH, lines=(Line("b", Kind.SHARED, n),)),
        ),
        lambda e: e.remove_member(org, s),
        lambda e: e.remove_member(s, member),
        lambda e: e.delete_billing_group(org, s),
        lambda e: e.check(s, member, 1, NOW),
        lambda e: e.check(org, s, 1, NOW),
        lambda e: e.release(org, s, NOW),
        lambda e: e.confirm(s, ["k"]),
        lambda e: e.usage(s, NOW),
        lambda e: e.balances(s, NOW),
        lambda e: e.prune(s, NOW),
        lambda e: e.restore(s, {}, {}, NOW),
        lambda e: e.restore(org, {s: 0}, {}, NOW),
        lambda e: e.restore(org, {"b": n}, {}, NOW),
        lambda e: e.restore(org, {}, {s: 0}, NOW),
        lambda e: e.restore(org, {}, {"drawn": n}, NOW),
        lambda e: e.restore(org, {}, {"member:a": MAX_AMOUNT, f"member:{s}": 1}, NOW),
        lambda e: e.prune(org, n),
        lambda e: e.usage(org, NOW),  # where set_epoch was: keeps the examples' indexes
        lambda e: e.put_org(org_cfg),  # valid: changes nothing the comparison sees
    ]


async def _state(engine: Any, org: str) -> tuple[Any, ...]:
    return (
        await engine.balances(org, NOW),
        await engine.usage(org, NOW),
        await engine.check(org, "a", 1, NOW),
        await engine.has_org(org),
    )


async def _attempt(call: Callable[[Any], Awaitable[Any]], engine: Any) -> str:
    try:
        await call(engine)
    except EngineInputError:
        return "refused"
    return "accepted"


@pytest.fixture
async def pair(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url)
    redis_engine = RedisEngine(client)
    await redis_engine.load_scripts()
    try:
        yield AsyncLedger(), redis_engine
    finally:
        await client.aclose()


ORGS = iter(range(10**9))


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(which=st.integers(0, 200), n=ints, s=texts)
async def test_engine_input_validation_raises_only_engine_input_error(
    pair: tuple[AsyncLedger, RedisEngine], which: int, n: Any, s: Any
) -> None:
    """Whatever one argument is, both engines either accept the call alike or refuse it with
    `EngineInputError`, and a refused call changes nothing."""
    model, redis_engine = pair
    org = f"iv{next(ORGS)}"
    for engine in (model, redis_engine):
        await setup_org(engine, org)
        await engine.put_member(MemberConfig(org, "a"))
        await engine.apply_grant(Grant(org, "b", Kind.SHARED, 10**6, JAN1, FAR, JAN1))
    calls = _calls(org, "a", "k", n, s)
    call = calls[which % len(calls)]
    before = [await _state(e, org) for e in (model, redis_engine)]
    assert before[0] == before[1]
    outcomes = [await _attempt(call, e) for e in (model, redis_engine)]
    assert outcomes[0] == outcomes[1], (which, n, s)
    after = [await _state(e, org) for e in (model, redis_engine)]
    if outcomes[0] == "refused":
        assert after == before
    assert after[0] == after[1], (which, n, s)


def test_ledger_has_revoke_grant() -> None:
    assert Ledger().revoke_grant("o", None, "b", 0) is None


async def test_a_void_never_fills_a_bucket_past_the_bound(
    pair: tuple[AsyncLedger, RedisEngine],
) -> None:
    # Returning more than the bucket can hold (here: more than was ever drawn) caps it at
    # MAX_AMOUNT in both engines, exactly; past 2^53 Lua's doubles would round.
    n = MAX_AMOUNT - 10**6 + 2
    org = f"iv{next(ORGS)}"
    for engine in pair:
        await setup_org(engine, org)
        await engine.put_member(MemberConfig(org, "a"))
        await engine.apply_grant(Grant(org, "b", Kind.SHARED, 10**6, JAN1, FAR, JAN1))
        lines = (Line("b", Kind.SHARED, n),)
        settlement = Settlement("k", org, "a", 1, NOW, MARCH, lines=lines)
        assert (await engine.void(org, "k", NOW, settlement)).voided
    model, redis_engine = pair
    assert await model.balances(org, NOW) == await redis_engine.balances(org, NOW)
    assert (await redis_engine.balances(org, NOW))["b"] == MAX_AMOUNT
