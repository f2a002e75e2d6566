"""Seats of a period: who is billed, what each seat receives. Pure, no I/O, time passed in.

Issuing a member's seat for the period containing `now_ms`:

1. The seat starts at `max(seated_since, period start)`.
2. It is paid: outside the service (`SeatBilling.EXTERNAL`: always), or from the seat-month balance
   (`SeatBilling.BALANCE`): the seat's fraction of a seat-month is drawn from the lots usable when
   the seat starts. If they cannot pay it and time has moved on since (a code was redeemed later),
   the seat is paid from `now_ms` instead, for the fraction left then. If nothing can pay it, the
   member has no paid seat this period: no credits, checks denied with `no_seat`.
3. A paid seat is recorded once per (organization, member, period start) as a `SeatOccupancy`: it
   stays billed for the period even if the member leaves, and re-seating in the same period neither
   pays nor grants again.
4. Its grants: the `seat` bucket (`seat_credits`, prorated from the seat's start when the plan
   prorates) and, on plans with on-demand usage, the `on_demand` bucket holding the member's cap.

Every id and instant of a grant derives from the organization, member, period and seat start, so
the period-start scheduler and the lazy issuance on a member's first event give equal grants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from meter.engine.periods import period_at, prorate
from meter.engine.types import Grant, Kind, OrgConfig, Period
from meter.plans.balance import Draw, Lot, draw, seat_fraction
from meter.plans.presets import PlanSettings


class SeatBilling(StrEnum):
    """How an organization pays its seats."""

    EXTERNAL = "external"
    """Card or invoice, outside the service: every seat is paid."""
    BALANCE = "balance"
    """From the seat-month balance fed by redemption codes."""


@dataclass(frozen=True, slots=True)
class SeatOccupancy:
    """A seat billed for a period: recorded once, kept even if the member leaves."""

    org_id: str
    member_id: str
    period: Period
    seated_from_ms: int
    """When the paid seat starts within the period."""
    fraction: int
    """Micro-seat-months billed (drawn from the balance, or owed outside it)."""
    billing: SeatBilling
    draws: tuple[Draw, ...] = ()


@dataclass(frozen=True, slots=True)
class SeatIssue:
    """The result of issuing one member's seat for a period."""

    occupancy: SeatOccupancy | None
    """None: the seat could not be paid (the member is denied with `no_seat`)."""
    grants: tuple[Grant, ...] = ()

    @property
    def paid(self) -> bool:
        return self.occupancy is not None


def seat_bucket_id(member_id: str, period_start_ms: int) -> str:
    return f"seat:{member_id}:{period_start_ms}"


def on_demand_bucket_id(member_id: str, period_start_ms: int, cap_total: int) -> str:
    return f"on_demand:{member_id}:{period_start_ms}:{cap_total}"


def pool_bucket_id(period_start_ms: int) -> str:
    return f"pool:{period_start_ms}"


def seat_is_paid(billing: SeatBilling, occupancy: SeatOccupancy | None) -> bool:
    """Whether a seated member's seat is paid for the period of `occupancy`. The admin service
    tells the engine `seated = member.seated and seat_is_paid(...)`, so an unpaid seat is denied
    with `no_seat`."""
    return billing is SeatBilling.EXTERNAL or occupancy is not None


def occupy(
    org: OrgConfig,
    plan: PlanSettings,
    billing: SeatBilling,
    member_id: str,
    seated_since_ms: int,
    now_ms: int,
    lots: Sequence[Lot] = (),
) -> SeatOccupancy | None:
    """The seat of `member_id` for the period containing `now_ms`, paid; None if unpaid."""
    period = period_at(org, now_ms)
    start = max(seated_since_ms, period.start_ms)
    fraction = seat_fraction(period, start, plan.prorate)
    if billing is SeatBilling.EXTERNAL:
        return SeatOccupancy(org.org_id, member_id, period, start, fraction, billing)
    draws = draw(lots, fraction, start)
    if draws is None and now_ms > start:
        start = now_ms
        fraction = seat_fraction(period, start, plan.prorate)
        draws = draw(lots, fraction, start)
    if draws is None:
        return None
    return SeatOccupancy(org.org_id, member_id, period, start, fraction, billing, draws)


def seat_grant(plan: PlanSettings, occupancy: SeatOccupancy) -> Grant | None:
    """The `seat` bucket of a paid seat, or None when it would be empty."""
    period, start = occupancy.period, occupancy.seated_from_ms
    amount = prorate(plan.seat_credits, period, start) if plan.prorate else plan.seat_credits
    if amount <= 0 or start >= period.end_ms:
        return None
    return Grant(
        org_id=occupancy.org_id,
        bucket_id=seat_bucket_id(occupancy.member_id, period.start_ms),
        kind=Kind.SEAT,
        amount=amount,
        valid_from_ms=start,
        expires_at_ms=period.end_ms,
        granted_at_ms=start,
        member_id=occupancy.member_id,
    )


def on_demand_grant(
    plan: PlanSettings,
    occupancy: SeatOccupancy,
    cap: int | None,
    granted: int = 0,
    now_ms: int | None = None,
) -> Grant | None:
    """The `on_demand` bucket raising a member's on-demand room this period to `cap` (None: the
    plan's default cap), given `granted` micro-credits of on-demand buckets already issued for the
    period. None when nothing is to add. A raise after the first grant is valid from `now_ms`.

    Lowering a cap mid-period cannot take credits back from a bucket: it applies next period."""
    cap = plan.on_demand_member_cap if cap is None else cap
    if not plan.on_demand_allowed or cap is None or cap <= granted:
        return None
    period, start = occupancy.period, occupancy.seated_from_ms
    if granted and now_ms is not None:
        start = max(start, now_ms)
    if start >= period.end_ms:
        return None
    return Grant(
        org_id=occupancy.org_id,
        bucket_id=on_demand_bucket_id(occupancy.member_id, period.start_ms, cap),
        kind=Kind.ON_DEMAND,
        amount=cap - granted,
        valid_from_ms=start,
        expires_at_ms=period.end_ms,
        granted_at_ms=start,
        member_id=occupancy.member_id,
    )


def issue_seat(
    org: OrgConfig,
    plan: PlanSettings,
    billing: SeatBilling,
    member_id: str,
    seated_since_ms: int,
    now_ms: int,
    lots: Sequence[Lot] = (),
    on_demand_cap: int | None = None,
    occupancy: SeatOccupancy | None = None,
    on_demand_granted: int = 0,
) -> SeatIssue:
    """Pay (unless `occupancy`, the period's existing record, is given) and grant a member's seat
    for the period containing `now_ms`. `on_demand_cap` is the member's own cap (None: the plan's);
    `on_demand_granted` what on-demand buckets of the period hold already."""
    if occupancy is None:
        occupancy = occupy(org, plan, billing, member_id, seated_since_ms, now_ms, lots)
    if occupancy is None:
        return SeatIssue(None)
    grants = [
        seat_grant(plan, occupancy),
        on_demand_grant(plan, occupancy, on_demand_cap, on_demand_granted, now_ms),
    ]
    return SeatIssue(occupancy, tuple(g for g in grants if g is not None))


def pool_grant(org: OrgConfig, plan: PlanSettings, now_ms: int) -> Grant | None:
    """The organization's shared credits of the period containing `now_ms` (package plans)."""
    if plan.org_credits_per_period <= 0:
        return None
    period = period_at(org, now_ms)
    return Grant(
        org_id=org.org_id,
        bucket_id=pool_bucket_id(period.start_ms),
        kind=Kind.SHARED,
        amount=plan.org_credits_per_period,
        valid_from_ms=period.start_ms,
        expires_at_ms=period.end_ms,
        granted_at_ms=period.start_ms,
    )
