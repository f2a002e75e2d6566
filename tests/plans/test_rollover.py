"""Rollover: expiry entries, charge-due records, and a year of periods in a loop."""

from __future__ import annotations

import time

from meter.engine.periods import add_months, period_at
from meter.engine.types import Grant, Kind, Period
from meter.plans.balance import SEAT_MONTH, after, summarize
from meter.plans.charges import ChargeReason, charge_due, charge_event, cost_micros
from meter.plans.expiry import expiry_entries
from meter.plans.presets import preset
from meter.plans.redemption import CodeKind, RedemptionCode, redeem
from meter.plans.seats import SeatBilling, issue_seat
from plans.support import MICRO, monthly, ms, rolling


def grant(bucket_id: str, kind: Kind, amount: int, expires: int, member: str | None) -> Grant:
    return Grant("o", bucket_id, kind, amount, 0, expires, 0, member)


def test_expiry_entries_of_an_ended_period() -> None:
    period = Period(ms(2025, 3, 1), ms(2025, 4, 1))
    grants = [
        grant("seat:m:1", Kind.SEAT, 3_000 * MICRO, period.end_ms, "m"),
        grant("seat:n:1", Kind.SEAT, 3_000 * MICRO, period.end_ms, "n"),
        grant("pack", Kind.SHARED, 2_000 * MICRO, ms(2025, 3, 20), None),
        grant("later", Kind.SHARED, 2_000 * MICRO, ms(2025, 6, 1), None),
        grant("before", Kind.PERSONAL, 10 * MICRO, period.start_ms, "m"),
        grant("untouched", Kind.PERSONAL, 7 * MICRO, ms(2025, 3, 5), "m"),
    ]
    remaining = {"seat:m:1": 1_200 * MICRO, "seat:n:1": 0, "pack": 5, "later": 9, "before": 10}
    entries = expiry_entries(grants, remaining, period)
    assert [(e.bucket_id, e.amount, e.expired_at_ms) for e in entries] == [
        ("untouched", 7 * MICRO, ms(2025, 3, 5)),
        ("pack", 5, ms(2025, 3, 20)),
        ("seat:m:1", 1_200 * MICRO, period.end_ms),
    ]


def test_charge_due_at_the_2000_dollar_threshold_and_at_cycle_end() -> None:
    plan = preset("requests")
    period = Period(0, 30 * 86_400_000)
    # $0.15 a request: $2,000 is reached at 13,334 requests (13,333 cost $1,999.95).
    assert charge_due("o", plan, period, 13_333 * MICRO, 0, 1) is None
    due = charge_due("o", plan, period, 13_334 * MICRO, 0, 1)
    assert due is not None and due.reason is ChargeReason.THRESHOLD
    assert due.amount_micros == cost_micros(13_334 * MICRO, 150_000) == 2_000_100_000
    assert due == charge_due("o", plan, period, 13_334 * MICRO, 0, 1)  # same id: idempotent
    # Later usage is charged when the cycle ends, from what the threshold charge left.
    end = charge_due("o", plan, period, 14_000 * MICRO, due.through_credits, period.end_ms)
    assert end is not None and end.reason is ChargeReason.PERIOD_END
    assert end.credits == 666 * MICRO and end.charge_id != due.charge_id
    assert charge_event(end)["amount_micros"] == 99_900_000
    assert charge_due("o", plan, period, 14_000 * MICRO, 14_000 * MICRO, period.end_ms) is None
    assert charge_due("o", preset("teams"), period, 10**12, 0, period.end_ms) is None


def test_a_year_of_periods_in_a_loop() -> None:
    """Monthly Teams org on a balance from an annual code: 12 periods, 3 seats, one joining
    mid-year at a period's midpoint; every seat paid, the balance never goes negative."""
    began = time.perf_counter()
    anchor = ms(2025, 3, 31)
    org = monthly(anchor)
    plan = preset("teams")
    lots = list(
        redeem(RedemptionCode("y", CodeKind.SEAT_MONTHS_ANNUAL, seat_months=48), "o", anchor).lots
    )
    seated = {"a": anchor, "b": anchor}
    join_period = period_at(org, add_months(anchor, 5))
    midpoint = (join_period.start_ms + join_period.end_ms) // 2
    granted: dict[str, int] = {}
    t = anchor
    for k in range(12):
        period = period_at(org, t)
        assert period.start_ms == add_months(anchor, k)
        if period == join_period:
            seated["c"] = midpoint
        for member, since in sorted(seated.items()):
            issue = issue_seat(org, plan, SeatBilling.BALANCE, member, since, max(t, since), lots)
            assert issue.occupancy is not None, (k, member)
            lots = after(lots, issue.occupancy.draws)
            again = issue_seat(org, plan, SeatBilling.BALANCE, member, since, period.end_ms - 1,
                               occupancy=issue.occupancy)  # fmt: skip
            assert again == issue
            for g in issue.grants:
                granted[g.bucket_id] = g.amount
        assert all(lot.remaining >= 0 for lot in lots)
        t = period.end_ms
    seat_credits = [v for k, v in granted.items() if k.startswith("seat:c:")]
    assert seat_credits[0] == 3_000 * MICRO * (join_period.end_ms - midpoint) // (
        join_period.end_ms - join_period.start_ms
    )
    assert len(granted) == 12 * 2 + 12 - 5
    # 4 seat-months a month, at most 3 used: unused remainders pile up but none is overdrawn.
    s = summarize(lots, t)
    assert s.frozen == 0 and s.available + s.expired > 0
    assert time.perf_counter() - began < 1.0


def test_a_year_of_rolling_periods() -> None:
    org = rolling(ms(2025, 1, 10))
    plan = preset("requests")
    t = org.anchor_ms
    starts = []
    for _ in range(13):
        issue = issue_seat(
            org, plan, SeatBilling.EXTERNAL, "m", org.anchor_ms, t, on_demand_cap=MICRO
        )
        starts.append(issue.grants[0].valid_from_ms)
        t = issue.grants[0].expires_at_ms
    assert starts[-1] - starts[0] == 12 * 30 * 86_400_000
    assert SEAT_MONTH == MICRO
