"""Re-apply PostgreSQL's administration state to Redis, repairing any drift.

Every engine call used here is idempotent (`put_*` overwrite configuration, `apply_grant` adds a
bucket only if its id is new, `delete_billing_group` of a deleted group changes nothing), so
reconciling an organization that is already right changes nothing. It first issues the current
period's seats (`PlansStore.start_period`, idempotent): members whose seat could not be paid from
the seat-month balance are put to the engine unseated, so their checks say `no_seat`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import structlog

from meter.admin import queries as q
from meter.admin.clock import from_ms, to_ms
from meter.admin.service import AdminService, member_config, org_config
from meter.engine.types import BillingGroupConfig
from meter.plans.store import grant_of

log = structlog.get_logger("meter.admin.reconcile")

RECONCILE_INTERVAL_S = 60.0


async def reconcile_org(admin: AdminService, org_id: str) -> bool:
    """Apply one organization's full state to the engine. False when the org does not exist."""
    if await admin.pool.fetchval(q.SELECT_ORG_EXISTS, org_id) is None:
        return False
    unpaid = set((await admin.plans.start_period(org_id, admin.clock())).unpaid)
    async with admin.pool.acquire() as conn, conn.transaction():
        org = await conn.fetchrow(q.SELECT_ORG_CONFIG, org_id)
        if org is None:
            return False
        members = await conn.fetch(q.SELECT_ALL_MEMBERS, org_id)
        groups = await conn.fetch(q.SELECT_BILLING_GROUPS, org_id)
        deleted = await conn.fetch(q.SELECT_DELETED_BILLING_GROUPS, org_id)
        grants = await conn.fetch(q.SELECT_LIVE_GRANTS, org_id, from_ms(admin.clock()))
        revoked = await conn.fetch(q.SELECT_REVOKED_GRANTS, org_id)
    engine = admin.engine
    await engine.put_org(org_config(org))
    for g in groups:
        await engine.put_billing_group(
            BillingGroupConfig(org_id, g["billing_group_id"], g["period_limit"])
        )
    for d in deleted:
        await engine.delete_billing_group(org_id, d["billing_group_id"])
    for m in members:
        if m["status"] == "active":
            cfg = member_config(m)
            paid = m["member_id"] not in unpaid
            await engine.put_member(replace(cfg, seated=cfg.seated and paid))
        else:
            await engine.remove_member(org_id, m["member_id"])
    for row in grants:
        await engine.apply_grant(grant_of(row))
    for row in revoked:
        await engine.revoke_grant(
            org_id, row["member_id"], row["bucket_id"], to_ms(row["revoked_at"])
        )
    admin.dirty.discard(org_id)
    return True


async def reconcile_all(admin: AdminService) -> int:
    """Reconcile every organization; returns how many failed (they stay dirty)."""
    failed = 0
    for row in await admin.pool.fetch(q.SELECT_ORG_IDS):
        org_id = row["org_id"]
        try:
            await reconcile_org(admin, org_id)
        except Exception:
            failed += 1
            admin.dirty.add(org_id)
            log.warning("reconcile failed", org_id=org_id, exc_info=True)
    return failed


async def run_reconciler(admin: AdminService, interval_s: float = RECONCILE_INTERVAL_S) -> None:
    """Reconcile everything now and every `interval_s`; dirty organizations as soon as marked."""
    await reconcile_all(admin)
    loop = asyncio.get_running_loop()
    next_full = loop.time() + interval_s
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(admin.dirty_event.wait(), max(0.0, next_full - loop.time()))
        admin.dirty_event.clear()
        if loop.time() >= next_full:
            await reconcile_all(admin)
            next_full = loop.time() + interval_s
            continue
        for org_id in sorted(admin.dirty):
            try:
                await reconcile_org(admin, org_id)
            except Exception:
                log.warning("reconcile failed", org_id=org_id, exc_info=True)
        if admin.dirty:
            # Still failing (Redis down?): retry after a pause, not in a tight loop.
            await asyncio.sleep(1.0)
            admin.dirty_event.set()
