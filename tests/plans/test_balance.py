"""Seat-month consumption: soonest-expiring lot first, prorated joins, all or nothing."""

from __future__ import annotations

from meter.engine.types import Period
from meter.plans.balance import SEAT_MONTH, Draw, Lot, after, draw, expired_lots, summarize
from meter.plans.presets import preset
from meter.plans.seats import SeatBilling, occupy
from plans.support import monthly, ms

TEAMS = preset("teams")


def lot(lot_id: str, amount: int, available: int, expires: int) -> Lot:
    return Lot("o", lot_id, amount, amount, available, expires)


def test_seat_month_consumption_order_soonest_expiring_first() -> None:
    t = ms(2025, 5, 1)
    lots = [
        lot("late", 3 * SEAT_MONTH, ms(2025, 4, 20), ms(2025, 7, 20)),
        lot("soon", SEAT_MONTH // 2, ms(2025, 3, 1), ms(2025, 6, 1)),
        lot("expired", 5 * SEAT_MONTH, ms(2025, 1, 1), ms(2025, 4, 1)),
        lot("frozen", 5 * SEAT_MONTH, ms(2025, 5, 2), ms(2025, 8, 2)),
    ]
    assert draw(lots, SEAT_MONTH, t) == (
        Draw("soon", SEAT_MONTH // 2),
        Draw("late", SEAT_MONTH // 2),
    )
    left = {x.lot_id: x.remaining for x in after(lots, draw(lots, SEAT_MONTH, t) or ())}
    assert left == {"late": 5 * SEAT_MONTH // 2, "soon": 0, "expired": 5 * SEAT_MONTH,
                    "frozen": 5 * SEAT_MONTH}  # fmt: skip


def test_ties_break_on_availability_then_lot_id() -> None:
    end = ms(2025, 9, 1)
    lots = [lot("b", SEAT_MONTH, ms(2025, 1, 1), end), lot("a", SEAT_MONTH, ms(2025, 1, 1), end),
            lot("c", SEAT_MONTH, ms(2024, 12, 1), end)]  # fmt: skip
    assert draw(lots, 2 * SEAT_MONTH, ms(2025, 2, 1)) == (
        Draw("c", SEAT_MONTH),
        Draw("a", SEAT_MONTH),
    )


def test_not_enough_draws_nothing() -> None:
    lots = [lot("a", SEAT_MONTH // 2, 0, ms(2030, 1, 1))]
    assert draw(lots, SEAT_MONTH, ms(2025, 1, 1)) is None


def test_prorated_seat_month_consumption() -> None:
    org = monthly(ms(2025, 4, 1))
    lots = [lot("a", 2 * SEAT_MONTH, ms(2025, 3, 1), ms(2025, 6, 1))]
    occ = occupy(org, TEAMS, SeatBilling.BALANCE, "m", ms(2025, 4, 16), ms(2025, 4, 16), lots)
    assert occ is not None and occ.draws == (Draw("a", SEAT_MONTH // 2),)
    # Without proration a mid-period seat costs a whole seat-month.
    no_prorate = preset("requests")
    occ = occupy(org, no_prorate, SeatBilling.BALANCE, "m", ms(2025, 4, 16), ms(2025, 4, 16), lots)
    assert occ is not None and occ.fraction == SEAT_MONTH


def test_external_billing_draws_nothing() -> None:
    org = monthly(ms(2025, 4, 1))
    occ = occupy(org, TEAMS, SeatBilling.EXTERNAL, "m", ms(2025, 4, 16), ms(2025, 4, 16))
    assert occ is not None and occ.draws == () and occ.fraction == SEAT_MONTH // 2


def test_summary_splits_available_frozen_expired() -> None:
    lots = [
        lot("a", SEAT_MONTH, ms(2025, 1, 1), ms(2025, 4, 1)),
        lot("b", 2 * SEAT_MONTH, ms(2025, 2, 1), ms(2025, 5, 1)),
        lot("c", 4 * SEAT_MONTH, ms(2025, 6, 1), ms(2025, 9, 1)),
    ]
    s = summarize(lots, ms(2025, 4, 10))
    assert (s.available, s.frozen, s.expired) == (2 * SEAT_MONTH, 4 * SEAT_MONTH, SEAT_MONTH)
    assert s.next_expiry_ms == ms(2025, 5, 1)
    assert expired_lots(lots, Period(ms(2025, 3, 1), ms(2025, 4, 1))) == {"a": SEAT_MONTH}
