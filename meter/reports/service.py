"""Reads over settled usage: totals per organization, billing group and member, daily series.

Everything is read from the totals tables the settlement store maintains; see README.md for the
rules (which period, who is listed, ordering, pagination).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from meter.admin.clock import from_ms, now_ms, to_ms
from meter.engine.periods import DAY_MS, period_at
from meter.engine.types import UNASSIGNED, OrgConfig, OrgStatus, Period, PeriodKind
from meter.errors import InvalidInput, NotFound
from meter.money import format_credits
from meter.rating.report import models_out, usage_by_model
from meter.reports import queries as q
from schemas import reports as r

UNASSIGNED_NAME = "Unassigned"
PAGE_DEFAULT = 100
PAGE_MAX = 1000
_KINDS = ("seat", "personal", "shared", "on_demand", "unfunded")


@dataclass(frozen=True, slots=True)
class ReportingPeriod:
    """A period of an organization as reports see it."""

    start_ms: int
    end_ms: int
    current: bool

    @property
    def start(self) -> dt.datetime:
        return from_ms(self.start_ms)

    @property
    def end(self) -> dt.datetime:
        return from_ms(self.end_ms)

    def out(self) -> r.ReportPeriod:
        return r.ReportPeriod(start=self.start, end=self.end, current=self.current)

    def days(self) -> tuple[dt.date, dt.date]:
        """The first and last UTC day the period overlaps."""
        first = self.start.date()
        last = from_ms(self.end_ms - 1).date()
        return first, last


def billing_group_filter(value: str | None) -> str | None:
    """A billing-group argument: None = every group; "" or "unassigned" (any case) = Unassigned."""
    if value is None:
        return None
    if value == UNASSIGNED or value.casefold() == UNASSIGNED_NAME.casefold():
        return UNASSIGNED
    return value


def resolve_period(org: OrgConfig, spec: str | None, now: int) -> ReportingPeriod:
    """The period named by `spec` at instant `now`.

    - None or "current": the period containing `now`;
    - "YYYY-MM-DD": the period that starts on that UTC date, or else the one containing 00:00 UTC
      of it. A period that starts after `now` is refused.
    """
    current = period_at(org, now)
    if spec is None or spec == "current":
        return ReportingPeriod(current.start_ms, current.end_ms, True)
    try:
        day = dt.date.fromisoformat(spec)
    except ValueError:
        raise InvalidInput(
            f"period must be 'current' or a date YYYY-MM-DD, got {spec[:40]!r}",
            code="invalid_period",
        ) from None
    if len(spec) != 10:
        raise InvalidInput("period must be a date YYYY-MM-DD", code="invalid_period")
    midnight = to_ms(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))
    period: Period = period_at(org, midnight + DAY_MS - 1)
    if period.start_ms < midnight:
        period = period_at(org, midnight)
    if period.start_ms > now:
        raise InvalidInput("that period has not started yet", code="period_in_future")
    return ReportingPeriod(period.start_ms, period.end_ms, period.start_ms == current.start_ms)


def totals_out(row: Mapping[str, Any] | None) -> r.Totals:
    """Totals of a row with the totals columns (None or NULLs: zero)."""
    if row is None or row["credits"] is None:
        zero = format_credits(0)
        return r.Totals(events=0, credits=zero, **dict.fromkeys(_KINDS, zero))
    return r.Totals(
        events=row["events"],
        credits=format_credits(row["credits"]),
        **{k: format_credits(row[k]) for k in _KINDS},
    )


def _member_out(row: Mapping[str, Any]) -> r.MemberTotals:
    active = row["status"] == "active"
    return r.MemberTotals(
        member_id=row["member_id"],
        name=row["name"] or "",
        email=row["email"] or "",
        active=active,
        billing_group_id=(row["billing_group_id"] or UNASSIGNED) if active else None,
        totals=totals_out(row),
    )


def _group_name(group_id: str, name: str | None) -> str:
    if group_id == UNASSIGNED:
        return UNASSIGNED_NAME
    return name if name is not None else group_id


class Reports:
    """The reporting reads of one PostgreSQL pool. `clock` gives now in epoch ms."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], int] = now_ms) -> None:
        self.pool = pool
        self.clock = clock

    async def org(self, org_id: str) -> OrgConfig:
        """The organization's period configuration; NotFound when there is no such org."""
        row = await self.pool.fetchrow(q.ORG_PLAN, org_id)
        if row is None:
            raise NotFound("organization not found", code="org_not_found")
        return OrgConfig(
            org_id=org_id,
            status=OrgStatus.ACTIVE,
            period_kind=PeriodKind(row["period_kind"]),
            anchor_ms=to_ms(row["billing_anchor"]),
            rolling_days=row["rolling_days"],
        )

    async def period(self, org_id: str, spec: str | None) -> ReportingPeriod:
        return resolve_period(await self.org(org_id), spec, self.clock())

    async def check_group(self, org_id: str, group: str | None) -> None:
        """NotFound unless `group` is None, Unassigned or a (possibly deleted) group of the org."""
        if group is None or group == UNASSIGNED:
            return
        if not await self.pool.fetchval(q.GROUP_EXISTS, org_id, group):
            raise NotFound("billing group not found", code="billing_group_not_found")

    async def org_totals(self, org_id: str, spec: str | None) -> r.OrgReport:
        period = await self.period(org_id, spec)
        row = await self.pool.fetchrow(q.ORG_TOTALS, org_id, period.start)
        return r.OrgReport(org_id=org_id, period=period.out(), totals=totals_out(row))

    async def periods(self, org_id: str) -> r.PeriodList:
        current = await self.period(org_id, None)
        rows = await self.pool.fetch(q.PERIODS, org_id)
        out = []
        if not rows or to_ms(rows[0]["period_start"]) != current.start_ms:
            out.append(r.PeriodTotals(period=current.out(), totals=totals_out(None)))
        for row in rows:
            start = to_ms(row["period_start"])
            if start > current.start_ms:
                continue
            period = ReportingPeriod(start, to_ms(row["period_end"]), start == current.start_ms)
            out.append(r.PeriodTotals(period=period.out(), totals=totals_out(row)))
        return r.PeriodList(org_id=org_id, periods=out)

    async def billing_groups(self, org_id: str, spec: str | None) -> r.GroupReport:
        """Every group with usage in the period; in the current period also every live group
        and Unassigned. Ordered by name, then id (code point order)."""
        period = await self.period(org_id, spec)
        rows = await self.pool.fetch(q.GROUPS, org_id, period.start, period.current)
        groups = [
            r.GroupTotals(
                billing_group_id=row["billing_group"],
                name=_group_name(row["billing_group"], row["name"]),
                built_in=row["billing_group"] == UNASSIGNED,
                deleted=bool(row["deleted"]),
                totals=totals_out(row),
            )
            for row in rows
        ]
        groups.sort(key=lambda g: (g.name, g.billing_group_id))
        return r.GroupReport(org_id=org_id, period=period.out(), billing_groups=groups)

    async def members(
        self,
        org_id: str,
        spec: str | None,
        *,
        billing_group: str | None = None,
        after: str = "",
        limit: int = PAGE_DEFAULT,
    ) -> r.MemberPage:
        """One page of members in member id order, after the member id `after`.

        Current period: every current member (zero if no usage) and every member with usage.
        Historical period: members with usage only. With `billing_group`, the usage attributed to
        that group (and, in the current period, the group's current members)."""
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidInput(f"limit must be in 1..{PAGE_MAX}", code="invalid_limit")
        period = await self.period(org_id, spec)
        await self.check_group(org_id, billing_group)
        rows = await self.pool.fetch(
            q.MEMBER_PAGE, org_id, period.start, after, limit + 1, period.current, billing_group
        )
        more = len(rows) > limit
        members = [_member_out(row) for row in rows[:limit]]
        return r.MemberPage(
            org_id=org_id,
            period=period.out(),
            billing_group_id=billing_group,
            members=members,
            next_after=members[-1].member_id if more else None,
        )

    async def member(self, org_id: str, member_id: str, spec: str | None) -> r.MemberReport:
        """One member's totals and how they were attributed to billing groups."""
        period = await self.period(org_id, spec)
        row = await self.pool.fetchrow(q.MEMBER, org_id, period.start, member_id)
        if row is None:
            raise NotFound("member not found", code="member_not_found")
        shares = [
            r.MemberGroupShare(
                billing_group_id=g["billing_group"],
                name=_group_name(g["billing_group"], g["name"]),
                totals=totals_out(g),
            )
            for g in await self.pool.fetch(q.MEMBER_GROUPS, org_id, period.start, member_id)
        ]
        shares.sort(key=lambda s: (s.name, s.billing_group_id))
        models = await usage_by_model(self.pool, org_id, period.start, member_id)
        return r.MemberReport(
            org_id=org_id,
            period=period.out(),
            member=_member_out(row),
            billing_groups=shares,
            models=models_out(models),
        )

    async def daily(
        self, org_id: str, spec: str | None, member_id: str | None = None
    ) -> r.DailyReport:
        """Usage per UTC day of the event time, for every day the period overlaps."""
        period = await self.period(org_id, spec)
        first, last = period.days()
        if member_id is None:
            rows = await self.pool.fetch(q.ORG_DAILY, org_id, first, last)
        else:
            exists = await self.pool.fetchrow(q.MEMBER, org_id, period.start, member_id)
            if exists is None:
                raise NotFound("member not found", code="member_not_found")
            rows = await self.pool.fetch(q.MEMBER_DAILY, org_id, member_id, first, last)
        return r.DailyReport(
            org_id=org_id, member_id=member_id, period=period.out(), days=_dense(rows, first, last)
        )


def _dense(rows: Sequence[Mapping[str, Any]], first: dt.date, last: dt.date) -> list[r.DayTotals]:
    by_day = {row["day"]: row for row in rows}
    out = []
    day = first
    while day <= last:
        out.append(r.DayTotals(day=day, totals=totals_out(by_day.get(day))))
        day += dt.timedelta(days=1)
    return out
