"""Which period a report request names (pure)."""

from __future__ import annotations

import pytest

from meter.engine.types import OrgConfig, OrgStatus, PeriodKind
from meter.errors import InvalidInput
from meter.reports import billing_group_filter, resolve_period
from reports.conftest import at

# Monthly, anchored on Jan 31 at 09:30: periods start Jan 31, Feb 28, Mar 31, Apr 30 (09:30).
ORG = OrgConfig("o", OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms=at("2025-01-31T09:30:00"))
NOW = at("2025-04-10T00:00:00")


def span(spec: str | None) -> tuple[int, int, bool]:
    p = resolve_period(ORG, spec, NOW)
    return p.start_ms, p.end_ms, p.current


def test_current_is_the_period_containing_now() -> None:
    current = (at("2025-03-31T09:30:00"), at("2025-04-30T09:30:00"), True)
    assert span(None) == span("current") == current
    assert span("2025-03-31") == current
    assert span("2025-04-10") == current


def test_a_date_names_the_period_starting_that_day_else_the_one_containing_it() -> None:
    feb = (at("2025-02-28T09:30:00"), at("2025-03-31T09:30:00"), False)
    assert span("2025-02-28") == feb
    assert span("2025-03-01") == feb
    assert span("2025-03-30") == feb
    assert span("2025-02-27") == (at("2025-01-31T09:30:00"), at("2025-02-28T09:30:00"), False)


def test_rolling_periods() -> None:
    org = OrgConfig("o", OrgStatus.ACTIVE, PeriodKind.ROLLING, at("2025-01-01T12:00:00"), 1)
    p = resolve_period(org, "2025-01-05", at("2025-01-09T00:00:00"))
    assert (p.start_ms, p.end_ms) == (at("2025-01-05T12:00:00"), at("2025-01-06T12:00:00"))
    assert p.days() == (p.start.date(), p.end.date())


@pytest.mark.parametrize("spec", ["2025-05-01", "2025-4-1", "20250401", "yesterday", ""])
def test_refused(spec: str) -> None:
    with pytest.raises(InvalidInput) as info:
        resolve_period(ORG, spec, NOW)
    assert info.value.code in ("invalid_period", "period_in_future")


def test_billing_group_filter() -> None:
    assert billing_group_filter(None) is None
    assert billing_group_filter("") == ""
    assert billing_group_filter("UNASSIGNED") == ""
    assert billing_group_filter("eng") == "eng"
