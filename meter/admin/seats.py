"""Seat credits of a period, as a pure function.

A member seated for a period receives the plan's `seat_credits` in a `seat` bucket valid until the
period ends. Seated after the period began (and the plan prorates): the remaining fraction, rounded
down. The bucket id `seat:<member_id>:<period start ms>` makes the grant idempotent per member and
period: re-seating in the same period grants nothing more.
"""

from __future__ import annotations

from meter.engine.periods import period_at, prorate
from meter.engine.types import Grant, Kind, OrgConfig


def seat_bucket_id(member_id: str, period_start_ms: int) -> str:
    return f"seat:{member_id}:{period_start_ms}"


def seat_grant(
    org: OrgConfig,
    member_id: str,
    seat_credits: int,
    prorated: bool,
    seated_since_ms: int,
    now_ms: int,
) -> Grant | None:
    """The seat bucket of the period containing `now_ms`, or None when it would be empty."""
    period = period_at(org, now_ms)
    joined = max(seated_since_ms, period.start_ms)
    amount = prorate(seat_credits, period, joined) if prorated else seat_credits
    if amount <= 0:
        return None
    return Grant(
        org_id=org.org_id,
        bucket_id=seat_bucket_id(member_id, period.start_ms),
        kind=Kind.SEAT,
        amount=amount,
        valid_from_ms=joined,
        expires_at_ms=period.end_ms,
        granted_at_ms=now_ms,
        member_id=member_id,
    )
