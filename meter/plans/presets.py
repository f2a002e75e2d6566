"""Plan settings and the plan presets shipped with meter (`presets.toml`).

A plan is configuration, not code. `PlanSettings` holds every setting a plan has: the columns of the
`plans` table (schemas/migrations/0001_admin.sql), then the settings that table does not hold yet
(`EXTRA_SETTINGS`). `PlanSettings.from_row` reads a `plans` row (missing settings take their
defaults), `PlanSettings.plan_row` gives the column values to insert.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from typing import Any

from meter.engine.types import LimitPolicy, PeriodKind
from meter.errors import InvalidInput, NotFound
from meter.money import parse_credits

PLAN_COLUMNS = (
    "plan_id",
    "name",
    "period_kind",
    "rolling_days",
    "seat_credits",
    "prorate",
    "limit_policy",
    "default_member_limit",
    "billing_groups_allowed",
    "on_demand_allowed",
    "on_demand_member_cap",
    "on_demand_price_micros",
    "on_demand_charge_threshold_micros",
)
"""Settings stored in the `plans` table, in its column order."""

CREDIT_SETTINGS = frozenset(
    {
        "seat_credits",
        "default_member_limit",
        "on_demand_member_cap",
        "org_credits_per_period",
        "shared_pack_credits",
    }
)
"""Settings in micro-credits, written as decimal strings in `presets.toml`."""


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Every setting of a plan. Credits in integer micro-credits, money in micro-units."""

    plan_id: str
    name: str
    period_kind: PeriodKind = PeriodKind.MONTHLY
    rolling_days: int = 30
    seat_credits: int = 0
    """Credits included per seat per period."""
    prorate: bool = True
    """A seat taken mid-period gets (and, from a balance, pays) the remaining fraction."""
    limit_policy: LimitPolicy = LimitPolicy.ALL
    default_member_limit: int | None = None
    """Limit of a member with none set: None = unlimited, 0 = may not use credits."""
    billing_groups_allowed: bool = True
    on_demand_allowed: bool = False
    on_demand_member_cap: int | None = None
    """Default per-member on-demand cap per period (an admin may set one per member)."""
    on_demand_price_micros: int | None = None
    """Price of one on-demand credit."""
    on_demand_charge_threshold_micros: int | None = None
    """A charge is due once uncharged on-demand usage costs this much."""
    # -- not in the `plans` table --
    charge_at_period_end: bool = False
    """Uncharged on-demand usage is due when its period ends."""
    groups_allowed: bool = True
    personal_addons_allowed: bool = True
    shared_addons_allowed: bool = True
    seat_month_codes: bool = False
    """Seats may be paid from a seat-month balance fed by redemption codes."""
    seat_price_micros: int | None = None
    org_credits_per_period: int = 0
    """Credits the organization receives in its shared pool each period (package plans)."""
    shared_pack_credits: int | None = None
    shared_pack_price_micros: int | None = None
    shared_pack_validity_months: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.rolling_days <= 3660:
            raise InvalidInput("rolling_days must be in 1..3660", code="invalid_plan")
        if self.shared_pack_validity_months < 1:
            raise InvalidInput("pack validity must be at least a month", code="invalid_plan")
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is int and value < 0:
                raise InvalidInput(f"{f.name} must not be negative", code="invalid_plan")
        if self.on_demand_allowed and self.on_demand_price_micros is None:
            raise InvalidInput("an on-demand plan needs a price", code="invalid_plan")

    @classmethod
    def from_row(cls, row: Mapping[str, Any], **extra: Any) -> PlanSettings:
        """Settings from a `plans` row; settings the row lacks come from `extra` or defaults."""
        values = {c: row[c] for c in PLAN_COLUMNS}
        values["period_kind"] = PeriodKind(values["period_kind"])
        values["limit_policy"] = LimitPolicy(values["limit_policy"])
        return cls(**values, **extra)

    def plan_row(self) -> tuple[Any, ...]:
        """Values of `PLAN_COLUMNS`, in order, for an INSERT into `plans`."""
        return tuple(
            v.value if isinstance(v, PeriodKind | LimitPolicy) else v
            for v in (getattr(self, c) for c in PLAN_COLUMNS)
        )

    def extra_settings(self) -> dict[str, Any]:
        """The settings the `plans` table does not hold."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in EXTRA_SETTINGS}

    def with_id(self, plan_id: str, name: str | None = None) -> PlanSettings:
        return replace(self, plan_id=plan_id, name=self.name if name is None else name)


EXTRA_SETTINGS = frozenset(f.name for f in fields(PlanSettings)) - frozenset(PLAN_COLUMNS)


def parse_preset(plan_id: str, table: Mapping[str, Any]) -> PlanSettings:
    """One `presets.toml` table as settings; unknown keys and inexact credits are refused."""
    known = {f.name for f in fields(PlanSettings)} - {"plan_id"}
    unknown = set(table) - known
    if unknown:
        raise InvalidInput(f"unknown plan settings: {sorted(unknown)}", code="invalid_plan")
    values: dict[str, Any] = dict(table)
    for key in CREDIT_SETTINGS & set(values):
        values[key] = parse_credits(values[key])
    if "period_kind" in values:
        values["period_kind"] = PeriodKind(values["period_kind"])
    if "limit_policy" in values:
        values["limit_policy"] = LimitPolicy(values["limit_policy"])
    return PlanSettings(plan_id=plan_id, **values)


@cache
def presets() -> dict[str, PlanSettings]:
    """The shipped presets by plan id: `teams`, `enterprise`, `requests`, `package`."""
    text = resources.files(__package__).joinpath("presets.toml").read_text(encoding="utf-8")
    return {pid: parse_preset(pid, table) for pid, table in tomllib.loads(text).items()}


def preset(plan_id: str) -> PlanSettings:
    """One shipped preset; `NotFound` (`unknown_preset`) when there is none of that id."""
    try:
        return presets()[plan_id]
    except KeyError:
        raise NotFound(f"no plan preset {plan_id!r}", code="unknown_preset") from None


@cache
def preset_rate_cards() -> dict[str, dict[str, Any]]:
    """The first rate card of each shipped preset (`rate_cards.toml`), by plan id: the card's
    content (`meter.rating.card.RateCard.body`) and its `note`. Validated on load."""
    from meter.rating.card import card_from_json

    text = resources.files(__package__).joinpath("rate_cards.toml").read_text(encoding="utf-8")
    cards = tomllib.loads(text)
    for plan_id, table in cards.items():
        table.setdefault("models", {})
        body = {k: v for k, v in table.items() if k != "note"}
        card_from_json(body, version=0, plan_id=plan_id, org_id=None, effective_from_ms=0)
    return cards
