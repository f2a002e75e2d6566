"""Period arithmetic and seat proration, in integers only.

Calendar arithmetic uses the proleptic Gregorian calendar on whole days since 1970-01-01 (UTC)
(`days_from_civil` / `civil_from_days`), the same functions the Lua scripts use, so both engines
agree to the millisecond.
"""

from __future__ import annotations

from meter.engine.types import OrgConfig, Period, PeriodKind

DAY_MS = 86_400_000


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of the date y-m-d (m in 1..12)."""
    y -= 1 if m <= 2 else 0
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """The date (y, m, d) of day `z` since 1970-01-01."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def days_in_month(y: int, m: int) -> int:
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)


def add_months(t_ms: int, k: int) -> int:
    """`t_ms` moved by k calendar months (k may be negative), same time of day, the day clamped to
    the target month's last day: Jan 31 + 1 -> Feb 28/29, Mar 31 + 1 -> Apr 30."""
    days = t_ms // DAY_MS
    tod = t_ms - days * DAY_MS
    y, m, d = civil_from_days(days)
    months = y * 12 + (m - 1) + k
    ty, tm = months // 12, months % 12 + 1
    td = min(d, days_in_month(ty, tm))
    return days_from_civil(ty, tm, td) * DAY_MS + tod


def period_start(org: OrgConfig, k: int) -> int:
    """Start of period k (k = 0 starts at the anchor; negative k precede it)."""
    if org.period_kind is PeriodKind.MONTHLY:
        return add_months(org.anchor_ms, k)
    return org.anchor_ms + k * org.rolling_days * DAY_MS


def period_index(org: OrgConfig, t_ms: int) -> int:
    """The k of the period containing `t_ms`."""
    if org.period_kind is PeriodKind.ROLLING:
        return (t_ms - org.anchor_ms) // (org.rolling_days * DAY_MS)
    ay, am, _ = civil_from_days(org.anchor_ms // DAY_MS)
    ty, tm, _ = civil_from_days(t_ms // DAY_MS)
    # Period k starts in the k-th month after the anchor's month; t is in its period or the one
    # before (when t precedes that month's start).
    k = (ty * 12 + tm) - (ay * 12 + am)
    return k - 1 if period_start(org, k) > t_ms else k


def period_at(org: OrgConfig, t_ms: int) -> Period:
    """The period containing `t_ms`: `start_ms <= t_ms < end_ms`."""
    k = period_index(org, t_ms)
    return Period(period_start(org, k), period_start(org, k + 1))


def prorate(amount: int, period: Period, join_ms: int) -> int:
    """`amount` times the fraction of `period` left at `join_ms`, rounded down.

    Joining at or before the start gives the whole amount, at or after the end nothing.
    """
    length = period.end_ms - period.start_ms
    remaining = min(max(period.end_ms - join_ms, 0), length)
    return amount * remaining // length
