"""PostgreSQL repository of plans, seats, the seat-month balance, codes, expiries and charges.

Tables: schemas/migrations/0003_plans.sql, reading 0001 (plans, organizations, members,
credit_grants) and 0002 (org_period_totals). The rules are the pure functions of this package;
this module only loads their inputs and stores their results, one transaction per call. Calls
that change an organization's balance or seats take a transaction-scoped advisory lock on it, so
the period-start scheduler and lazy issuance never pay the same seat twice.

Grants are written to `credit_grants` (idempotent by bucket id) and returned as stored: the
caller applies them to the engine (`Engine.apply_grant`), and the reconciler re-applies them from
PostgreSQL if that fails.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.engine.periods import period_at, period_index, period_start
from meter.engine.types import (
    Grant,
    Kind,
    LimitPolicy,
    OrgConfig,
    OrgStatus,
    Period,
    PeriodKind,
)
from meter.errors import Conflict, InvalidInput, NotFound
from meter.plans.balance import BalanceSummary, Draw, Lot, after, summarize
from meter.plans.charges import ChargeDue, ChargeReason, charge_due
from meter.plans.expiry import ExpiryEntry, expiry_entries
from meter.plans.presets import EXTRA_SETTINGS, PlanSettings
from meter.plans.redemption import (
    CodeAlreadyRedeemed,
    CodeKind,
    Redemption,
    RedemptionCode,
    SeatMonthsNotAccepted,
    UnknownCode,
    code_hash,
    code_id,
    redeem,
)
from meter.plans.seats import (
    SeatBilling,
    SeatIssue,
    SeatOccupancy,
    issue_seat,
    on_demand_grant,
    pool_grant,
    seat_bucket_id,
    seat_is_paid,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def _ms(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // _MS


def _at(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _lock_key(org_id: str) -> int:
    digest = hashlib.sha256(b"meter.plans:" + org_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


LOCK_ORG = "SELECT pg_advisory_xact_lock($1)"

UPSERT_PLAN = """
INSERT INTO plans (plan_id, name, period_kind, rolling_days, seat_credits, prorate, limit_policy,
    default_member_limit, billing_groups_allowed, on_demand_allowed, on_demand_member_cap,
    on_demand_price_micros, on_demand_charge_threshold_micros)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (plan_id) DO UPDATE SET
    name = EXCLUDED.name, period_kind = EXCLUDED.period_kind,
    rolling_days = EXCLUDED.rolling_days, seat_credits = EXCLUDED.seat_credits,
    prorate = EXCLUDED.prorate, limit_policy = EXCLUDED.limit_policy,
    default_member_limit = EXCLUDED.default_member_limit,
    billing_groups_allowed = EXCLUDED.billing_groups_allowed,
    on_demand_allowed = EXCLUDED.on_demand_allowed,
    on_demand_member_cap = EXCLUDED.on_demand_member_cap,
    on_demand_price_micros = EXCLUDED.on_demand_price_micros,
    on_demand_charge_threshold_micros = EXCLUDED.on_demand_charge_threshold_micros
"""
UPSERT_PLAN_SETTINGS = """
INSERT INTO plan_settings (plan_id, settings) VALUES ($1, $2::jsonb)
ON CONFLICT (plan_id) DO UPDATE SET settings = EXCLUDED.settings
"""
INSERT_PLAN = UPSERT_PLAN[: UPSERT_PLAN.index("ON CONFLICT")]
SELECT_PLAN = """
SELECT p.*, coalesce(s.settings, '{}') AS extra
FROM plans p LEFT JOIN plan_settings s USING (plan_id) WHERE p.plan_id = $1
"""
SELECT_PLANS = """
SELECT p.*, coalesce(s.settings, '{}') AS extra
FROM plans p LEFT JOIN plan_settings s USING (plan_id) ORDER BY p.plan_id
"""
SELECT_ORG = """
SELECT o.org_id, o.status, o.billing_anchor, o.grace_seconds, p.*,
       coalesce(s.settings, '{}') AS extra, coalesce(b.seat_billing, 'external') AS seat_billing
FROM organizations o JOIN plans p USING (plan_id)
LEFT JOIN plan_settings s USING (plan_id)
LEFT JOIN org_seat_billing b ON b.org_id = o.org_id
WHERE o.org_id = $1
"""
UPSERT_SEAT_BILLING = """
INSERT INTO org_seat_billing (org_id, seat_billing, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (org_id) DO UPDATE SET seat_billing = EXCLUDED.seat_billing,
    updated_at = EXCLUDED.updated_at
"""
UPSERT_CAP = """
INSERT INTO member_on_demand_caps (org_id, member_id, cap, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id, member_id) DO UPDATE SET cap = EXCLUDED.cap, updated_at = EXCLUDED.updated_at
"""
SELECT_CAP = "SELECT cap FROM member_on_demand_caps WHERE org_id = $1 AND member_id = $2"

INSERT_CODE = """
INSERT INTO redemption_codes (code_hash, code_id, kind, seat_months, credits, validity_months,
    bound_org_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
SELECT_CODE_FOR_UPDATE = "SELECT * FROM redemption_codes WHERE code_hash = $1 FOR UPDATE"
MARK_REDEEMED = """
UPDATE redemption_codes SET redeemed_org_id = $2, redeemed_at = $3
WHERE code_hash = $1 AND redeemed_at IS NULL
"""
INSERT_LOT = """
INSERT INTO seat_month_lots (org_id, lot_id, code_id, installment, amount, remaining,
    available_from, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
SELECT_LOTS = """
SELECT * FROM seat_month_lots WHERE org_id = $1 ORDER BY expires_at, available_from, lot_id
"""
UPDATE_LOT = "UPDATE seat_month_lots SET remaining = $3 WHERE org_id = $1 AND lot_id = $2"

SELECT_MEMBER = """
SELECT member_id, status, seated, seated_since FROM members WHERE org_id = $1 AND member_id = $2
"""
SELECT_SEATED = """
SELECT member_id, status, seated, seated_since FROM members
WHERE org_id = $1 AND status = 'active' AND seated
ORDER BY seated_since NULLS FIRST, member_id
"""
SELECT_OCCUPANCY = """
SELECT * FROM seat_occupancy WHERE org_id = $1 AND member_id = $2 AND period_start = $3
"""
SELECT_PERIOD_OCCUPANCY = """
SELECT * FROM seat_occupancy WHERE org_id = $1 AND period_start = $2 ORDER BY member_id
"""
SELECT_DRAWS = """
SELECT lot_id, amount FROM seat_month_draws
WHERE org_id = $1 AND member_id = $2 AND period_start = $3 ORDER BY lot_id
"""
INSERT_OCCUPANCY = """
INSERT INTO seat_occupancy (org_id, member_id, period_start, period_end, seated_from, fraction,
    billing, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
INSERT_DRAW = """
INSERT INTO seat_month_draws (org_id, member_id, period_start, lot_id, amount)
VALUES ($1, $2, $3, $4, $5)
"""
INSERT_GRANT = """
INSERT INTO credit_grants (org_id, bucket_id, kind, member_id, amount, valid_from, expires_at,
    granted_at, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (org_id, bucket_id) DO NOTHING
"""
SELECT_GRANT = "SELECT * FROM credit_grants WHERE org_id = $1 AND bucket_id = $2"
SELECT_ON_DEMAND_GRANTED = """
SELECT coalesce(sum(amount), 0) FROM credit_grants
WHERE org_id = $1 AND member_id = $2 AND kind = 'on_demand' AND bucket_id LIKE $3
"""
SELECT_PERIOD_SEAT_GRANTS = """
SELECT * FROM credit_grants
WHERE org_id = $1 AND member_id = $2 AND (bucket_id = $3 OR bucket_id LIKE $4)
ORDER BY kind DESC, granted_at, bucket_id
"""
SELECT_EXPIRED_GRANTS = """
SELECT * FROM credit_grants WHERE org_id = $1 AND expires_at > $2 AND expires_at <= $3
"""
INSERT_EXPIRY = """
INSERT INTO expiry_entries (org_id, bucket_id, kind, member_id, amount, expired_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, bucket_id) DO NOTHING
"""
INSERT_SEAT_PERIOD = """
INSERT INTO seat_periods (org_id, period_start, period_end) VALUES ($1, $2, $3)
ON CONFLICT (org_id, period_start) DO NOTHING
"""
SELECT_ON_DEMAND_USED = """
SELECT on_demand FROM org_period_totals WHERE org_id = $1 AND period_start = $2
"""
SELECT_CHARGED = """
SELECT coalesce(max(through_credits), 0) FROM charges_due WHERE org_id = $1 AND period_start = $2
"""
INSERT_CHARGE = """
INSERT INTO charges_due (org_id, charge_id, period_start, period_end, reason, credits,
    through_credits, amount_micros, due_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (org_id, charge_id) DO NOTHING
RETURNING 1
"""
SELECT_ORG_CHARGES = """
SELECT * FROM charges_due WHERE org_id = $1 ORDER BY period_start, through_credits
"""
SELECT_UNPUBLISHED = """
SELECT * FROM charges_due WHERE published_at IS NULL ORDER BY due_at, org_id, charge_id LIMIT $1
"""
MARK_PUBLISHED = """
UPDATE charges_due SET published_at = $3
WHERE org_id = $1 AND charge_id = ANY($2::text[]) AND published_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class OrgPlan:
    """An organization as the plan rules see it."""

    org: OrgConfig
    plan: PlanSettings
    billing: SeatBilling


@dataclass(frozen=True, slots=True)
class PeriodIssue:
    """What issuing a period's seats gave: grants to apply, members left without a paid seat."""

    grants: tuple[Grant, ...]
    unpaid: tuple[str, ...]
    period: Period
    """The period issued."""


def plan_of(row: Mapping[str, Any]) -> PlanSettings:
    extra = row["extra"]
    extra = orjson.loads(extra) if isinstance(extra, str | bytes) else dict(extra)
    return PlanSettings.from_row(row, **{k: v for k, v in extra.items() if k in EXTRA_SETTINGS})


def org_plan_of(row: Mapping[str, Any]) -> OrgPlan:
    org = OrgConfig(
        org_id=row["org_id"],
        status=OrgStatus(row["status"]),
        period_kind=PeriodKind(row["period_kind"]),
        anchor_ms=_ms(row["billing_anchor"]),
        rolling_days=row["rolling_days"],
        limit_policy=LimitPolicy(row["limit_policy"]),
        default_member_limit=row["default_member_limit"],
        grace_ms=row["grace_seconds"] * 1000,
    )
    return OrgPlan(org, plan_of(row), SeatBilling(row["seat_billing"]))


def lot_of(row: Mapping[str, Any]) -> Lot:
    return Lot(
        org_id=row["org_id"],
        lot_id=row["lot_id"],
        amount=row["amount"],
        remaining=row["remaining"],
        available_from_ms=_ms(row["available_from"]),
        expires_at_ms=_ms(row["expires_at"]),
        code_id=row["code_id"],
        installment=row["installment"],
    )


def grant_of(row: Mapping[str, Any]) -> Grant:
    return Grant(
        org_id=row["org_id"],
        bucket_id=row["bucket_id"],
        kind=Kind(row["kind"]),
        amount=row["amount"],
        valid_from_ms=_ms(row["valid_from"]),
        expires_at_ms=_ms(row["expires_at"]),
        granted_at_ms=_ms(row["granted_at"]),
        member_id=row["member_id"],
    )


def charge_of(row: Mapping[str, Any]) -> ChargeDue:
    return ChargeDue(
        org_id=row["org_id"],
        charge_id=row["charge_id"],
        period=Period(_ms(row["period_start"]), _ms(row["period_end"])),
        reason=ChargeReason(row["reason"]),
        credits=row["credits"],
        through_credits=row["through_credits"],
        amount_micros=row["amount_micros"],
        due_at_ms=_ms(row["due_at"]),
    )


class PlansStore:
    """Plans, seats, balance, codes, expiries and charges in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- plans and organizations ----------------------------------------------------------

    async def put_plan(self, plan: PlanSettings, *, replace: bool = True) -> None:
        """Create or replace a plan (its `plans` row and the settings that row lacks). With
        `replace=False` an existing plan of that id is a `Conflict` (`plan_exists`)."""
        extra = orjson.dumps(plan.extra_settings()).decode()
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(UPSERT_PLAN if replace else INSERT_PLAN, *plan.plan_row())
            except asyncpg.UniqueViolationError as exc:
                raise Conflict("plan already exists", code="plan_exists") from exc
            await conn.execute(UPSERT_PLAN_SETTINGS, plan.plan_id, extra)

    async def plan(self, plan_id: str) -> PlanSettings:
        return (await self.plan_created(plan_id))[0]

    async def plan_created(self, plan_id: str) -> tuple[PlanSettings, dt.datetime]:
        """A plan and when it was created."""
        row = await self.pool.fetchrow(SELECT_PLAN, plan_id)
        if row is None:
            raise NotFound("plan not found", code="plan_not_found")
        return plan_of(row), row["created_at"]

    async def plans(self) -> list[tuple[PlanSettings, dt.datetime]]:
        """Every plan, by id, with when it was created."""
        return [(plan_of(r), r["created_at"]) for r in await self.pool.fetch(SELECT_PLANS)]

    async def _org(self, conn: asyncpg.Connection, org_id: str) -> OrgPlan:
        row = await conn.fetchrow(SELECT_ORG, org_id)
        if row is None:
            raise NotFound("organization not found", code="org_not_found")
        return org_plan_of(row)

    async def org_plan(self, org_id: str) -> OrgPlan:
        async with self.pool.acquire() as conn:
            return await self._org(conn, org_id)

    async def set_seat_billing(self, org_id: str, billing: SeatBilling, now_ms: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            if billing is SeatBilling.BALANCE and not op.plan.seat_month_codes:
                raise SeatMonthsNotAccepted("this plan has no seat-month balance")
            await conn.execute(UPSERT_SEAT_BILLING, org_id, billing.value, _at(now_ms))

    # -- redemption codes and the seat-month balance --------------------------------------

    async def create_code(
        self,
        code: str,
        kind: CodeKind,
        *,
        seat_months: int = 0,
        credits: int = 0,
        validity_months: int = 3,
        bound_org_id: str | None = None,
    ) -> RedemptionCode:
        """Register a code (its text is kept only as a digest)."""
        if not code:
            raise InvalidInput("a code must not be empty", code="invalid_code")
        rc = RedemptionCode(code_id(code), kind, seat_months, credits, validity_months)
        try:
            await self.pool.execute(
                INSERT_CODE, code_hash(code), rc.code_id, kind.value, seat_months, credits,
                validity_months, bound_org_id,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("this code exists already", code="code_exists") from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound("organization not found", code="org_not_found") from exc
        return rc

    async def redeem(self, org_id: str, code: str, now_ms: int) -> Redemption:
        """Redeem `code` into `org_id`: single use. Seat-month codes add lots to the balance;
        shared-credit codes add a shared bucket to `credit_grants` (returned as `grant`, for the
        caller to apply to the engine)."""
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            await conn.execute(LOCK_ORG, _lock_key(org_id))
            row = await conn.fetchrow(SELECT_CODE_FOR_UPDATE, code_hash(code))
            if row is None or row["bound_org_id"] not in (None, org_id):
                raise UnknownCode("no such redemption code")
            if row["redeemed_at"] is not None:
                raise CodeAlreadyRedeemed("this code has been redeemed already")
            rc = RedemptionCode(
                row["code_id"], CodeKind(row["kind"]), row["seat_months"], row["credits"],
                row["validity_months"],
            )  # fmt: skip
            if rc.seat_month_code and op.billing is not SeatBilling.BALANCE:
                raise SeatMonthsNotAccepted(
                    "this organization does not pay its seats from a seat-month balance"
                )
            result = redeem(rc, org_id, now_ms)
            await conn.execute(MARK_REDEEMED, row["code_hash"], org_id, _at(now_ms))
            for lot in result.lots:
                await conn.execute(
                    INSERT_LOT, org_id, lot.lot_id, lot.code_id, lot.installment, lot.amount,
                    lot.remaining, _at(lot.available_from_ms), _at(lot.expires_at_ms),
                )  # fmt: skip
            if result.grant is not None:
                stored = await self._insert_grant(conn, result.grant, f"redemption:{rc.code_id}")
                result = Redemption(org_id, rc.code_id, rc.kind, now_ms, grant=stored)
        return result

    async def lots(self, org_id: str) -> list[Lot]:
        return [lot_of(r) for r in await self.pool.fetch(SELECT_LOTS, org_id)]

    async def balance(self, org_id: str, now_ms: int) -> BalanceSummary:
        return summarize(await self.lots(org_id), now_ms)

    # -- seats ----------------------------------------------------------------------------

    async def _insert_grant(self, conn: asyncpg.Connection, grant: Grant, source: str) -> Grant:
        await conn.execute(
            INSERT_GRANT, grant.org_id, grant.bucket_id, grant.kind.value, grant.member_id,
            grant.amount, _at(grant.valid_from_ms), _at(grant.expires_at_ms),
            _at(grant.granted_at_ms), source,
        )  # fmt: skip
        return grant_of(await conn.fetchrow(SELECT_GRANT, grant.org_id, grant.bucket_id))

    async def _occupancy(
        self, conn: asyncpg.Connection, org_id: str, member_id: str, start_ms: int
    ) -> SeatOccupancy | None:
        row = await conn.fetchrow(SELECT_OCCUPANCY, org_id, member_id, _at(start_ms))
        if row is None:
            return None
        draws = await conn.fetch(SELECT_DRAWS, org_id, member_id, _at(start_ms))
        return SeatOccupancy(
            org_id=org_id,
            member_id=member_id,
            period=Period(_ms(row["period_start"]), _ms(row["period_end"])),
            seated_from_ms=_ms(row["seated_from"]),
            fraction=row["fraction"],
            billing=SeatBilling(row["billing"]),
            draws=tuple(Draw(d["lot_id"], d["amount"]) for d in draws),
        )

    async def _issue(
        self, conn: asyncpg.Connection, op: OrgPlan, member: Mapping[str, Any], now_ms: int
    ) -> SeatIssue:
        org_id, member_id = op.org.org_id, member["member_id"]
        period = period_at(op.org, now_ms)
        existing = await self._occupancy(conn, org_id, member_id, period.start_ms)
        if member["status"] != "active" or not member["seated"]:
            return SeatIssue(existing)
        lots = [] if existing else [lot_of(r) for r in await conn.fetch(SELECT_LOTS, org_id)]
        since = _ms(member["seated_since"]) if member["seated_since"] else now_ms
        cap = await conn.fetchval(SELECT_CAP, org_id, member_id)
        granted = await self._on_demand_granted(conn, org_id, member_id, period.start_ms)
        issue = issue_seat(
            op.org, op.plan, op.billing, member_id, since, now_ms, lots, cap, existing, granted
        )
        occ = issue.occupancy
        if occ is None:
            return issue
        if existing is None:
            await conn.execute(
                INSERT_OCCUPANCY, org_id, member_id, _at(period.start_ms), _at(period.end_ms),
                _at(occ.seated_from_ms), occ.fraction, occ.billing.value, _at(now_ms),
            )  # fmt: skip
            drawn = {d.lot_id for d in occ.draws}
            for lot in after(lots, occ.draws):
                if lot.lot_id in drawn:
                    await conn.execute(UPDATE_LOT, org_id, lot.lot_id, lot.remaining)
            for d in occ.draws:
                await conn.execute(
                    INSERT_DRAW, org_id, member_id, _at(period.start_ms), d.lot_id, d.amount
                )
        for g in issue.grants:
            await self._insert_grant(conn, g, g.kind.value)
        seat_id = seat_bucket_id(member_id, period.start_ms)
        pattern = _on_demand_pattern(member_id, period.start_ms)
        rows = await conn.fetch(SELECT_PERIOD_SEAT_GRANTS, org_id, member_id, seat_id, pattern)
        return SeatIssue(occ, tuple(grant_of(r) for r in rows))

    async def _on_demand_granted(
        self, conn: asyncpg.Connection, org_id: str, member_id: str, start_ms: int
    ) -> int:
        pattern = _on_demand_pattern(member_id, start_ms)
        granted: int = await conn.fetchval(SELECT_ON_DEMAND_GRANTED, org_id, member_id, pattern)
        return granted

    async def issue_seat(self, org_id: str, member_id: str, now_ms: int) -> SeatIssue:
        """Pay and grant a member's seat for the period containing `now_ms`, once: the scheduler
        at period start and lazy issuance (first event or check of a member) both call this. A
        member not seated (or removed) gets nothing new; their existing occupancy is returned."""
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            await conn.execute(LOCK_ORG, _lock_key(org_id))
            member = await conn.fetchrow(SELECT_MEMBER, org_id, member_id)
            if member is None:
                raise NotFound("member not found", code="member_not_found")
            return await self._issue(conn, op, member, now_ms)

    async def start_period(self, org_id: str, now_ms: int) -> PeriodIssue:
        """Issue every seated member's seat for the period containing `now_ms` (oldest seat
        first, so a short balance pays the longest-standing members), and the organization's
        per-period pool on package plans. Idempotent."""
        grants: list[Grant] = []
        unpaid: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            await conn.execute(LOCK_ORG, _lock_key(org_id))
            for member in await conn.fetch(SELECT_SEATED, org_id):
                issue = await self._issue(conn, op, member, now_ms)
                grants.extend(issue.grants)
                if not issue.paid:
                    unpaid.append(member["member_id"])
            pool = pool_grant(op.org, op.plan, now_ms)
            if pool is not None:
                grants.append(await self._insert_grant(conn, pool, "plan"))
        return PeriodIssue(tuple(grants), tuple(unpaid), period_at(op.org, now_ms))

    async def record_issued(self, org_id: str, period: Period) -> None:
        """Record that `period`'s seats of `org_id` are issued and applied to the engine (after
        `start_period` and the engine calls succeeded), so lazy issuers need not do it again."""
        await self.pool.execute(
            INSERT_SEAT_PERIOD, org_id, _at(period.start_ms), _at(period.end_ms)
        )

    async def occupancy(self, org_id: str, member_id: str, now_ms: int) -> SeatOccupancy | None:
        """The member's seat record for the period containing `now_ms`, if billed."""
        async with self.pool.acquire() as conn:
            op = await self._org(conn, org_id)
            start = period_at(op.org, now_ms).start_ms
            return await self._occupancy(conn, org_id, member_id, start)

    async def period_occupancy(self, org_id: str, now_ms: int) -> list[SeatOccupancy]:
        """Every seat billed for the period containing `now_ms` (seats left mid-period too)."""
        async with self.pool.acquire() as conn:
            op = await self._org(conn, org_id)
            start = period_at(op.org, now_ms).start_ms
            rows = await conn.fetch(SELECT_PERIOD_OCCUPANCY, org_id, _at(start))
            return [
                occ
                for r in rows
                if (occ := await self._occupancy(conn, org_id, r["member_id"], start)) is not None
            ]

    async def seat_paid(self, org_id: str, member_id: str, now_ms: int) -> bool:
        """Whether the member's seat is paid for the period containing `now_ms` (no `no_seat`)."""
        async with self.pool.acquire() as conn:
            op = await self._org(conn, org_id)
            start = period_at(op.org, now_ms).start_ms
            occ = await self._occupancy(conn, org_id, member_id, start)
        return seat_is_paid(op.billing, occ)

    async def set_on_demand_cap(
        self, org_id: str, member_id: str, cap: int, now_ms: int
    ) -> Grant | None:
        """Set a member's on-demand cap; a raise tops up this period's on-demand room at once
        (returned grant, to apply). A lower cap applies from the next period."""
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            await conn.execute(LOCK_ORG, _lock_key(org_id))
            if not op.plan.on_demand_allowed:
                raise InvalidInput("this plan has no on-demand usage", code="on_demand_not_allowed")
            try:
                await conn.execute(UPSERT_CAP, org_id, member_id, cap, _at(now_ms))
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound("member not found", code="member_not_found") from exc
            start = period_at(op.org, now_ms).start_ms
            occ = await self._occupancy(conn, org_id, member_id, start)
            if occ is None:
                return None
            granted = await self._on_demand_granted(conn, org_id, member_id, start)
            grant = on_demand_grant(op.plan, occ, cap, granted, now_ms)
            return None if grant is None else await self._insert_grant(conn, grant, "on_demand")

    # -- rollover -------------------------------------------------------------------------

    async def record_expiries(
        self, org_id: str, period: Period, remaining: Mapping[str, int]
    ) -> list[ExpiryEntry]:
        """Record the expired remainders of buckets that expired within `period`, given the
        credits left per bucket (`Engine.balances`). Idempotent per bucket."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                SELECT_EXPIRED_GRANTS, org_id, _at(period.start_ms), _at(period.end_ms)
            )
            entries = expiry_entries([grant_of(r) for r in rows], remaining, period)
            for e in entries:
                await conn.execute(
                    INSERT_EXPIRY, org_id, e.bucket_id, e.kind.value, e.member_id, e.amount,
                    _at(e.expired_at_ms),
                )  # fmt: skip
        return entries

    # -- charges --------------------------------------------------------------------------

    async def due_charges(self, org_id: str, now_ms: int) -> list[ChargeDue]:
        """Record the charges due now for on-demand usage of the current period (threshold) and
        the previous one (its end); returns the new ones. Publish them, then `mark_published`."""
        out: list[ChargeDue] = []
        async with self.pool.acquire() as conn, conn.transaction():
            op = await self._org(conn, org_id)
            await conn.execute(LOCK_ORG, _lock_key(org_id))
            k = period_index(op.org, now_ms)
            for i in (k - 1, k):
                period = Period(period_start(op.org, i), period_start(op.org, i + 1))
                used = await conn.fetchval(SELECT_ON_DEMAND_USED, org_id, _at(period.start_ms))
                charged = await conn.fetchval(SELECT_CHARGED, org_id, _at(period.start_ms))
                due = charge_due(org_id, op.plan, period, used or 0, charged, now_ms)
                if due is None:
                    continue
                inserted = await conn.fetchval(
                    INSERT_CHARGE, org_id, due.charge_id, _at(period.start_ms),
                    _at(period.end_ms), due.reason.value, due.credits, due.through_credits,
                    due.amount_micros, _at(due.due_at_ms),
                )  # fmt: skip
                if inserted:
                    out.append(due)
        return out

    async def charges(self, org_id: str) -> list[tuple[ChargeDue, int | None]]:
        """The organization's charges, oldest period first, each with when it was published."""
        rows = await self.pool.fetch(SELECT_ORG_CHARGES, org_id)
        return [
            (charge_of(r), None if r["published_at"] is None else _ms(r["published_at"]))
            for r in rows
        ]

    async def unpublished_charges(self, limit: int = 100) -> list[ChargeDue]:
        return [charge_of(r) for r in await self.pool.fetch(SELECT_UNPUBLISHED, limit)]

    async def mark_published(self, org_id: str, charge_ids: Sequence[str], now_ms: int) -> None:
        await self.pool.execute(MARK_PUBLISHED, org_id, list(charge_ids), _at(now_ms))


def _on_demand_pattern(member_id: str, period_start_ms: int) -> str:
    """LIKE pattern of a member's on-demand bucket ids of a period (see `on_demand_bucket_id`)."""
    return f"on\\_demand:{_like(member_id)}:{period_start_ms}:%"


def _like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
