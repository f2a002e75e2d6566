"""Charge-due records of on-demand usage. Pure, no I/O.

On a plan with on-demand usage, what members drew from their `on_demand` buckets is post-paid. A
charge is due when the cost of the usage not charged yet reaches the plan's threshold
(`threshold`), and, on plans that charge at the period end, for whatever is left uncharged when a
period ends (`period_end`). Cost = credits * price per credit, rounded down to a micro-unit.

Each charge covers on-demand credits of one period up to a cumulative total; its id is derived
from the period and that total, so computing it twice gives the same charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meter.engine.types import MICRO, Period
from meter.plans.presets import PlanSettings


class ChargeReason(StrEnum):
    THRESHOLD = "threshold"
    PERIOD_END = "period_end"


@dataclass(frozen=True, slots=True)
class ChargeDue:
    org_id: str
    charge_id: str
    period: Period
    reason: ChargeReason
    credits: int
    """On-demand micro-credits this charge covers."""
    through_credits: int
    """Cumulative on-demand micro-credits of the period charged once this one is paid."""
    amount_micros: int
    """Price in micro-units of currency."""
    due_at_ms: int


def cost_micros(credits: int, price_micros: int) -> int:
    """Price of `credits` micro-credits at `price_micros` per credit, rounded down."""
    return credits * price_micros // MICRO


def charge_due(
    org_id: str,
    plan: PlanSettings,
    period: Period,
    used: int,
    charged: int,
    now_ms: int,
) -> ChargeDue | None:
    """The charge due now for `period`, given `used` on-demand micro-credits drawn in it so far
    and `charged` of them already covered by earlier charges; None when nothing is due."""
    price = plan.on_demand_price_micros
    if not plan.on_demand_allowed or price is None or used <= charged:
        return None
    credits = used - charged
    amount = cost_micros(credits, price)
    if plan.charge_at_period_end and now_ms >= period.end_ms:
        reason = ChargeReason.PERIOD_END
    elif (
        plan.on_demand_charge_threshold_micros is not None
        and amount >= plan.on_demand_charge_threshold_micros
    ):
        reason = ChargeReason.THRESHOLD
    else:
        return None
    return ChargeDue(
        org_id=org_id,
        charge_id=f"{period.start_ms}:{used}",
        period=period,
        reason=reason,
        credits=credits,
        through_credits=used,
        amount_micros=amount,
        due_at_ms=now_ms,
    )


def charge_event(charge: ChargeDue) -> dict[str, object]:
    """The `data` of a charge-due event for the billing topic (`meter.billing.v1`)."""
    return {
        "type": "charge_due",
        "org_id": charge.org_id,
        "charge_id": charge.charge_id,
        "reason": charge.reason.value,
        "period_start_ms": charge.period.start_ms,
        "period_end_ms": charge.period.end_ms,
        "credits_micros": charge.credits,
        "through_credits_micros": charge.through_credits,
        "amount_micros": charge.amount_micros,
        "due_at_ms": charge.due_at_ms,
    }
