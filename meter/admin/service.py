"""Administration: PostgreSQL first, then Redis.

Every write runs in one PostgreSQL transaction and, once committed, is applied to the engine
(Redis) with its idempotent `put_*` / `apply_grant` calls. If that apply fails, the organization is
marked dirty and the reconciler (`meter.admin.reconcile`) re-applies its whole state from
PostgreSQL; it also runs on start and periodically, so Redis converges to PostgreSQL whatever
happened in between.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import structlog

from meter.admin import queries as q
from meter.admin.clock import from_ms, now_ms, to_ms
from meter.admin.seats import seat_grant
from meter.auth import Scope, hash_token, new_key_id, new_token
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
from schemas import api

log = structlog.get_logger("meter.admin")

UNASSIGNED_NAME = "Unassigned"

SeatIssuer = Callable[
    [asyncpg.Connection, asyncpg.Record, asyncpg.Record, int], Awaitable[list[Grant]]
]
"""`(conn, org row joined with its plan, member row, now_ms) -> grants`: issues a member's seat
grants for the period containing `now_ms` inside the admin transaction, idempotently. The default
(no issuer) grants the plan's `seat_credits`, prorated, with no seat payment rules."""


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


def grant_of(row: asyncpg.Record) -> Grant:
    return Grant(
        org_id=row["org_id"],
        bucket_id=row["bucket_id"],
        kind=Kind(row["kind"]),
        amount=row["amount"],
        valid_from_ms=to_ms(row["valid_from"]),
        expires_at_ms=to_ms(row["expires_at"]),
        granted_at_ms=to_ms(row["granted_at"]),
        member_id=row["member_id"],
    )


def plan_out(row: asyncpg.Record) -> api.Plan:
    return api.Plan(
        plan_id=row["plan_id"],
        name=row["name"],
        period_kind=row["period_kind"],
        rolling_days=row["rolling_days"],
        seat_credits=format_credits(row["seat_credits"]),
        prorate=row["prorate"],
        limit_policy=row["limit_policy"],
        default_member_limit=_credits(row["default_member_limit"]),
        billing_groups_allowed=row["billing_groups_allowed"],
        on_demand_allowed=row["on_demand_allowed"],
        on_demand_member_cap=_credits(row["on_demand_member_cap"]),
        on_demand_price_micros=row["on_demand_price_micros"],
        on_demand_charge_threshold_micros=row["on_demand_charge_threshold_micros"],
        created_at=row["created_at"],
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
    )


def _is_unassigned(ident: str) -> bool:
    return ident == UNASSIGNED or ident.casefold() == UNASSIGNED_NAME.casefold()


class AdminService:
    """Administration of plans, organizations, members, groups, billing groups, grants, keys."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        engine: Engine,
        clock: Callable[[], int] = now_ms,
        seat_issuer: SeatIssuer | None = None,
    ) -> None:
        self.pool = pool
        self.engine = engine
        self.clock = clock
        self.seat_issuer = seat_issuer
        self.dirty: set[str] = set()
        """Organizations whose last Redis apply failed; the reconciler repairs them."""
        self.dirty_event = asyncio.Event()

    async def _apply(self, org_id: str, *calls: Callable[[], Awaitable[Any]]) -> None:
        """Run engine calls after a commit; on failure leave the repair to the reconciler."""
        try:
            for call in calls:
                await call()
        except Exception:
            log.warning(
                "redis apply failed, org marked for reconcile", org_id=org_id, exc_info=True
            )
            self.dirty.add(org_id)
            self.dirty_event.set()

    # -- plans ----------------------------------------------------------------------------

    async def create_plan(self, body: api.PlanCreate) -> api.Plan:
        with _sql_errors("plan"):
            row = await self.pool.fetchrow(
                q.INSERT_PLAN,
                body.plan_id,
                body.name,
                body.period_kind,
                body.rolling_days,
                body.seat_credits,
                body.prorate,
                body.limit_policy,
                body.default_member_limit,
                body.billing_groups_allowed,
                body.on_demand_allowed,
                body.on_demand_member_cap,
                body.on_demand_price_micros,
                body.on_demand_charge_threshold_micros,
            )
        return plan_out(row)

    async def get_plan(self, plan_id: str) -> api.Plan:
        row = await self.pool.fetchrow(q.SELECT_PLAN, plan_id)
        if row is None:
            raise NotFound("plan not found", code="plan_not_found")
        return plan_out(row)

    async def list_plans(self) -> api.PlanList:
        return api.PlanList(plans=[plan_out(r) for r in await self.pool.fetch(q.SELECT_PLANS)])

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
        await self._apply(org_id, lambda: self.engine.put_org(cfg))
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

    async def issue_seats(
        self, conn: asyncpg.Connection, org: asyncpg.Record, member: asyncpg.Record
    ) -> list[Grant]:
        """This period's seat grants of a member, stored in `conn`'s transaction (idempotent);
        returns the grants to apply to the engine. Uses `seat_issuer` when one is set."""
        if self.seat_issuer is not None:
            return await self.seat_issuer(conn, org, member, self.clock())
        if not member["seated"] or member["status"] != "active" or org["seat_credits"] == 0:
            return []
        now = self.clock()
        grant = seat_grant(
            org_config(org),
            member["member_id"],
            org["seat_credits"],
            org["prorate"],
            to_ms(member["seated_since"]) if member["seated_since"] else now,
            now,
        )
        if grant is None:
            return []
        await conn.execute(
            q.INSERT_GRANT_IF_ABSENT, grant.org_id, grant.bucket_id, grant.kind.value,
            grant.member_id, grant.amount, from_ms(grant.valid_from_ms),
            from_ms(grant.expires_at_ms), from_ms(grant.granted_at_ms), "seat",
        )  # fmt: skip
        row = await conn.fetchrow(q.SELECT_GRANT, grant.org_id, grant.bucket_id)
        return [grant_of(row)]

    async def _apply_member(self, org_id: str, member: asyncpg.Record, grants: list[Grant]) -> None:
        cfg = member_config(member)
        calls: list[Callable[[], Awaitable[Any]]] = [lambda: self.engine.put_member(cfg)]
        calls.extend(functools.partial(self.engine.apply_grant, g) for g in grants)
        await self._apply(org_id, *calls)

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
            grants = await self.issue_seats(conn, org, member)
        await self._apply_member(org_id, member, grants)
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
            grants = await self.issue_seats(conn, org, member)
        await self._apply_member(org_id, member, grants)
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
        """Void a settled event: the engine returns its credits; the request is recorded."""
        await self.org_exists(org_id)
        stored = await self.stored_settlement(org_id, key)
        result = await self.engine.void(org_id, key, self.clock(), stored)
        lines = [
            api.VoidLine(
                bucket_id=ln.bucket_id, kind=ln.kind.value, amount=format_credits(ln.amount)
            )
            for ln in result.returned
        ]
        returned = orjson.dumps(
            [
                {"bucket_id": ln.bucket_id, "kind": ln.kind.value, "amount": ln.amount}
                for ln in result.returned
            ]
        ).decode()
        now = from_ms(self.clock())
        await self.pool.execute(
            q.INSERT_VOID, org_id, key, now, result.voided, returned, requested_by
        )
        return api.VoidOut(
            key=key, voided=result.voided, returned=lines, duplicate=result.duplicate
        )

    async def stored_settlement(self, org_id: str, key: str) -> Settlement | None:
        """The settlement PostgreSQL holds for `key` (Redis forgets results once confirmed)."""
        row = await self.pool.fetchrow(q.SELECT_SETTLEMENT, key, org_id)
        if row is None:
            return None
        lines = await self.pool.fetch(q.SELECT_SETTLEMENT_LINES, key)
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
