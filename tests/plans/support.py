"""Helpers of the plan tests: UTC instants and organizations."""

from __future__ import annotations

from datetime import UTC, datetime

from meter.engine.types import OrgConfig, OrgStatus, PeriodKind

MICRO = 1_000_000


def ms(*args: int) -> int:
    """Epoch ms of a UTC date-time given as (year, month, day[, hour, minute])."""
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[arg-type,misc]


def monthly(anchor_ms: int, org_id: str = "o") -> OrgConfig:
    return OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms)


def rolling(anchor_ms: int, days: int = 30, org_id: str = "o") -> OrgConfig:
    return OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.ROLLING, anchor_ms, rolling_days=days)
