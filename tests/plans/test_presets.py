"""The shipped plan presets carry the numbers of the reference documents."""

from __future__ import annotations

import pytest

from meter.engine.types import LimitPolicy, PeriodKind
from meter.errors import InvalidInput, NotFound
from meter.plans.presets import EXTRA_SETTINGS, PLAN_COLUMNS, PlanSettings, parse_preset, preset
from plans.support import MICRO


def test_teams_preset() -> None:
    p = preset("teams")
    assert p.seat_credits == 3_000 * MICRO
    assert p.period_kind is PeriodKind.MONTHLY
    assert p.prorate
    assert p.limit_policy is LimitPolicy.SHARED  # the per-member limit counts shared credits
    assert p.default_member_limit is None
    assert p.personal_addons_allowed and p.shared_addons_allowed
    assert p.shared_pack_credits == 2_000 * MICRO and p.shared_pack_validity_months == 3
    assert p.seat_month_codes
    assert not p.billing_groups_allowed and not p.groups_allowed


def test_enterprise_preset() -> None:
    p = preset("enterprise")
    assert p.seat_credits == 0
    assert p.default_member_limit == 0  # unset means 0: may not use credits
    assert p.billing_groups_allowed and p.groups_allowed
    assert not p.personal_addons_allowed and p.shared_addons_allowed
    assert not p.seat_month_codes


def test_requests_preset() -> None:
    p = preset("requests")
    assert p.period_kind is PeriodKind.ROLLING and p.rolling_days == 30
    assert p.seat_credits == 300 * MICRO
    assert p.on_demand_allowed and p.on_demand_member_cap == 0
    assert p.on_demand_price_micros == 150_000
    assert p.on_demand_charge_threshold_micros == 2_000 * MICRO
    assert p.charge_at_period_end


def test_package_preset() -> None:
    p = preset("package")
    assert p.seat_credits == 0 and p.org_credits_per_period > 0
    assert p.shared_addons_allowed and p.shared_pack_credits


def test_plan_row_round_trip() -> None:
    for p in (preset(n) for n in ("teams", "enterprise", "requests", "package")):
        row = dict(zip(PLAN_COLUMNS, p.plan_row(), strict=True))
        assert PlanSettings.from_row(row, **p.extra_settings()) == p
        assert set(p.extra_settings()) == EXTRA_SETTINGS


def test_unknown_preset_and_settings_are_refused() -> None:
    with pytest.raises(NotFound) as exc:
        preset("gold")
    assert exc.value.code == "unknown_preset"
    with pytest.raises(InvalidInput):
        parse_preset("x", {"name": "X", "seat_credit": "1"})
    with pytest.raises(InvalidInput):
        parse_preset("x", {"name": "X", "seat_credits": "0.0000001"})
    with pytest.raises(InvalidInput):
        parse_preset("x", {"name": "X", "on_demand_allowed": True})  # no price
