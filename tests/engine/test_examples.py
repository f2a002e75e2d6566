"""Worked examples of the rules, each run against the model and against Redis."""

from __future__ import annotations

import inspect
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from meter.engine.model import Ledger
from meter.engine.periods import period_at, prorate
from meter.engine.redis import RedisEngine
from meter.engine.types import (
    MICRO,
    BillingGroupConfig,
    EngineInputError,
    Grant,
    Kind,
    LimitPolicy,
    Line,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    Period,
    PeriodKind,
    Reason,
    UsageEvent,
)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


C = MICRO  # one credit
DAY = 86_400_000
JAN1 = ms(2024, 1, 1)
NOW = ms(2024, 3, 10)
MARCH = Period(ms(2024, 3, 1), ms(2024, 4, 1))
FAR = ms(2030, 1, 1)


async def setup_org(engine: Any, org_id: str, **kw: Any) -> OrgConfig:
    org = replace(OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1), **kw)
    await engine.put_org(org)
    return org


async def grant(
    engine: Any, org_id: str, bucket: str, kind: Kind, credits: int, member: str | None = None,
    expires: int = FAR, valid_from: int = JAN1, granted: int = JAN1,
) -> None:  # fmt: skip
    g = Grant(org_id, bucket, kind, credits * C, valid_from, expires, granted, member)
    assert await engine.apply_grant(g) is True
    assert await engine.apply_grant(g) is False


def event(org_id: str, key: str, member: str, credits: int, t: int = NOW, **kw: Any) -> UsageEvent:
    return UsageEvent(key, org_id, member, credits * C, t, **kw)


def signature_of(cls: type) -> dict[str, list[str]]:
    """Public method names and their parameters."""
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_both_implementations_offer_the_same_methods() -> None:
    model, engine = signature_of(Ledger), signature_of(RedisEngine)
    engine.pop("load_scripts")
    assert model == engine


async def test_consumption_order_seat_personal_shared_soonest_expiring_first(
    engine: Any, org_id: str
) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "later-pack", Kind.SHARED, 1000, expires=ms(2024, 6, 1))
    await grant(engine, org_id, "sooner-pack", Kind.SHARED, 1000, expires=ms(2024, 4, 15))
    await grant(engine, org_id, "addon", Kind.PERSONAL, 500, "ann")
    await grant(engine, org_id, "seat-mar", Kind.SEAT, 1000, "ann", expires=MARCH.end_ms)
    [s] = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 3000)], NOW)
    assert s.lines == (
        Line("seat-mar", Kind.SEAT, 1000 * C),
        Line("addon", Kind.PERSONAL, 500 * C),
        Line("sooner-pack", Kind.SHARED, 1000 * C),
        Line("later-pack", Kind.SHARED, 500 * C),
    )
    assert s.unfunded == 0 and s.period == MARCH and not s.late
    assert await engine.balances(org_id, NOW) == {
        "seat-mar": 0, "addon": 0, "sooner-pack": 0, "later-pack": 500 * C,
    }  # fmt: skip


async def test_member_at_shared_only_cap_still_spends_seat_credits(
    engine: Any, org_id: str
) -> None:
    await setup_org(engine, org_id, limit_policy=LimitPolicy.SHARED, default_member_limit=0)
    await engine.put_member(MemberConfig(org_id, "bob"))
    await grant(engine, org_id, "seat", Kind.SEAT, 1000, "bob", expires=MARCH.end_ms)
    await grant(engine, org_id, "pool", Kind.SHARED, 5000)
    first, second = await engine.settle_batch(
        org_id, [event(org_id, "e1", "bob", 600), event(org_id, "e2", "bob", 600)], NOW
    )
    assert first.lines == (Line("seat", Kind.SEAT, 600 * C),) and not first.member_limited
    assert second.lines == (Line("seat", Kind.SEAT, 400 * C),)
    assert second.unfunded == 200 * C and second.member_limited
    check = await engine.check(org_id, "bob", 1, NOW)
    assert (check.allowed, check.reason) == (False, Reason.MEMBER_LIMIT_REACHED)
    assert check.member_remaining == 0 and check.available[Kind.SHARED] == 5000 * C


async def test_billing_group_limit_stops_a_second_member(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_billing_group(BillingGroupConfig(org_id, "research", 1000 * C))
    await engine.put_member(MemberConfig(org_id, "ann", billing_group="research"))
    await engine.put_member(MemberConfig(org_id, "bob", billing_group="research"))
    await grant(engine, org_id, "pool", Kind.SHARED, 10_000)
    a, b = await engine.settle_batch(
        org_id, [event(org_id, "e1", "ann", 1000), event(org_id, "e2", "bob", 100)], NOW
    )
    assert a.unfunded == 0 and a.billing_group == "research"
    assert b.lines == () and b.unfunded == 100 * C and b.group_limited and not b.member_limited
    check = await engine.check(org_id, "bob", 1, NOW)
    assert (check.reason, check.group_remaining) == (Reason.GROUP_LIMIT_REACHED, 0)
    # Leaving the group frees the member; the usage already attributed stays with the group.
    await engine.put_member(MemberConfig(org_id, "bob"))
    assert (await engine.check(org_id, "bob", 1, NOW)).allowed
    assert (await engine.usage(org_id, NOW))["group:research"] == 1000 * C


async def test_unassigned_has_no_limit(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    with pytest.raises(EngineInputError):
        await engine.put_billing_group(BillingGroupConfig(org_id, "", 1))
    await engine.put_billing_group(BillingGroupConfig(org_id, "ops", 1 * C))
    await engine.put_member(MemberConfig(org_id, "ann", billing_group="ops"))
    await engine.delete_billing_group(org_id, "ops")  # ann falls back to Unassigned
    await grant(engine, org_id, "pool", Kind.SHARED, 10_000)
    [s] = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 9000)], NOW)
    assert s.billing_group == "" and s.unfunded == 0 and not s.group_limited
    check = await engine.check(org_id, "ann", 1000 * C, NOW)
    assert check.allowed and check.group_remaining is None


async def test_prorated_seat_at_midpoint(engine: Any, org_id: str) -> None:
    org = await setup_org(engine, org_id, period_kind=PeriodKind.ROLLING, rolling_days=30)
    await engine.put_member(MemberConfig(org_id, "ann"))
    period = period_at(org, NOW)
    joined = (period.start_ms + period.end_ms) // 2
    amount = prorate(3000 * C, period, joined)
    assert amount == 1500 * C
    seat = Grant(org_id, "seat", Kind.SEAT, amount, joined, period.end_ms, joined, "ann")
    await engine.apply_grant(seat)
    assert (await engine.check(org_id, "ann", 0, joined)).available[Kind.SEAT] == 1500 * C


async def test_monthly_clamping_in_settlements(engine: Any, org_id: str) -> None:
    anchor = ms(2023, 1, 31, 8)
    await engine.put_org(OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor))
    await engine.put_member(MemberConfig(org_id, "ann"))
    settled = []
    for key, t in [
        ("feb", ms(2023, 2, 28, 9)),
        ("mar", ms(2023, 3, 31, 7)),
        ("apr", ms(2023, 4, 30, 8)),
    ]:
        settled += await engine.settle_batch(org_id, [event(org_id, key, "ann", 1, t)], t + 1)
    feb, mar, apr = settled
    assert feb.period == Period(ms(2023, 2, 28, 8), ms(2023, 3, 31, 8))
    assert mar.period == feb.period
    assert apr.period == Period(ms(2023, 4, 30, 8), ms(2023, 5, 31, 8))


async def test_late_events(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id, grace_ms=86_400_000)
    await engine.put_member(MemberConfig(org_id, "ann"))
    feb = Period(ms(2024, 2, 1), ms(2024, 3, 1))
    await grant(engine, org_id, "seat-feb", Kind.SEAT, 100, "ann", feb.end_ms, feb.start_ms)
    await grant(engine, org_id, "seat-mar", Kind.SEAT, 100, "ann", MARCH.end_ms, MARCH.start_ms)
    in_grace, too_late = await engine.settle_batch(
        org_id, [event(org_id, "e1", "ann", 10, ms(2024, 2, 29, 23))], ms(2024, 3, 1, 12)
    ) + await engine.settle_batch(
        org_id, [event(org_id, "e2", "ann", 10, ms(2024, 2, 29, 23))], ms(2024, 3, 2, 1)
    )
    assert in_grace.period == feb and not in_grace.late
    assert in_grace.lines == (Line("seat-feb", Kind.SEAT, 10 * C),)
    assert too_late.period == MARCH and too_late.late
    assert too_late.lines == (Line("seat-mar", Kind.SEAT, 10 * C),)


async def test_void_returns_credits_except_to_expired_buckets(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "seat", Kind.SEAT, 100, "ann", expires=MARCH.end_ms)
    await grant(engine, org_id, "pool", Kind.SHARED, 1000)
    [s] = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 300)], NOW)
    after = MARCH.end_ms + 1  # the seat bucket has expired, the pool has not
    v = await engine.void(org_id, "e1", after)
    assert v.voided and v.returned == (Line("pool", Kind.SHARED, 200 * C),)
    assert await engine.balances(org_id, after) == {"seat": 0, "pool": 1000 * C}
    again = await engine.void(org_id, "e1", after)
    assert again.duplicate and again.returned == v.returned
    assert not (await engine.void(org_id, "never", after)).voided
    assert s.lines[0] == Line("seat", Kind.SEAT, 100 * C)


async def test_void_reverses_counters_and_works_after_confirm(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "pool", Kind.SHARED, 100)
    [s] = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 150)], NOW)
    assert await engine.usage(org_id, NOW) == {
        "member:ann": 100 * C, "member_shared:ann": 100 * C, "group:": 100 * C,
        "drawn": 100 * C, "unfunded": 50 * C,
    }  # fmt: skip
    await engine.confirm(org_id, ["e1"])
    assert not (await engine.void(org_id, "e1", NOW)).voided  # forgotten, and none given
    v = await engine.void(org_id, "e1", NOW, settlement=s)
    assert v.returned == s.lines
    assert await engine.usage(org_id, NOW) == {}
    assert await engine.balances(org_id, NOW) == {"pool": 100 * C}


async def test_duplicate_event_returns_the_first_result(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "pool", Kind.SHARED, 100)
    first = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 10)], NOW)
    again = await engine.settle_batch(
        org_id, [event(org_id, "e1", "ann", 99), event(org_id, "e1", "ann", 1)], NOW
    )
    assert again[0].duplicate and again[1].duplicate
    assert again[0] == again[1] and again[0].credits == first[0].credits == 10 * C
    assert await engine.balances(org_id, NOW) == {"pool": 90 * C}


async def test_reservation_is_consumed_by_its_event(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "pool", Kind.SHARED, 100)
    held = await engine.reserve(org_id, "ann", 80 * C, NOW, "r1")
    assert held.allowed and held.reservation_expires_ms == NOW + 60_000
    assert (await engine.reserve(org_id, "ann", 80 * C, NOW, "r1")).reservation_id == "r1"
    denied = await engine.check(org_id, "ann", 30 * C, NOW)
    assert denied.reason == Reason.INSUFFICIENT_CREDITS and denied.available[Kind.SHARED] == 20 * C
    [s] = await engine.settle_batch(
        org_id, [event(org_id, "e1", "ann", 70, reservation_id="r1")], NOW + 1
    )
    assert s.reservation_id == "r1" and s.unfunded == 0
    assert (await engine.check(org_id, "ann", 30 * C, NOW + 1)).allowed  # the hold is gone
    assert await engine.release(org_id, "r1", NOW + 1) is False


async def test_holds_expire_and_release(engine: Any, org_id: str) -> None:
    await setup_org(engine, org_id, default_member_limit=50 * C)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await grant(engine, org_id, "pool", Kind.SHARED, 100)
    r = await engine.reserve(org_id, "ann", 40 * C, NOW, "r1", ttl_ms=10**9)
    assert r.reservation_expires_ms == NOW + 15 * 60_000  # capped
    limited = await engine.reserve(org_id, "ann", 20 * C, NOW, "r2")
    assert limited.reason == Reason.MEMBER_LIMIT_REACHED and limited.reservation_id is None
    assert (await engine.check(org_id, "ann", 0, NOW)).member_remaining == 10 * C
    assert (await engine.reserve(org_id, "ann", 10 * C, NOW, "r3", ttl_ms=1000)).allowed
    assert (await engine.check(org_id, "ann", 0, NOW + 1000)).member_remaining == 10 * C
    assert await engine.release(org_id, "r1", NOW + 1000) is True
    assert await engine.release(org_id, "r1", NOW + 1000) is False
    assert (await engine.check(org_id, "ann", 0, NOW + 1000)).member_remaining == 50 * C


async def test_reason_codes(engine: Any, org_id: str) -> None:
    assert (await engine.check(org_id, "ann", 1, NOW)).reason == Reason.UNKNOWN_ORG
    [s] = await engine.settle_batch(org_id, [event(org_id, "e0", "ann", 1)], NOW)
    assert s.reason == Reason.UNKNOWN_ORG and s.period is None
    org = await setup_org(engine, org_id)
    assert (await engine.check(org_id, "ann", 1, NOW)).reason == Reason.UNKNOWN_MEMBER
    [s] = await engine.settle_batch(org_id, [event(org_id, "e0", "ann", 1)], NOW)
    assert s.reason == Reason.UNKNOWN_MEMBER
    await engine.put_member(MemberConfig(org_id, "ann", seated=False))
    assert (await engine.check(org_id, "ann", 1, NOW)).reason == Reason.NO_SEAT
    await engine.put_member(MemberConfig(org_id, "ann"))
    assert (await engine.check(org_id, "ann", 1, NOW)).reason == Reason.INSUFFICIENT_CREDITS
    assert (await engine.check(org_id, "ann", 0, NOW)).allowed
    await engine.put_org(replace(org, status=OrgStatus.SUSPENDED))
    assert (await engine.check(org_id, "ann", 1, NOW)).reason == Reason.ORG_INACTIVE
    [s] = await engine.settle_batch(org_id, [event(org_id, "e0", "ann", 1)], NOW)
    assert s.reason is None and s.unfunded == 1 * C  # recorded, nothing drawn
    await engine.remove_member(org_id, "ann")
    [s] = await engine.settle_batch(org_id, [event(org_id, "e1", "ann", 1)], NOW)
    assert s.reason is None  # in flight when removed: still settles


@pytest.mark.parametrize(
    "bad",
    [
        UsageEvent("k", "o", "m", -1, NOW),
        UsageEvent("k", "o", "m", 2**53, NOW),
        UsageEvent("k", "o", "m", 1, NOW, reservation_id="a\x1fb"),
        UsageEvent("k\n", "o", "m", 1, NOW),
        UsageEvent("k", "other", "m", 1, NOW),
    ],
)
async def test_bad_input_is_refused_before_any_state(engine: Any, bad: UsageEvent) -> None:
    with pytest.raises(EngineInputError):
        await engine.settle_batch("o", [bad], NOW)


async def test_prune_drops_seat_buckets_once_no_event_can_reach_them(
    engine: Any, org_id: str
) -> None:
    await setup_org(engine, org_id, grace_ms=DAY)
    await engine.put_member(MemberConfig(org_id, "ann"))
    feb = Period(ms(2024, 2, 1), ms(2024, 3, 1))
    await grant(engine, org_id, "seat-jan", Kind.SEAT, 100, "ann", feb.start_ms, JAN1)
    await grant(engine, org_id, "seat-feb", Kind.SEAT, 100, "ann", feb.end_ms, feb.start_ms)
    await grant(engine, org_id, "pool", Kind.SHARED, 100, expires=feb.end_ms - DAY)
    await grant(engine, org_id, "seat-mar", Kind.SEAT, 100, "ann", MARCH.end_ms, MARCH.start_ms)
    keep = feb.end_ms + DAY + 7 * DAY  # February closes a day after its end, kept a week more
    assert await engine.prune(org_id, keep) == 1  # January's seat
    # The pool expired before February ended, but an event of February may still reach it.
    assert set(await engine.balances(org_id, keep)) == {"seat-feb", "pool", "seat-mar"}
    [s] = await engine.settle_batch(
        org_id, [event(org_id, "e1", "ann", 150, feb.end_ms - 2 * DAY)], feb.end_ms + 1
    )
    assert s.lines == (Line("seat-feb", Kind.SEAT, 100 * C), Line("pool", Kind.SHARED, 50 * C))
    assert await engine.prune(org_id, keep + 1) == 2
    assert await engine.balances(org_id, keep + 1) == {"seat-mar": 100 * C}
    voided = await engine.void(org_id, "e1", keep + 1)  # nothing goes back to expired buckets
    assert voided.voided and voided.returned == ()
    assert await engine.apply_grant(Grant(org_id, "pool", Kind.SHARED, 1, JAN1, FAR, JAN1))


async def test_restore_checks_names_before_changing_anything(engine: Any, org_id: str) -> None:
    with pytest.raises(EngineInputError):
        await engine.restore(org_id, {}, {}, NOW)  # unknown org
    await setup_org(engine, org_id)
    for m in ("ann", "bob"):
        await engine.put_member(MemberConfig(org_id, m))
        await grant(engine, org_id, "seat", Kind.SEAT, 100, m)
    await grant(engine, org_id, "pool", Kind.SHARED, 100)
    for balances, usage in [
        ({"seat": 5}, {}),  # two members have a bucket "seat"
        ({"nope": 5}, {}),
        ({"pool": -1}, {}),
        ({}, {"members:ann": 5}),
        ({}, {"member:": 5}),
        ({}, {"drawn": -5}),
    ]:
        with pytest.raises(EngineInputError):
            await engine.restore(org_id, balances, usage, NOW)
    assert await engine.balances(org_id, NOW) == {"seat": 100 * C, "pool": 100 * C}
    await engine.restore(org_id, {"pool": 7}, {"member:ann": 93, "group:": 93, "drawn": 93}, NOW)
    assert (await engine.balances(org_id, NOW))["pool"] == 7
    assert await engine.usage(org_id, NOW) == {"member:ann": 93, "group:": 93, "drawn": 93}
    assert await engine.usage(org_id, MARCH.end_ms) == {}


async def test_org_marker(engine: Any, org_id: str) -> None:
    """`has_org`: the organization's state is there once its config is put, not before."""
    assert not await engine.has_org(org_id)
    assert (await engine.check(org_id, "ann", 1, NOW)).reason is Reason.UNKNOWN_ORG
    await setup_org(engine, org_id)
    assert await engine.has_org(org_id)


async def test_put_org_without_create_only_replaces(engine: Any, org_id: str) -> None:
    """`put_org(create=False)` (an update, the reconciler) leaves an organization without state
    absent, to be rebuilt, rather than bring back a config without its buckets."""
    org = OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, JAN1)
    await engine.put_org(org, create=False)
    assert not await engine.has_org(org_id)
    await engine.put_org(org)
    await engine.put_member(MemberConfig(org_id, "ann"))
    await engine.put_org(replace(org, status=OrgStatus.SUSPENDED), create=False)
    assert await engine.has_org(org_id)
    assert (await engine.check(org_id, "ann", 1, NOW)).reason is Reason.ORG_INACTIVE
