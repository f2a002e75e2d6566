"""Seat issuance: full at period start, prorated mid-period, idempotent, paid or `no_seat`."""

from __future__ import annotations

from dataclasses import replace

from meter.engine.periods import period_at
from meter.engine.types import Kind
from meter.plans.balance import SEAT_MONTH, Lot
from meter.plans.presets import preset
from meter.plans.seats import (
    SeatBilling,
    issue_seat,
    on_demand_grant,
    pool_grant,
    seat_bucket_id,
    seat_is_paid,
)
from plans.support import MICRO, monthly, ms, rolling

TEAMS = preset("teams")
ANCHOR = ms(2025, 3, 1)
ORG = monthly(ANCHOR)


def lot(lot_id: str, amount: int, available: int, expires: int) -> Lot:
    return Lot("o", lot_id, amount, amount, available, expires)


def test_member_joining_at_the_midpoint_of_a_3000_credit_cycle_gets_1500() -> None:
    # April 2025 has 30 days: the midpoint is April 16, 00:00.
    issue = issue_seat(monthly(ms(2025, 4, 1)), TEAMS, SeatBilling.EXTERNAL, "m", ms(2025, 4, 16),
                       ms(2025, 4, 16))  # fmt: skip
    (grant,) = issue.grants
    assert grant.kind is Kind.SEAT and grant.amount == 1_500 * MICRO
    assert grant.valid_from_ms == ms(2025, 4, 16) and grant.expires_at_ms == ms(2025, 5, 1)
    assert issue.occupancy is not None and issue.occupancy.fraction == SEAT_MONTH // 2


def test_member_seated_at_period_start_gets_the_full_amount() -> None:
    issue = issue_seat(ORG, TEAMS, SeatBilling.EXTERNAL, "m", ANCHOR - 5, ms(2025, 3, 20))
    assert [g.amount for g in issue.grants] == [3_000 * MICRO]
    assert issue.grants[0].valid_from_ms == ANCHOR


def test_proration_rounds_down_to_a_micro_credit() -> None:
    # One millisecond into a 31-day month: 3000 * (31 days - 1 ms) / 31 days, floored.
    period = period_at(ORG, ANCHOR)
    length = period.end_ms - period.start_ms
    issue = issue_seat(ORG, TEAMS, SeatBilling.EXTERNAL, "m", ANCHOR + 1, ANCHOR + 1)
    assert issue.grants[0].amount == 3_000 * MICRO * (length - 1) // length


def test_scheduler_and_lazy_issuance_give_the_same_grant() -> None:
    lots = [lot("a", 5 * SEAT_MONTH, ANCHOR - 1, ms(2025, 6, 1))]
    at_start = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR - 1, ANCHOR, lots)
    lazy = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR - 1, ms(2025, 3, 25), lots)
    assert at_start == lazy
    assert at_start.grants[0].bucket_id == seat_bucket_id("m", ANCHOR)


def test_seat_paid_from_the_balance_is_drawn_once_per_period() -> None:
    lots = [lot("a", SEAT_MONTH, ANCHOR, ms(2025, 6, 1))]
    first = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR, ANCHOR, lots)
    assert first.occupancy is not None and first.occupancy.fraction == SEAT_MONTH
    # Re-issuing with the period's record draws nothing more and grants the same bucket.
    again = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR, ms(2025, 3, 9), [],
                       occupancy=first.occupancy)  # fmt: skip
    assert again == first


def test_no_balance_means_no_seat_credits_and_no_seat() -> None:
    issue = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR, ANCHOR, [])
    assert not issue.paid and issue.grants == ()
    assert not seat_is_paid(SeatBilling.BALANCE, issue.occupancy)
    assert seat_is_paid(SeatBilling.EXTERNAL, None)


def test_seat_unpaid_at_its_start_is_paid_from_a_later_redemption_prorated() -> None:
    later = ms(2025, 3, 16, 12)  # midpoint of March (31 days)
    lots = [lot("a", SEAT_MONTH, later, ms(2025, 6, 16, 12))]
    issue = issue_seat(ORG, TEAMS, SeatBilling.BALANCE, "m", ANCHOR, later, lots)
    assert issue.occupancy is not None
    assert issue.occupancy.seated_from_ms == later
    assert issue.occupancy.fraction == SEAT_MONTH // 2
    assert issue.grants[0].amount == 1_500 * MICRO


def test_enterprise_seat_carries_no_credits() -> None:
    issue = issue_seat(ORG, preset("enterprise"), SeatBilling.EXTERNAL, "m", ANCHOR, ANCHOR)
    assert issue.paid and issue.grants == ()


def test_requests_plan_grants_300_requests_and_the_on_demand_cap() -> None:
    org = rolling(ANCHOR)
    plan = preset("requests")
    mid = ANCHOR + 15 * 86_400_000
    issue = issue_seat(org, plan, SeatBilling.EXTERNAL, "m", mid, mid, on_demand_cap=50 * MICRO)
    seat, on_demand = issue.grants
    assert seat.amount == 300 * MICRO  # not prorated
    assert on_demand.kind is Kind.ON_DEMAND and on_demand.amount == 50 * MICRO
    assert on_demand.expires_at_ms == ANCHOR + 30 * 86_400_000
    # The preset's default cap is 0: no on-demand bucket until the admin sets one.
    assert len(issue_seat(org, plan, SeatBilling.EXTERNAL, "m", mid, mid).grants) == 1
    # Raising the cap tops up the difference, from now on.
    assert issue.occupancy is not None
    later = mid + 86_400_000
    top_up = on_demand_grant(plan, issue.occupancy, 80 * MICRO, 50 * MICRO, later)
    assert top_up is not None and top_up.amount == 30 * MICRO and top_up.valid_from_ms == later
    assert top_up.bucket_id != on_demand.bucket_id
    assert on_demand_grant(plan, issue.occupancy, 40 * MICRO, 50 * MICRO, later) is None


def test_package_plan_pool_of_the_period() -> None:
    plan = preset("package")
    grant = pool_grant(ORG, plan, ms(2025, 3, 10))
    assert grant is not None and grant.kind is Kind.SHARED and grant.member_id is None
    assert (grant.valid_from_ms, grant.expires_at_ms) == (ANCHOR, ms(2025, 4, 1))
    assert grant == pool_grant(ORG, plan, ANCHOR)
    assert pool_grant(ORG, replace(plan, org_credits_per_period=0), ANCHOR) is None
