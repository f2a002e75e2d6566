"""Period arithmetic and proration, in Python and in the Lua library, which must agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter.engine.periods import (
    add_months,
    civil_from_days,
    days_from_civil,
    period_at,
    prorate,
)
from meter.engine.redis import lua_file
from meter.engine.types import OrgConfig, OrgStatus, Period, PeriodKind


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def monthly(anchor_ms: int) -> OrgConfig:
    return OrgConfig("o", OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms)


def test_monthly_clamps_jan31_feb28_mar31() -> None:
    org = monthly(ms(2023, 1, 31, 9, 30))
    assert period_at(org, ms(2023, 2, 10)) == Period(ms(2023, 1, 31, 9, 30), ms(2023, 2, 28, 9, 30))
    assert period_at(org, ms(2023, 3, 1)) == Period(ms(2023, 2, 28, 9, 30), ms(2023, 3, 31, 9, 30))
    assert period_at(org, ms(2023, 3, 31, 9, 30)).start_ms == ms(2023, 3, 31, 9, 30)
    assert period_at(org, ms(2024, 2, 29, 12)).start_ms == ms(2024, 2, 29, 9, 30)  # leap year


def test_monthly_clamps_mar31_apr30_may31() -> None:
    org = monthly(ms(2024, 3, 31))
    assert period_at(org, ms(2024, 4, 15)) == Period(ms(2024, 3, 31), ms(2024, 4, 30))
    assert period_at(org, ms(2024, 5, 1)) == Period(ms(2024, 4, 30), ms(2024, 5, 31))


def test_before_anchor_negative_periods() -> None:
    org = monthly(ms(2024, 3, 31))
    assert period_at(org, ms(2024, 3, 30)) == Period(ms(2024, 2, 29), ms(2024, 3, 31))
    rolling = OrgConfig("o", OrgStatus.ACTIVE, PeriodKind.ROLLING, ms(2024, 1, 1), rolling_days=30)
    assert period_at(rolling, ms(2023, 12, 31)) == Period(ms(2023, 12, 2), ms(2024, 1, 1))
    assert period_at(rolling, ms(2024, 1, 31)) == Period(ms(2024, 1, 31), ms(2024, 3, 1))


def test_proration() -> None:
    p = Period(ms(2024, 4, 1), ms(2024, 5, 1))
    assert prorate(3000, p, (p.start_ms + p.end_ms) // 2) == 1500
    assert prorate(3000, p, p.start_ms - 1) == 3000
    assert prorate(3000, p, p.end_ms) == 0
    assert prorate(3_000_000_000, p, ms(2024, 4, 21)) == 1_000_000_000  # 10 of 30 days left
    assert prorate(10, p, p.start_ms + 1) == 9  # rounded down


@given(st.integers(-800_000, 3_000_000))
def test_civil_round_trip(days: int) -> None:
    y, m, d = civil_from_days(days)
    assert days_from_civil(y, m, d) == days
    if 1 <= y <= 9999:
        assert datetime(y, m, d, tzinfo=UTC) == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days)


instants = st.integers(ms(1900, 1, 1), ms(2200, 1, 1))


@given(instants, instants, st.integers(-30, 30))
def test_period_contains_and_months_match_calendar(anchor: int, t: int, k: int) -> None:
    org = monthly(anchor)
    p = period_at(org, t)
    assert p.start_ms <= t < p.end_ms
    assert period_at(org, p.start_ms) == p
    shifted = datetime.fromtimestamp(add_months(anchor, k) / 1000, UTC)
    base = datetime.fromtimestamp(anchor / 1000, UTC)
    assert (shifted.year * 12 + shifted.month) - (base.year * 12 + base.month) == k
    assert shifted.time() == base.time()
    assert shifted.day == base.day or shifted.day < base.day


PERIOD_PROBE = """
local out = {}
for i = 1, #ARGV, 4 do
  local org = {monthly = ARGV[i] == 'm', anchor = tonumber(ARGV[i + 1]),
               len = tonumber(ARGV[i + 2]) * DAY}
  local s, e = period_at(org, tonumber(ARGV[i + 3]))
  out[#out + 1] = fmt(s)
  out[#out + 1] = fmt(e)
end
return out
"""


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.booleans(), instants, st.integers(1, 400), instants), min_size=50, max_size=50
    )
)
async def test_lua_periods_equal_python(redis: aioredis.Redis, cases: list) -> None:  # type: ignore[type-arg]
    args: list[str] = []
    for is_monthly, anchor, days, t in cases:
        args += ["m" if is_monthly else "r", str(anchor), str(days), str(t)]
    lua = lua_file("lib") + PERIOD_PROBE
    reply = await redis.eval(lua, 0, *args)
    for i, (is_monthly, anchor, days, t) in enumerate(cases):
        kind = PeriodKind.MONTHLY if is_monthly else PeriodKind.ROLLING
        org = OrgConfig("o", OrgStatus.ACTIVE, kind, anchor, rolling_days=days)
        assert Period(int(reply[2 * i]), int(reply[2 * i + 1])) == period_at(org, t)
