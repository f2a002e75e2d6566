"""Response models of the reporting routes (`/v1/orgs/{org_id}/reports/...`).

Credits are decimal strings (`meter.money.format_credits`); `credits` is always the sum of
`seat + personal + shared + on_demand + unfunded`. Periods are `[start, end)` instants.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import Field

from schemas.api import CreditsOut, Model, ModelUsage


class Totals(Model):
    """Settled usage, split by the kind of bucket it was drawn from."""

    events: int
    credits: CreditsOut
    seat: CreditsOut
    personal: CreditsOut
    shared: CreditsOut
    on_demand: CreditsOut
    """Post-paid usage, drawn from the member's on-demand bucket."""
    unfunded: CreditsOut
    """Usage no bucket covered (overage), limits included."""


class ReportPeriod(Model):
    start: datetime
    end: datetime
    current: bool
    """The period containing now; the others are historical (read and export only)."""


class OrgReport(Model):
    org_id: str
    period: ReportPeriod
    totals: Totals


class PeriodTotals(Model):
    period: ReportPeriod
    totals: Totals


class PeriodList(Model):
    """The current period first, then every period with settled usage, newest first."""

    org_id: str
    periods: list[PeriodTotals]


class GroupTotals(Model):
    billing_group_id: str
    """"" is the built-in Unassigned group."""
    name: str
    built_in: bool
    deleted: bool
    totals: Totals


class GroupReport(Model):
    org_id: str
    period: ReportPeriod
    billing_groups: list[GroupTotals]


class MemberTotals(Model):
    member_id: str
    name: str
    email: str
    active: bool
    """Still a member of the organization (false: departed)."""
    billing_group_id: str | None
    """The member's billing group now ("" = Unassigned); null for a departed member."""
    totals: Totals


class MemberPage(Model):
    org_id: str
    period: ReportPeriod
    billing_group_id: str | None
    """The group the page is restricted to (usage attributed to it), or null for all usage."""
    members: list[MemberTotals]
    next_after: str | None
    """Pass as `after` for the next page; null on the last page."""


class MemberGroupShare(Model):
    billing_group_id: str
    name: str
    totals: Totals


class MemberReport(Model):
    org_id: str
    period: ReportPeriod
    member: MemberTotals
    billing_groups: list[MemberGroupShare]
    """How the member's usage of the period was attributed (several groups if reassigned)."""
    models: list[ModelUsage] = Field(default_factory=list)
    """The member's rated usage of the period by model and dimension (usage events only)."""


class DayTotals(Model):
    day: date
    totals: Totals


class DailyReport(Model):
    org_id: str
    member_id: str | None
    period: ReportPeriod
    days: list[DayTotals]
    """Every UTC day the period overlaps, in order; days without usage are zero."""
