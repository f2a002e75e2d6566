"""The PostgreSQL repository on a fresh migrated database: codes, balance, seats, charges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from meter.engine.periods import add_months
from meter.engine.types import Kind, Period
from meter.errors import NotFound
from meter.plans.balance import SEAT_MONTH
from meter.plans.presets import preset
from meter.plans.redemption import (
    CodeAlreadyRedeemed,
    CodeKind,
    SeatMonthsNotAccepted,
    UnknownCode,
)
from meter.plans.seats import SeatBilling, seat_bucket_id
from meter.plans.store import PlansStore, _at
from plans.support import MICRO, ms

ANCHOR = ms(2025, 3, 31)


@pytest_asyncio.fixture(loop_scope="session")
async def store(migrated_dsn: str) -> AsyncIterator[PlansStore]:
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=4)
    try:
        plans = PlansStore(pool)
        for name in ("teams", "enterprise", "requests", "package"):
            await plans.put_plan(preset(name))
        yield plans
    finally:
        await pool.close()


async def add_org(store: PlansStore, org_id: str, plan_id: str, anchor: int = ANCHOR) -> None:
    await store.pool.execute(
        "INSERT INTO organizations (org_id, name, plan_id, billing_anchor) VALUES ($1, $1, $2, $3)",
        org_id, plan_id, _at(anchor),
    )  # fmt: skip


async def add_member(store: PlansStore, org_id: str, member_id: str, since: int) -> None:
    await store.pool.execute(
        "INSERT INTO members (org_id, member_id, seated, seated_since) VALUES ($1, $2, true, $3)",
        org_id, member_id, _at(since),
    )  # fmt: skip


async def test_plans_keep_their_extra_settings(store: PlansStore) -> None:
    for name in ("teams", "enterprise", "requests", "package"):
        assert await store.plan(name) == preset(name)


async def test_codes_are_single_use(store: PlansStore) -> None:
    await add_org(store, "o1", "teams")
    await add_org(store, "o2", "teams")
    await store.create_code("PACK-1", CodeKind.SHARED_CREDITS, credits=2_000 * MICRO)
    r = await store.redeem("o1", "PACK-1", ANCHOR)
    assert r.grant is not None and r.grant.amount == 2_000 * MICRO
    assert r.grant.expires_at_ms == add_months(ANCHOR, 3)
    row = await store.pool.fetchrow("SELECT * FROM credit_grants WHERE bucket_id = $1",
                                    r.grant.bucket_id)  # fmt: skip
    assert row["kind"] == "shared" and row["member_id"] is None
    for org in ("o1", "o2"):
        with pytest.raises(CodeAlreadyRedeemed) as exc:
            await store.redeem(org, "PACK-1", ANCHOR + 1)
        assert exc.value.code == "code_already_redeemed"
    with pytest.raises(UnknownCode) as unknown:
        await store.redeem("o1", "NOPE", ANCHOR)
    assert unknown.value.code == "unknown_code"
    # A code bound to an organization is unknown to every other one.
    await store.create_code("BOUND", CodeKind.SHARED_CREDITS, credits=MICRO, bound_org_id="o1")
    with pytest.raises(UnknownCode):
        await store.redeem("o2", "BOUND", ANCHOR)
    assert (await store.redeem("o1", "BOUND", ANCHOR)).grant is not None


async def test_seat_month_codes_need_a_balance_org(store: PlansStore) -> None:
    await add_org(store, "ext", "teams")
    await add_org(store, "ent", "enterprise")
    await store.create_code("M-1", CodeKind.SEAT_MONTHS_MONTHLY, seat_months=3)
    with pytest.raises(SeatMonthsNotAccepted):
        await store.redeem("ext", "M-1", ANCHOR)
    with pytest.raises(SeatMonthsNotAccepted):
        await store.set_seat_billing("ent", SeatBilling.BALANCE, ANCHOR)
    await store.set_seat_billing("ext", SeatBilling.BALANCE, ANCHOR)
    r = await store.redeem("ext", "M-1", ANCHOR)
    assert [lot.amount for lot in r.lots] == [3 * SEAT_MONTH]
    assert (await store.balance("ext", ANCHOR)).available == 3 * SEAT_MONTH


async def test_balance_pays_seats_scheduler_and_lazy_agree(store: PlansStore) -> None:
    await add_org(store, "t", "teams")
    await store.set_seat_billing("t", SeatBilling.BALANCE, ANCHOR)
    await store.create_code("Y-1", CodeKind.SEAT_MONTHS_ANNUAL, seat_months=24)
    await store.redeem("t", "Y-1", ANCHOR)  # 2 seat-months now, 2 more each month
    for m in ("a", "b", "c"):
        await add_member(store, "t", m, ANCHOR - 1000)
    first = await store.start_period("t", ANCHOR)
    assert first.unpaid == ("c",)  # two seat-months pay the two oldest... all tie: by id
    assert {g.bucket_id for g in first.grants} == {seat_bucket_id("a", ANCHOR),
                                                   seat_bucket_id("b", ANCHOR)}  # fmt: skip
    assert not await store.seat_paid("t", "c", ANCHOR)
    assert await store.seat_paid("t", "a", ANCHOR + 5)
    # Running the scheduler again, or lazy issuance, changes nothing.
    again = await store.start_period("t", ANCHOR + 10)
    assert again == first
    lazy = await store.issue_seat("t", "a", ms(2025, 4, 10))
    assert lazy.grants == tuple(g for g in first.grants if g.member_id == "a")
    assert (await store.balance("t", ANCHOR)).available == 0
    # Next period (Apr 30): the next installment of 2 pays a and b again.
    apr30 = ms(2025, 4, 30)
    second = await store.start_period("t", apr30)
    assert second.unpaid == ("c",)
    occ = await store.occupancy("t", "a", apr30)
    assert occ is not None and occ.period == Period(apr30, ms(2025, 5, 31))
    assert occ.draws[0].lot_id.endswith(":1")


async def test_mid_period_join_consumes_the_prorated_fraction(store: PlansStore) -> None:
    anchor = ms(2025, 4, 1)
    await add_org(store, "p", "teams", anchor)
    await store.set_seat_billing("p", SeatBilling.BALANCE, anchor)
    await store.create_code("M-2", CodeKind.SEAT_MONTHS_MONTHLY, seat_months=2)
    await store.redeem("p", "M-2", anchor)
    await add_member(store, "p", "m", ms(2025, 4, 16))
    issue = await store.issue_seat("p", "m", ms(2025, 4, 16))
    assert issue.occupancy is not None and issue.occupancy.fraction == SEAT_MONTH // 2
    assert [(g.kind, g.amount) for g in issue.grants] == [(Kind.SEAT, 1_500 * MICRO)]
    assert (await store.balance("p", ms(2025, 4, 16))).available == 3 * SEAT_MONTH // 2
    # The seat stays billed for the period after the member leaves.
    await store.pool.execute("UPDATE members SET seated = false WHERE member_id = 'm'")
    left = await store.issue_seat("p", "m", ms(2025, 4, 20))
    assert left.occupancy == issue.occupancy and left.grants == ()
    assert [o.member_id for o in await store.period_occupancy("p", ms(2025, 4, 20))] == ["m"]


async def test_external_billing_seats_are_paid(store: PlansStore) -> None:
    await add_org(store, "e", "enterprise")
    await add_member(store, "e", "m", ANCHOR)
    issue = await store.issue_seat("e", "m", ANCHOR)
    assert issue.paid and issue.grants == ()
    assert await store.seat_paid("e", "m", ANCHOR)
    with pytest.raises(NotFound):
        await store.issue_seat("e", "nobody", ANCHOR)


async def test_on_demand_caps_and_charges(store: PlansStore) -> None:
    await add_org(store, "r", "requests")
    await add_member(store, "r", "m", ANCHOR)
    issue = await store.issue_seat("r", "m", ANCHOR)
    assert [g.kind for g in issue.grants] == [Kind.SEAT]  # default cap 0
    top = await store.set_on_demand_cap("r", "m", 20_000 * MICRO, ANCHOR + 1000)
    assert top is not None and top.kind is Kind.ON_DEMAND and top.amount == 20_000 * MICRO
    assert await store.set_on_demand_cap("r", "m", 20_000 * MICRO, ANCHOR + 2000) is None
    again = await store.issue_seat("r", "m", ANCHOR + 3000)
    assert [g.bucket_id for g in again.grants][1] == top.bucket_id
    # On-demand usage as the settlement store totals it: 14,000 requests this cycle.
    period_end = ANCHOR + 30 * 86_400_000
    await store.pool.execute(
        "INSERT INTO org_period_totals (org_id, period_start, period_end, on_demand)"
        " VALUES ('r', $1, $2, $3)",
        _at(ANCHOR), _at(period_end), 14_000 * MICRO,
    )  # fmt: skip
    (due,) = await store.due_charges("r", ANCHOR + 5000)
    assert due.amount_micros == 2_100_000_000 and due.reason.value == "threshold"
    assert await store.due_charges("r", ANCHOR + 6000) == []
    assert await store.unpublished_charges() == [due]
    await store.mark_published("r", [due.charge_id], ANCHOR + 7000)
    assert await store.unpublished_charges() == []


async def test_expiries_are_recorded_once(store: PlansStore) -> None:
    await add_org(store, "x", "package")
    issued = await store.start_period("x", ANCHOR)
    (pool,) = issued.grants
    period = Period(pool.valid_from_ms, pool.expires_at_ms)
    entries = await store.record_expiries("x", period, {pool.bucket_id: 40 * MICRO})
    assert [(e.bucket_id, e.amount) for e in entries] == [(pool.bucket_id, 40 * MICRO)]
    await store.record_expiries("x", period, {pool.bucket_id: 1})
    assert await store.pool.fetchval("SELECT amount FROM expiry_entries WHERE org_id = 'x'") == (
        40 * MICRO
    )
