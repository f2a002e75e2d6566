"""Redemption codes: monthly, annual installments with month-end clamping, shared packs."""

from __future__ import annotations

import pytest

from meter.engine.periods import add_months
from meter.engine.types import Kind
from meter.plans.balance import SEAT_MONTH, summarize
from meter.plans.redemption import (
    CodeKind,
    InvalidCode,
    RedemptionCode,
    code_id,
    installment_dates,
    redeem,
)
from plans.support import MICRO, ms


def test_annual_code_bought_on_mar_31_returns_next_on_apr_30_then_may_31() -> None:
    dates = installment_dates(ms(2025, 3, 31, 10, 0))
    assert dates[:4] == [ms(2025, 3, 31, 10, 0), ms(2025, 4, 30, 10, 0), ms(2025, 5, 31, 10, 0),
                         ms(2025, 6, 30, 10, 0)]  # fmt: skip
    assert dates[11] == ms(2026, 2, 28, 10, 0)
    assert installment_dates(ms(2027, 3, 31))[11] == ms(2028, 2, 29)  # leap year
    assert installment_dates(ms(2025, 8, 16))[1] == ms(2025, 9, 16)


def test_annual_code_in_12_installments_each_valid_3_months_unreturned_frozen() -> None:
    bought = ms(2025, 3, 31)
    r = redeem(RedemptionCode("c1", CodeKind.SEAT_MONTHS_ANNUAL, seat_months=24), "o", bought)
    assert len(r.lots) == 12 and r.grant is None
    assert all(lot.amount == 2 * SEAT_MONTH for lot in r.lots)
    assert [lot.available_from_ms for lot in r.lots] == installment_dates(bought)
    assert all(lot.expires_at_ms == add_months(lot.available_from_ms, 3) for lot in r.lots)
    assert r.lots[1].expires_at_ms == ms(2025, 7, 30)
    at_once = summarize(r.lots, bought)
    assert (at_once.available, at_once.frozen) == (2 * SEAT_MONTH, 22 * SEAT_MONTH)
    on_apr_30 = summarize(r.lots, ms(2025, 4, 30))
    assert (on_apr_30.available, on_apr_30.frozen) == (4 * SEAT_MONTH, 20 * SEAT_MONTH)


def test_monthly_code_valid_3_months() -> None:
    redeemed = ms(2025, 1, 15)
    r = redeem(RedemptionCode("c2", CodeKind.SEAT_MONTHS_MONTHLY, seat_months=5), "o", redeemed)
    (lot,) = r.lots
    assert (lot.amount, lot.available_from_ms, lot.expires_at_ms) == (
        5 * SEAT_MONTH, redeemed, ms(2025, 4, 15))  # fmt: skip
    assert summarize(r.lots, ms(2025, 4, 14)).available == 5 * SEAT_MONTH
    assert summarize(r.lots, ms(2025, 4, 15)).expired == 5 * SEAT_MONTH


def test_shared_credit_code_is_a_shared_pack_valid_3_months() -> None:
    redeemed = ms(2025, 11, 30)
    r = redeem(RedemptionCode("c3", CodeKind.SHARED_CREDITS, credits=2_000 * MICRO), "o", redeemed)
    assert r.lots == () and r.grant is not None
    g = r.grant
    assert (g.kind, g.member_id, g.amount) == (Kind.SHARED, None, 2_000 * MICRO)
    assert (g.valid_from_ms, g.expires_at_ms) == (redeemed, ms(2026, 2, 28))
    assert g.bucket_id == "redeem:c3"


def test_invalid_codes() -> None:
    with pytest.raises(InvalidCode):
        RedemptionCode("x", CodeKind.SEAT_MONTHS_ANNUAL, seat_months=18)
    with pytest.raises(InvalidCode):
        RedemptionCode("x", CodeKind.SEAT_MONTHS_MONTHLY, seat_months=0)
    with pytest.raises(InvalidCode):
        RedemptionCode("x", CodeKind.SHARED_CREDITS, seat_months=1, credits=1)


def test_code_id_is_stable_and_hides_the_code() -> None:
    assert code_id("ABC-123") == code_id("ABC-123") != code_id("ABC-124")
    assert "ABC" not in code_id("ABC-123")
