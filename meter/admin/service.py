"""Administration: PostgreSQL first, then Redis.

Every write runs in one PostgreSQL transaction and, once committed, is applied to the engine
(Redis) with its idempotent `put_*` / `apply_grant` calls. If that apply fails, the organization is
marked dirty and the reconciler (`meter.admin.reconcile`) re-applies its whole state from
PostgreSQL; it also runs on start and periodically, so Redis converges to PostgreSQL whatever
happened in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
import structlog

from meter.admin import queries as q
from meter.admin.clock import from_ms, now_ms, to_ms
from meter.admin.reads import redeemed_at_ms, seat_credits
from meter.auth import Scope, hash_token, new_key_id, new_token
from meter.engine.periods import period_at
from meter.engine.types import (
    UNASSIGNED,
    BillingGroupConfig,
    Engine,
    Grant,
    Kind,
    LimitPolicy,
    Line,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    Period,
    PeriodKind,
    Settlement,
)
from meter.errors import Conflict, InvalidInput, NotFound
from meter.money import format_credits
from meter.plans.balance import Lot, summarize
from meter.plans.charges import ChargeDue
from meter.plans.presets import PlanSettings, preset, presets
from meter.plans.redemption import CodeKind
from meter.plans.seats import SeatBilling, SeatIssue
from meter.plans.store import PeriodIssue, PlansStore, grant_of
from meter.store import record_void, recorded_void
from schemas import api

log = structlog.get_logger("meter.admin")

UNASSIGNED_NAME = "Unassigned"

REBUILD_LOCK_KEY = int.from_bytes(hashlib.sha256(b"meter.rebuild").digest()[:8], "big", signed=True)
"""pg_advisory_lock key of `meter.rebuild`: settling consumers and voids hold it shared, a
rebuild exclusively."""

LOCK_REBUILD_SHARED = "SELECT pg_advisory_xact_lock_shared($1)"


def _credits(micro: int | None) -> str | None:
    return None if micro is None else format_credits(micro)


@contextmanager
def _sql_errors(what: str) -> Iterator[None]:
    """Constraint violations to domain errors, by SQLSTATE class, never by message."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what} already exists", code=f"{what}_exists") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound(f"{what} refers to something that does not exist") from exc
    except (asyncpg.CheckViolationError, asyncpg.DataError) as exc:
        raise InvalidInput(f"invalid {what}") from exc


def org_config(row: asyncpg.Record) -> OrgConfig:
    """The engine's view of an organization row joined with its plan."""
    return OrgConfig(
        org_id=row["org_id"],
        status=OrgStatus(row["status"]),
        period_kind=PeriodKind(row["period_kind"]),
        anchor_ms=to_ms(row["billing_anchor"]),
        rolling_days=row["rolling_days"],
        limit_policy=LimitPolicy(row["limit_policy"]),
        default_member_limit=row["default_member_limit"],
        grace_ms=row["grace_seconds"] * 1000,
    )


def member_config(row: asyncpg.Record) -> MemberConfig:
    return MemberConfig(
        org_id=row["org_id"],
        member_id=row["member_id"],
        seated=row["seated"],
        member_limit=row["member_limit"],
        billing_group=row["billing_group_id"] or UNASSIGNED,
    )


def plan_settings_out(plan: PlanSettings) -> dict[str, Any]:
    """A plan's settings as the API shows them (credits as decimal strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if f.name in _CREDIT_SETTINGS:
            value = _credits(value)
        elif isinstance(value, PeriodKind | LimitPolicy):
            value = value.value
        out[f.name] = value
    return out


_CREDIT_SETTINGS = frozenset(
    {
        "seat_credits",
        "default_member_limit",
        "on_demand_member_cap",
        "org_credits_per_period",
        "shared_pack_credits",
    }
)


def plan_out(plan: PlanSettings, created_at: dt.datetime) -> api.Plan:
    return api.Plan(**plan_settings_out(plan), created_at=created_at)


def bucket_out(grant: Grant) -> api.Bucket:
    return api.Bucket(
        bucket_id=grant.bucket_id,
        kind=grant.kind.value,
        member_id=grant.member_id,
        amount=format_credits(grant.amount),
        valid_from=from_ms(grant.valid_from_ms),
        expires_at=from_ms(grant.expires_at_ms),
    )


def lot_out(lot: Lot, now: int) -> api.SeatMonthLot:
    if now < lot.available_from_ms:
        state = "frozen"
    elif lot.remaining == 0:
        state = "used"
    elif now >= lot.expires_at_ms:
        state = "expired"
    else:
        state = "available"
    return api.SeatMonthLot(
        lot_id=lot.lot_id,
        code_id=lot.code_id,
        installment=lot.installment,
        amount=format_credits(lot.amount),
        remaining=format_credits(lot.remaining),
        available_from=from_ms(lot.available_from_ms),
        expires_at=from_ms(lot.expires_at_ms),
        state=state,  # type: ignore[arg-type]
    )


def charge_out(charge: ChargeDue, published_ms: int | None) -> api.Charge:
    return api.Charge(
        charge_id=charge.charge_id,
        period_start=from_ms(charge.period.start_ms),
        period_end=from_ms(charge.period.end_ms),
        reason=charge.reason.value,
        credits=format_credits(charge.credits),
        through_credits=format_credits(charge.through_credits),
        amount_micros=charge.amount_micros,
        due_at=from_ms(charge.due_at_ms),
        published_at=None if published_ms is None else from_ms(published_ms),
    )


def org_out(row: asyncpg.Record) -> api.Org:
    return api.Org(
        org_id=row["org_id"],
        name=row["name"],
        plan_id=row["plan_id"],
        billing_anchor=row["billing_anchor"],
        status=row["status"],
        grace_seconds=row["grace_seconds"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def member_out(row: asyncpg.Record) -> api.Member:
    return api.Member(
        member_id=row["member_id"],
        name=row["name"],
        email=row["email"],
        status=row["status"],
        seated=row["seated"],
        member_limit=_credits(row["member_limit"]),
        billing_group_id=row["billing_group_id"],
        groups=list(row["groups"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def grant_out(row: asyncpg.Record, created: bool) -> api.GrantOut:
    return api.GrantOut(
        bucket_id=row["bucket_id"],
        kind=row["kind"],
        member_id=row["member_id"],
        amount=format_credits(row["amount"]),
        valid_from=row["valid_from"],
        expires_at=row["expires_at"],
        granted_at=row["granted_at"],
        source=row["source"],
        created=created,
        revoked_at=row["revoked_at"],
    )


def _is_unassigned(ident: str) -> bool:
    return ident == UNASSIGNED or ident.casefold() == UNASSIGNED_NAME.casefold()


class AdminService:
    """Administration of plans, organizations, members, seats, groups, billing groups, grants,
    redemption codes, keys. `clock` gives "now" in epoch ms: inject one to move time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        engine: Engine,
        clock: Callable[[], int] = now_ms,
        *,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.pool = pool
        self.engine = engine
        self.clock = clock
        self.redis = redis
        """A full Redis client, for the reconciler's repairs when the engine's client speaks
        only FCALL (the API's); None: the engine's own."""
        self.plans = PlansStore(pool)
        self.dirty: set[str] = set()
        """Organizations whose last Redis apply failed; the reconciler repairs them."""
        self.dirty_event = asyncio.Event()
        self.on_issued: Callable[[str, Period], None] | None = None
        """Told of each period whose seats `refresh_seats` issued and applied (the process's
        `meter.admin.issuance.SeatPeriods` learns them so)."""
        self.repair_wanted = False
        """A caller met Redis without its epoch marker: the reconciler rebuilds what is lost."""

    def want_repair(self, org_id: str | None) -> None:
        """A check met an organization without state in Redis: have the reconciler repair it
        now rather than at its next full pass (`org_id` None: Redis lost everything)."""
        if org_id is None:
            self.repair_wanted = True
        else:
            self.dirty.add(org_id)
        self.dirty_event.set()

    async def _apply(self, org_id: str, *calls: Callable[[], Awaitable[Any]]) -> bool:
        """Run engine calls after a commit; on failure leave the repair to the reconciler.
        Returns whether every call succeeded."""
        try:
            for call in calls:
                await call()
        except Exception:
            log.warning(
                "redis apply failed, org marked for reconcile", org_id=org_id, exc_info=True
            )
            self.dirty.add(org_id)
            self.dirty_event.set()
            return False
        return True

    # -- plans ----------------------------------------------------------------------------

    async def install_presets(self) -> None:
        """Create or refresh the shipped plan presets (`teams`, `enterprise`, ...)."""
        for plan in presets().values():
            await self.plans.put_plan(plan)
            await self._preset_card(plan.plan_id, plan.plan_id)

    async def _preset_card(self, plan_id: str, preset_id: str) -> None:
        """A plan made from a preset gets the preset's first rate card (`rate_cards.toml`)."""
        from meter.plans.presets import preset_rate_cards
        from meter.rating.book import ensure_first_card

        table = preset_rate_cards().get(preset_id)
        if table is not None:
            body = {k: v for k, v in table.items() if k != "note"}
            await ensure_first_card(self.pool, plan_id, body, table.get("note", ""))

    @staticmethod
    def list_presets() -> api.PlanPresetList:
        return api.PlanPresetList(
            presets=[api.PlanSettingsOut(**plan_settings_out(p)) for p in presets().values()]
        )

    async def create_plan(self, body: api.PlanCreate) -> api.Plan:
        """A plan from a preset (fields given override it) or from explicit settings."""
        if body.preset is not None:
            base = preset(body.preset).with_id(body.plan_id or body.preset, body.name)
        elif body.plan_id is None or body.name is None:
            raise InvalidInput("a plan needs plan_id and name, or a preset", code="invalid_plan")
        else:
            base = PlanSettings(plan_id=body.plan_id, name=body.name)
        values: dict[str, Any] = {
            f: getattr(body, f) for f in body.model_fields_set - {"preset", "plan_id", "name"}
        }
        if "period_kind" in values:
            values["period_kind"] = PeriodKind(values["period_kind"])
        if "limit_policy" in values:
            values["limit_policy"] = LimitPolicy(values["limit_policy"])
        plan = dataclasses.replace(base, **values)
        await self.plans.put_plan(plan, replace=False)
        if body.preset is not None:
            await self._preset_card(plan.plan_id, body.preset)
        return plan_out(*await self.plans.plan_created(plan.plan_id))

    async def get_plan(self, plan_id: str) -> api.Plan:
        return plan_out(*await self.plans.plan_created(plan_id))

    async def list_plans(self) -> api.PlanList:
        return api.PlanList(plans=[plan_out(p, c) for p, c in await self.plans.plans()])

    # -- organizations --------------------------------------------------------------------

    async def _org_row(self, conn: asyncpg.Connection, org_id: str) -> asyncpg.Record:
        row = await conn.fetchrow(q.SELECT_ORG_CONFIG, org_id)
        if row is None:
            raise NotFound("organization not found", code="org_not_found")
        return row

    async def create_org(self, body: api.OrgCreate) -> api.Org:
        anchor = body.billing_anchor or from_ms(self.clock())
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(q.SELECT_PLAN_EXISTS, body.plan_id) is None:
                raise NotFound("plan not found", code="plan_not_found")
            with _sql_errors("org"):
                await conn.execute(
                    q.INSERT_ORG, body.org_id, body.name, body.plan_id, anchor, body.status,
                    body.grace_seconds,
                )  # fmt: skip
            row = await self._org_row(conn, body.org_id)
        cfg = org_config(row)
        await self._apply(body.org_id, lambda: self.engine.put_org(cfg))
        await self.refresh_seats(body.org_id)
        return org_out(row)

    async def get_org(self, org_id: str) -> api.Org:
        async with self.pool.acquire() as conn:
            return org_out(await self._org_row(conn, org_id))

    async def update_org(self, org_id: str, body: api.OrgUpdate) -> api.Org:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            if body.plan_id is not None and (
                await conn.fetchval(q.SELECT_PLAN_EXISTS, body.plan_id) is None
            ):
                raise NotFound("plan not found", code="plan_not_found")
            await conn.execute(
                q.UPDATE_ORG, org_id, body.name, body.status, body.plan_id, body.grace_seconds
            )
            row = await self._org_row(conn, org_id)
        cfg = org_config(row)
        await self._apply(org_id, lambda: self.engine.put_org(cfg, create=False))
        return org_out(row)

    async def org_exists(self, org_id: str) -> None:
        if await self.pool.fetchval(q.SELECT_ORG_EXISTS, org_id) is None:
            raise NotFound("organization not found", code="org_not_found")

    # -- members --------------------------------------------------------------------------

    async def _check_billing_group(
        self, conn: asyncpg.Connection, org: asyncpg.Record, group_id: str | None
    ) -> None:
        if group_id is None:
            return
        if _is_unassigned(group_id):
            raise InvalidInput(
                "to put a member in Unassigned, set billing_group_id to null",
                code="unassigned_built_in",
            )
        if not org["billing_groups_allowed"]:
            raise Conflict(
                "this organization's plan has no billing groups", code="billing_groups_not_allowed"
            )
        if await conn.fetchval(q.SELECT_LIVE_BILLING_GROUP, org["org_id"], group_id) is None:
            raise NotFound("billing group not found", code="billing_group_not_found")

    async def _member_row(
        self, conn: asyncpg.Connection, org_id: str, member_id: str
    ) -> asyncpg.Record:
        row = await conn.fetchrow(q.SELECT_MEMBER, org_id, member_id)
        if row is None:
            raise NotFound("member not found", code="member_not_found")
        return row

    async def _seat_member(self, org_id: str, member: asyncpg.Record) -> None:
        """After a member's change committed: issue their seat for the current period (paid from
        the seat-month balance when the organization pays that way) and tell the engine. A seat
        that cannot be paid leaves the member unseated in the engine: checks say `no_seat`."""
        try:
            issue = await self.plans.issue_seat(org_id, member["member_id"], self.clock())
        except Exception:
            log.warning("seat issue failed, org marked for reconcile", org_id=org_id, exc_info=True)
            issue = SeatIssue(None)
            self.dirty.add(org_id)
            self.dirty_event.set()
        cfg = dataclasses.replace(member_config(member), seated=member["seated"] and issue.paid)
        calls: list[Callable[[], Awaitable[Any]]] = [lambda: self.engine.put_member(cfg)]
        calls.extend(functools.partial(self.engine.apply_grant, g) for g in issue.grants)
        await self._apply(org_id, *calls)

    async def refresh_seats(
        self, org_id: str, at_ms: int | None = None, *, strict: bool = False
    ) -> PeriodIssue:
        """Issue the seats of every seated member (and a package plan's pool) for the period
        containing `at_ms` (default: now), idempotently, and tell the engine who has a paid seat
        (unless that period ended already: who is paid now is the current period's business).
        Once the engine has it all, the period is recorded issued (`seat_periods`), which lazy
        issuers (`meter.admin.issuance`) probe. Runs at each period start (scheduler), at the
        first event or check of an organization in a period (lazy issuance), after a redemption
        and when seat billing changes.

        An engine call that fails marks the organization for the reconciler, or, with `strict`
        (lazy issuance, which must not settle before the seats are there), is raised."""
        issue = await self.plans.start_period(org_id, self.clock() if at_ms is None else at_ms)
        calls: list[Callable[[], Awaitable[Any]]] = []
        if issue.period.end_ms > self.clock():
            unpaid = set(issue.unpaid)
            for m in await self.pool.fetch(q.SELECT_ALL_MEMBERS, org_id):
                if m["status"] == "active":
                    cfg = dataclasses.replace(
                        member_config(m), seated=m["seated"] and m["member_id"] not in unpaid
                    )
                    calls.append(functools.partial(self.engine.put_member, cfg))
        calls.extend(functools.partial(self.engine.apply_grant, g) for g in issue.grants)
        if strict:
            for call in calls:
                await call()
        elif not await self._apply(org_id, *calls):
            return issue
        await self.plans.record_issued(org_id, issue.period)
        if self.on_issued is not None:
            self.on_issued(org_id, issue.period)
        return issue

    async def create_member(self, org_id: str, body: api.MemberCreate) -> api.Member:
        now = from_ms(self.clock())
        async with self.pool.acquire() as conn, conn.transaction():
            org = await self._org_row(conn, org_id)
            await self._check_billing_group(conn, org, body.billing_group_id)
            with _sql_errors("member"):
                created = await conn.fetchval(
                    q.UPSERT_MEMBER, org_id, body.member_id, body.name, body.email, body.seated,
                    now if body.seated else None, body.member_limit, body.billing_group_id, now,
                )  # fmt: skip
            if created is None:
                raise Conflict("member already exists", code="member_exists")
            member = await self._member_row(conn, org_id, body.member_id)
        await self._seat_member(org_id, member)
        return member_out(member)

    async def get_member(self, org_id: str, member_id: str) -> api.Member:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            return member_out(await self._member_row(conn, org_id, member_id))

    async def list_members(self, org_id: str) -> api.MemberList:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            rows = await conn.fetch(q.SELECT_MEMBERS, org_id)
        return api.MemberList(members=[member_out(r) for r in rows])

    async def update_member(
        self, org_id: str, member_id: str, body: api.MemberUpdate
    ) -> api.Member:
        given = body.model_fields_set
        now = from_ms(self.clock())
        async with self.pool.acquire() as conn, conn.transaction():
            org = await self._org_row(conn, org_id)
            current = await conn.fetchrow(q.SELECT_MEMBER_FOR_UPDATE, org_id, member_id)
            if current is None or current["status"] != "active":
                raise NotFound("member not found", code="member_not_found")
            if "billing_group_id" in given:
                await self._check_billing_group(conn, org, body.billing_group_id)
            seated = current["seated"] if body.seated is None else body.seated
            seated_since = current["seated_since"]
            if seated and not current["seated"]:
                seated_since = now
            elif not seated:
                seated_since = None
            await conn.execute(
                q.UPDATE_MEMBER,
                org_id,
                member_id,
                current["name"] if body.name is None else body.name,
                current["email"] if body.email is None else body.email,
                seated,
                seated_since,
                body.member_limit if "member_limit" in given else current["member_limit"],
                (
                    body.billing_group_id
                    if "billing_group_id" in given
                    else current["billing_group_id"]
                ),
                now,
            )
            member = await self._member_row(conn, org_id, member_id)
        await self._seat_member(org_id, member)
        return member_out(member)

    async def delete_member(self, org_id: str, member_id: str) -> None:
        """The member leaves: removed from groups, no longer usable; history stays."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            done = await conn.fetchval(q.REMOVE_MEMBER, org_id, member_id, from_ms(self.clock()))
            if done is None:
                raise NotFound("member not found", code="member_not_found")
            await conn.execute(q.DELETE_MEMBER_GROUPS, org_id, member_id)
        await self._apply(org_id, lambda: self.engine.remove_member(org_id, member_id))

    # -- groups (functional only: never touch the engine) ---------------------------------

    async def create_group(self, org_id: str, body: api.GroupCreate) -> api.Group:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            with _sql_errors("group"):
                await conn.execute(
                    q.INSERT_GROUP, org_id, body.group_id, body.name, body.description
                )
            return await self._group(conn, org_id, body.group_id)

    async def _group(self, conn: asyncpg.Connection, org_id: str, group_id: str) -> api.Group:
        row = await conn.fetchrow(q.SELECT_GROUP, org_id, group_id)
        if row is None:
            raise NotFound("group not found", code="group_not_found")
        return api.Group(
            group_id=row["group_id"],
            name=row["name"],
            description=row["description"],
            member_ids=list(row["member_ids"]),
            created_at=row["created_at"],
        )

    async def get_group(self, org_id: str, group_id: str) -> api.Group:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            return await self._group(conn, org_id, group_id)

    async def list_groups(self, org_id: str) -> api.GroupList:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            ids = [r["group_id"] for r in await conn.fetch(q.SELECT_GROUP_IDS, org_id)]
            return api.GroupList(groups=[await self._group(conn, org_id, g) for g in ids])

    async def delete_group(self, org_id: str, group_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            if await conn.fetchval(q.DELETE_GROUP, org_id, group_id) is None:
                raise NotFound("group not found", code="group_not_found")

    async def add_group_member(self, org_id: str, group_id: str, member_id: str) -> api.Group:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            await self._group(conn, org_id, group_id)
            member = await self._member_row(conn, org_id, member_id)
            if member["status"] != "active":
                raise NotFound("member not found", code="member_not_found")
            await conn.execute(q.INSERT_GROUP_MEMBER, org_id, group_id, member_id)
            return await self._group(conn, org_id, group_id)

    async def remove_group_member(self, org_id: str, group_id: str, member_id: str) -> api.Group:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            await self._group(conn, org_id, group_id)
            if await conn.fetchval(q.DELETE_GROUP_MEMBER, org_id, group_id, member_id) is None:
                raise NotFound("member is not in this group", code="member_not_found")
            return await self._group(conn, org_id, group_id)

    # -- billing groups -------------------------------------------------------------------

    async def _billing_groups(
        self, conn: asyncpg.Connection, org_id: str, group_id: str | None = None
    ) -> list[api.BillingGroup]:
        rows = await conn.fetch(q.SELECT_BILLING_GROUPS, org_id)
        members = await conn.fetch(q.SELECT_BILLING_GROUP_MEMBERS, org_id)
        by_group: dict[str, list[str]] = {}
        for m in members:
            by_group.setdefault(m["billing_group_id"] or UNASSIGNED, []).append(m["member_id"])
        out = [
            api.BillingGroup(
                billing_group_id=UNASSIGNED,
                name=UNASSIGNED_NAME,
                description="",
                period_limit=None,
                built_in=True,
                member_ids=by_group.get(UNASSIGNED, []),
            )
        ]
        for r in rows:
            out.append(
                api.BillingGroup(
                    billing_group_id=r["billing_group_id"],
                    name=r["name"],
                    description=r["description"],
                    period_limit=_credits(r["period_limit"]),
                    built_in=False,
                    member_ids=by_group.get(r["billing_group_id"], []),
                )
            )
        if group_id is not None:
            out = [g for g in out if g.billing_group_id == group_id]
            if not out:
                raise NotFound("billing group not found", code="billing_group_not_found")
        return out

    async def list_billing_groups(self, org_id: str) -> api.BillingGroupList:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            return api.BillingGroupList(billing_groups=await self._billing_groups(conn, org_id))

    async def get_billing_group(self, org_id: str, group_id: str) -> api.BillingGroup:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            if _is_unassigned(group_id):
                return (await self._billing_groups(conn, org_id, UNASSIGNED))[0]
            return (await self._billing_groups(conn, org_id, group_id))[0]

    @staticmethod
    def _refuse_unassigned(group_id: str, name: str | None = None) -> None:
        if _is_unassigned(group_id) or (name is not None and _is_unassigned(name)):
            raise Conflict(
                "Unassigned is built in: it cannot be created, renamed, limited or deleted",
                code="unassigned_built_in",
            )

    async def create_billing_group(
        self, org_id: str, body: api.BillingGroupCreate
    ) -> api.BillingGroup:
        self._refuse_unassigned(body.billing_group_id, body.name)
        async with self.pool.acquire() as conn, conn.transaction():
            org = await self._org_row(conn, org_id)
            if not org["billing_groups_allowed"]:
                raise Conflict(
                    "this organization's plan has no billing groups",
                    code="billing_groups_not_allowed",
                )
            with _sql_errors("billing_group"):
                await conn.execute(
                    q.INSERT_BILLING_GROUP, org_id, body.billing_group_id, body.name,
                    body.description, body.period_limit,
                )  # fmt: skip
            group = (await self._billing_groups(conn, org_id, body.billing_group_id))[0]
        cfg = BillingGroupConfig(org_id, body.billing_group_id, body.period_limit)
        await self._apply(org_id, lambda: self.engine.put_billing_group(cfg))
        return group

    async def update_billing_group(
        self, org_id: str, group_id: str, body: api.BillingGroupUpdate
    ) -> api.BillingGroup:
        given = body.model_fields_set
        self._refuse_unassigned(group_id, body.name)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            current = await conn.fetchrow(q.SELECT_LIVE_BILLING_GROUP_ROW, org_id, group_id)
            if current is None:
                raise NotFound("billing group not found", code="billing_group_not_found")
            limit = body.period_limit if "period_limit" in given else current["period_limit"]
            with _sql_errors("billing_group"):
                await conn.execute(
                    q.UPDATE_BILLING_GROUP, org_id, group_id,
                    current["name"] if body.name is None else body.name,
                    current["description"] if body.description is None else body.description,
                    limit,
                )  # fmt: skip
            group = (await self._billing_groups(conn, org_id, group_id))[0]
        cfg = BillingGroupConfig(org_id, group_id, limit)
        await self._apply(org_id, lambda: self.engine.put_billing_group(cfg))
        return group

    async def delete_billing_group(self, org_id: str, group_id: str) -> None:
        """Members return to Unassigned; the row stays (deleted) so history keeps its name."""
        self._refuse_unassigned(group_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            now = from_ms(self.clock())
            if await conn.fetchval(q.DELETE_BILLING_GROUP, org_id, group_id, now) is None:
                raise NotFound("billing group not found", code="billing_group_not_found")
            await conn.execute(q.UNASSIGN_BILLING_GROUP_MEMBERS, org_id, group_id, now)
        await self._apply(org_id, lambda: self.engine.delete_billing_group(org_id, group_id))

    # -- grants ---------------------------------------------------------------------------

    async def create_grant(self, org_id: str, body: api.GrantCreate) -> api.GrantOut:
        now = self.clock()
        valid_from = body.valid_from or from_ms(now)
        if body.expires_at <= valid_from:
            raise InvalidInput("expires_at must be after valid_from", code="invalid_expiry")
        if body.amount <= 0:
            raise InvalidInput("amount must be positive", code="invalid_amount")
        if (body.kind == "shared") != (body.member_id is None):
            raise InvalidInput(
                "shared grants have no member_id; every other kind needs one",
                code="invalid_owner",
            )
        bucket_id = body.bucket_id or f"{body.kind}:{secrets.token_hex(8)}"
        async with self.pool.acquire() as conn, conn.transaction():
            await self._org_row(conn, org_id)
            if body.member_id is not None:
                member = await self._member_row(conn, org_id, body.member_id)
                if member["status"] != "active":
                    raise NotFound("member not found", code="member_not_found")
            created = await conn.fetchval(
                q.INSERT_GRANT_IF_ABSENT, org_id, bucket_id, body.kind, body.member_id,
                body.amount, valid_from, body.expires_at, from_ms(now), body.source,
            )  # fmt: skip
            row = await conn.fetchrow(q.SELECT_GRANT, org_id, bucket_id)
        if created is None and row["revoked_at"] is not None:
            raise Conflict("the grant with this bucket id was revoked", code="grant_revoked")
        if created is None and (
            row["kind"] != body.kind
            or row["member_id"] != body.member_id
            or row["amount"] != body.amount
            or row["expires_at"] != body.expires_at
        ):
            raise Conflict("a different grant has this bucket id", code="bucket_exists")
        grant = grant_of(row)
        await self._apply(org_id, lambda: self.engine.apply_grant(grant))
        return grant_out(row, created is not None)

    async def revoke_grant(self, org_id: str, bucket_id: str) -> api.GrantOut:
        """Revoke a grant from now on: what it has left is no longer usable, and it expires now
        unless it expires sooner; settlements already drawn from it stay, and voids of them
        return nothing to it. Idempotent: revoking again returns the grant as revoked first.

        Recorded in PostgreSQL and applied to Redis under the rebuild lock held shared, as a
        void does, so a rebuild reads PostgreSQL either before or after the revocation; a Redis
        apply that fails is left to the reconciler, which applies every revocation again."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_REBUILD_SHARED, REBUILD_LOCK_KEY)
            await self._org_row(conn, org_id)
            row = await conn.fetchrow(q.REVOKE_GRANT, org_id, bucket_id, from_ms(self.clock()))
            if row is None:
                row = await conn.fetchrow(q.SELECT_GRANT, org_id, bucket_id)
                if row is None:
                    raise NotFound("grant not found", code="grant_not_found")
            member_id, at_ms = row["member_id"], to_ms(row["revoked_at"])
            await self._apply(
                org_id, lambda: self.engine.revoke_grant(org_id, member_id, bucket_id, at_ms)
            )
        return grant_out(row, False)

    async def list_grants(self, org_id: str) -> api.GrantList:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            rows = await conn.fetch(q.SELECT_GRANTS, org_id)
        return api.GrantList(grants=[grant_out(r, False) for r in rows])

    async def balances(self, org_id: str) -> api.Balances:
        await self.org_exists(org_id)
        left = await self.engine.balances(org_id, self.clock())
        return api.Balances(balances={k: format_credits(v) for k, v in sorted(left.items())})

    # -- voids ----------------------------------------------------------------------------

    async def void(self, org_id: str, key: str, requested_by: str) -> api.VoidOut:
        """Void a settled event: the engine returns its credits; the request is recorded.

        Runs under the rebuild lock held shared (as settling consumers hold it, so voids wait
        neither for them nor for each other), taken in a transaction of its own connection from
        before the Redis apply until the record commits: a rebuild, which holds the lock
        exclusively, reads PostgreSQL either before the void touched Redis or after PostgreSQL
        has it. Every statement runs on that connection, so a void holding the lock never waits
        for a second one."""
        await self.org_exists(org_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_REBUILD_SHARED, REBUILD_LOCK_KEY)
            # PostgreSQL keeps void records that a Redis which lost its data no longer has.
            result = await recorded_void(conn, org_id, key)
            if result is None:
                stored = await self.stored_settlement(org_id, key, conn)
                result = await self.engine.void(org_id, key, self.clock(), stored)
                await record_void(conn, org_id, key, result, self.clock(), requested_by)
        lines = [
            api.VoidLine(
                bucket_id=ln.bucket_id, kind=ln.kind.value, amount=format_credits(ln.amount)
            )
            for ln in result.returned
        ]
        return api.VoidOut(
            key=key, voided=result.voided, returned=lines, duplicate=result.duplicate
        )

    async def stored_settlement(
        self, org_id: str, key: str, db: asyncpg.Connection | asyncpg.Pool | None = None
    ) -> Settlement | None:
        """The settlement PostgreSQL holds for `key` (Redis forgets results once confirmed), read
        on `db` (default: the service's pool)."""
        db = self.pool if db is None else db
        row = await db.fetchrow(q.SELECT_SETTLEMENT, key, org_id)
        if row is None:
            return None
        lines = await db.fetch(q.SELECT_SETTLEMENT_LINES, key, org_id)
        return Settlement(
            key=key,
            org_id=org_id,
            member_id=row["member_id"],
            credits=row["credits"],
            time_ms=to_ms(row["event_time"]),
            period=Period(to_ms(row["period_start"]), to_ms(row["period_end"])),
            billing_group=row["billing_group"],
            lines=tuple(Line(r["bucket_id"], Kind(r["kind"]), r["amount"]) for r in lines),
            unfunded=row["unfunded"],
            member_limited=row["member_limited"],
            group_limited=row["group_limited"],
            late=row["late"],
            reservation_id=row["reservation_id"],
        )

    # -- seats, seat-month balance, redemption codes, on-demand caps, charges --------------

    async def set_seat_billing(
        self, org_id: str, body: api.SeatBillingUpdate
    ) -> api.SeatBillingOut:
        """How the organization pays its seats from now on; seats already billed this period
        stay as they are."""
        await self.plans.set_seat_billing(org_id, SeatBilling(body.seat_billing), self.clock())
        await self.refresh_seats(org_id)
        return api.SeatBillingOut(org_id=org_id, seat_billing=body.seat_billing)

    async def create_code(self, body: api.CodeCreate) -> api.CodeOut:
        rc = await self.plans.create_code(
            body.code,
            CodeKind(body.kind),
            seat_months=body.seat_months,
            credits=body.credits,
            validity_months=body.validity_months,
            bound_org_id=body.bound_org_id,
        )
        return api.CodeOut(
            code_id=rc.code_id,
            kind=rc.kind.value,
            seat_months=rc.seat_months,
            credits=format_credits(rc.credits),
            validity_months=rc.validity_months,
            bound_org_id=body.bound_org_id,
        )

    async def redeem(self, org_id: str, body: api.RedemptionCreate) -> api.RedemptionOut:
        """Redeem a code: seat-months go to the balance (and may pay seats left unpaid this
        period), shared credits become a shared-pool bucket. With `redeemed_at` (checked against
        the window; the caller checks the key is an admin's) it is applied as if redeemed then."""
        now = self.clock()
        at = now if body.redeemed_at is None else redeemed_at_ms(body.redeemed_at, now)
        result = await self.plans.redeem(org_id, body.code, at)
        grant = result.grant
        if grant is not None:
            await self._apply(org_id, lambda: self.engine.apply_grant(grant))
        if result.lots:
            await self.refresh_seats(org_id)
        return api.RedemptionOut(
            code_id=result.code_id,
            kind=result.kind.value,
            redeemed_at=from_ms(result.redeemed_at_ms),
            lots=[lot_out(lot, now) for lot in result.lots],
            grant=None if grant is None else bucket_out(grant),
        )

    async def seat_balance(self, org_id: str) -> api.SeatBalance:
        now = self.clock()
        op = await self.plans.org_plan(org_id)
        lots = await self.plans.lots(org_id)
        summary = summarize(lots, now)
        return api.SeatBalance(
            seat_billing=op.billing.value,
            available=format_credits(summary.available),
            frozen=format_credits(summary.frozen),
            expired=format_credits(summary.expired),
            next_expiry=None if summary.next_expiry_ms is None else from_ms(summary.next_expiry_ms),
            lots=[lot_out(lot, now) for lot in lots],
        )

    async def seats(self, org_id: str) -> api.SeatList:
        now = self.clock()
        op = await self.plans.org_plan(org_id)
        period = period_at(op.org, now)
        seats = await self.plans.period_occupancy(org_id, now)
        listed = api.SeatList(
            period_start=from_ms(period.start_ms),
            period_end=from_ms(period.end_ms),
            seats=[
                api.Seat(
                    member_id=s.member_id,
                    seated_from=from_ms(s.seated_from_ms),
                    fraction=format_credits(s.fraction),
                    billing=s.billing.value,
                )
                for s in seats
            ],
        )
        return await seat_credits(self.pool, self.engine, org_id, listed, now)

    async def set_on_demand_cap(
        self, org_id: str, member_id: str, body: api.OnDemandCapUpdate
    ) -> api.OnDemandCapOut:
        async with self.pool.acquire() as conn:
            await self._org_row(conn, org_id)
            member = await self._member_row(conn, org_id, member_id)
        if member["status"] != "active":
            raise NotFound("member not found", code="member_not_found")
        grant = await self.plans.set_on_demand_cap(org_id, member_id, body.cap, self.clock())
        if grant is not None:
            await self._apply(org_id, lambda: self.engine.apply_grant(grant))
        return api.OnDemandCapOut(
            member_id=member_id,
            cap=format_credits(body.cap),
            granted=None if grant is None else bucket_out(grant),
        )

    async def charges(self, org_id: str) -> api.ChargeList:
        await self.org_exists(org_id)
        rows = await self.plans.charges(org_id)
        return api.ChargeList(charges=[charge_out(c, p) for c, p in rows])

    # -- API keys -------------------------------------------------------------------------

    async def create_key(self, scope: Scope, org_id: str | None, name: str) -> api.KeyCreated:
        token = new_token()
        key_id = new_key_id()
        async with self.pool.acquire() as conn, conn.transaction():
            if org_id is not None:
                await self._org_row(conn, org_id)
            await conn.execute(q.INSERT_KEY, key_id, hash_token(token), scope.value, org_id, name)
        return api.KeyCreated(key_id=key_id, token=token, scope=scope.value, org_id=org_id)

    async def list_keys(self, org_id: str | None) -> api.KeyList:
        rows = await self.pool.fetch(q.SELECT_KEYS, org_id)
        return api.KeyList(
            keys=[
                api.KeyInfo(
                    key_id=r["key_id"],
                    scope=r["scope"],
                    org_id=r["org_id"],
                    name=r["name"],
                    created_at=r["created_at"],
                    revoked_at=r["revoked_at"],
                )
                for r in rows
            ]
        )

    async def revoke_key(self, org_id: str | None, key_id: str) -> None:
        if await self.pool.fetchval(q.REVOKE_KEY, key_id, org_id, from_ms(self.clock())) is None:
            raise NotFound("key not found", code="key_not_found")
