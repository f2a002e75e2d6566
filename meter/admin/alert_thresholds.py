"""Alert thresholds: the global defaults (`alert_thresholds`, schemas/migrations/0007) and each
organization's own lists (`org_alert_thresholds`, schemas/migrations/0010).

For each subject kind (`member`, `billing_group`, `shared_pool`) an organization either has a
list of percents of its own or uses the global default list. A `PUT` of an organization replaces
its lists: kinds given (an empty list included: that kind never alerts) become its own, kinds left
out or null go back to the global defaults. A `PUT` of the defaults replaces the default list of
each kind given (an empty list: that kind never alerts by default) and keeps the others. The
settlement triggers read both tables in the transaction that changes the totals, so a change
applies from the next settled batch (and, for the shared pool, the period scheduler's next tick
after an expiry).
"""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg  # type: ignore[import-untyped]
from pydantic import Field, Strict, field_validator

from meter.errors import NotFound
from schemas.api import Model

KINDS = ("member", "billing_group", "shared_pool")
MAX_PERCENTS = 10
"""Most percents in one kind's list."""
_LIST = {"max_length": MAX_PERCENTS, "json_schema_extra": {"uniqueItems": True}}

LimitPercent = Annotated[int, Strict(), Field(ge=1, le=1000)]
"""Usage at or above this percent of the period limit (over 100: past the limit)."""
PoolPercent = Annotated[int, Strict(), Field(ge=0, le=100)]
"""Credits left at or below this percent of what the valid shared buckets granted (0: empty)."""


class AlertThresholdsUpdate(Model):
    """Each kind given (an empty list included) becomes the organization's own list; kinds left
    out or null use the global defaults."""

    member: Annotated[list[LimitPercent], Field(**_LIST)] | None = None
    billing_group: Annotated[list[LimitPercent], Field(**_LIST)] | None = None
    shared_pool: Annotated[list[PoolPercent], Field(**_LIST)] | None = None

    @field_validator("member", "billing_group", "shared_pool")
    @classmethod
    def _distinct(cls, values: list[int] | None) -> list[int] | None:
        if values is None:
            return None
        if len(set(values)) != len(values):
            raise ValueError("percents must be distinct")
        return sorted(values)


class DefaultAlertThresholdsUpdate(AlertThresholdsUpdate):
    """Each kind given (an empty list included: that kind never alerts by default) becomes the
    global default list; kinds left out or null keep theirs. Organizations with a list of their
    own for a kind keep it."""


class AlertThresholdList(Model):
    percents: list[int]
    """Ascending."""
    source: Literal["organization", "default"]
    """`organization`: the organization's own list; `default`: the global one."""


class AlertThresholds(Model):
    member: AlertThresholdList
    """Counted usage at or above these percents of the member's limit."""
    billing_group: AlertThresholdList
    """Usage at or above these percents of the billing group's period limit."""
    shared_pool: AlertThresholdList
    """Credits left in the shared pool at or below these percents of what it granted."""


SELECT = """
SELECT k.kind, o.percents AS own,
       (SELECT coalesce(array_agg(d.percent ORDER BY d.percent), '{}')
        FROM alert_thresholds d WHERE d.subject_kind = k.kind) AS defaults
FROM unnest($2::text[]) AS k(kind)
LEFT JOIN org_alert_thresholds o ON o.org_id = $1 AND o.subject_kind = k.kind
"""
ORG_EXISTS = "SELECT 1 FROM organizations WHERE org_id = $1"
LOCK_ORG = "SELECT 1 FROM organizations WHERE org_id = $1 FOR KEY SHARE"
DELETE = "DELETE FROM org_alert_thresholds WHERE org_id = $1"
INSERT = """
INSERT INTO org_alert_thresholds (org_id, subject_kind, percents) VALUES ($1, $2, $3::integer[])
"""


LOCK_DEFAULTS = "LOCK TABLE alert_thresholds IN SHARE ROW EXCLUSIVE MODE"
"""Serialises writers of the defaults; the settlement triggers' reads go on."""
DELETE_DEFAULTS = "DELETE FROM alert_thresholds WHERE subject_kind = ANY($1::text[])"
INSERT_DEFAULTS = """
INSERT INTO alert_thresholds (subject_kind, percent)
SELECT $1, p FROM unnest($2::integer[]) AS p
"""


def _not_found() -> NotFound:
    return NotFound("organization not found", code="org_not_found")


async def _read(conn: asyncpg.Connection, org_id: str | None) -> AlertThresholds:
    """The thresholds that apply to `org_id`; the global defaults when it is None."""
    rows = await conn.fetch(SELECT, org_id, list(KINDS))
    lists = {
        r["kind"]: AlertThresholdList(
            percents=sorted(r["own"] if r["own"] is not None else r["defaults"]),
            source="organization" if r["own"] is not None else "default",
        )
        for r in rows
    }
    return AlertThresholds(**lists)


async def get(pool: asyncpg.Pool, org_id: str) -> AlertThresholds:
    """The thresholds that apply to `org_id` (NotFound when it does not exist)."""
    async with pool.acquire() as conn:
        if await conn.fetchval(ORG_EXISTS, org_id) is None:
            raise _not_found()
        return await _read(conn, org_id)


async def put(pool: asyncpg.Pool, org_id: str, body: AlertThresholdsUpdate) -> AlertThresholds:
    """Replace the organization's own lists with those of `body`, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(LOCK_ORG, org_id) is None:
            raise _not_found()
        await conn.execute(DELETE, org_id)
        own = [(kind, getattr(body, kind)) for kind in KINDS]
        await conn.executemany(
            INSERT, [(org_id, kind, percents) for kind, percents in own if percents is not None]
        )
        return await _read(conn, org_id)


async def get_defaults(pool: asyncpg.Pool) -> AlertThresholds:
    """The global default thresholds (what an organization without lists of its own uses)."""
    async with pool.acquire() as conn:
        return await _read(conn, None)


async def put_defaults(pool: asyncpg.Pool, body: DefaultAlertThresholdsUpdate) -> AlertThresholds:
    """Replace the default list of each kind given in `body`, in one transaction."""
    given = [(kind, getattr(body, kind)) for kind in KINDS if getattr(body, kind) is not None]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_DEFAULTS)
        await conn.execute(DELETE_DEFAULTS, [kind for kind, _ in given])
        await conn.executemany(INSERT_DEFAULTS, given)
        return await _read(conn, None)
