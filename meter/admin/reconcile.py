"""Re-apply PostgreSQL's administration state to Redis, repairing any drift.

Every engine call used here is idempotent (`put_*` overwrite configuration, `apply_grant` adds a
bucket only if its id is new, `delete_billing_group` of a deleted group changes nothing), so
reconciling an organization that is already right changes nothing. It first issues the current
period's seats (`PlansStore.start_period`, idempotent): members whose seat could not be paid from
the seat-month balance are put to the engine unseated, so their checks say `no_seat`.

Only an organization whose state the engine holds is reconciled. One without state (Redis lost
it, or it was never applied) is not: `apply_grant` would add each bucket at its full amount and
give back the credits already drawn. It is rebuilt from PostgreSQL instead, under the rebuild
lock (`meter.rebuild.repair`), one organization at a time. Quarantined organizations
(`meter.quarantine`) are left alone.

`run_reconciler` runs supervised (`meter.supervise`): a PostgreSQL or Redis outage during a pass
is retried with backoff until the pass succeeds; the loop only ends when cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from enum import StrEnum

import structlog

from meter import quarantine
from meter.admin import queries as q
from meter.admin.clock import from_ms, to_ms
from meter.admin.service import AdminService, member_config, org_config
from meter.engine.redis import RedisEngine
from meter.engine.types import BillingGroupConfig
from meter.plans.store import grant_of
from meter.supervise import TRANSIENT, supervise, wait_event

log = structlog.get_logger("meter.admin.reconcile")

RECONCILE_INTERVAL_S = 60.0
BROKEN_RETRY_S = 30.0
"""How often an organization whose state fails to apply (not an outage) is tried again."""


class Reconciled(StrEnum):
    """What `reconcile_org` did."""

    APPLIED = "applied"
    UNKNOWN = "unknown"
    """Not an organization of PostgreSQL."""
    QUARANTINED = "quarantined"
    ABSENT = "absent"
    """The engine holds no state of it: left to `repair`."""


async def apply_org(admin: AdminService, org_id: str) -> bool:
    """Apply one organization's full configuration and live grants to the engine, whatever it
    holds (a rebuild does this on a cleared organization). False when the org does not exist."""
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
    # Only where its state is (or a rebuild is putting it back): a lost one stays absent.
    await engine.put_org(org_config(org), create=False)
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


async def reconcile_org(admin: AdminService, org_id: str) -> Reconciled:
    """Re-apply one organization's state when the engine holds it; see the module docstring
    for the others."""
    if await admin.pool.fetchval(q.SELECT_ORG_EXISTS, org_id) is None:
        return Reconciled.UNKNOWN
    if await quarantine.get(admin.pool, org_id) is not None:
        admin.dirty.discard(org_id)
        return Reconciled.QUARANTINED
    state = state_engine(admin)
    if state is not None and not await state.has_org(org_id):
        return Reconciled.ABSENT
    return Reconciled.APPLIED if await apply_org(admin, org_id) else Reconciled.UNKNOWN


def state_engine(admin: AdminService) -> RedisEngine | None:
    """The engine on a full Redis client (`AdminService.redis`, else the engine's own); None
    for an engine that is not on Redis."""
    if admin.redis is not None:
        if isinstance(admin.engine, RedisEngine):
            return RedisEngine(admin.redis, encoding=admin.engine.encoding)
        return RedisEngine(admin.redis)
    return admin.engine if isinstance(admin.engine, RedisEngine) else None


async def repair(admin: AdminService) -> bool:
    """Rebuild what the engine lost (`meter.rebuild.repair`). False when it failed on the data;
    an outage is raised."""
    from meter.rebuild import repair as rebuild_lost  # meter.rebuild builds on this module

    engine = state_engine(admin)
    if engine is None:
        return False
    try:
        await rebuild_lost(admin.pool, engine.client, engine)
    except TRANSIENT:
        raise  # an outage: the supervisor retries with backoff and reports it
    except Exception:
        log.warning("repair failed", exc_info=True)
        return False
    return True


async def reconcile_all(admin: AdminService) -> int:
    """Reconcile every organization; returns how many failed (they stay dirty). Organizations
    without state are rebuilt (`repair`). A server that
    cannot be reached stops the pass (raised): the other organizations would fail alike."""
    failed = 0
    absent: list[str] = []
    for row in await admin.pool.fetch(q.SELECT_ORG_IDS):
        org_id = row["org_id"]
        try:
            if await reconcile_org(admin, org_id) is Reconciled.ABSENT:
                absent.append(org_id)
        except TRANSIENT:
            admin.dirty.add(org_id)
            raise
        except Exception:
            failed += 1
            admin.dirty.add(org_id)
            log.warning("reconcile failed", org_id=org_id, exc_info=True)
    if absent and not await repair(admin):
        failed += len(absent)
        admin.dirty.update(absent)
    return failed


class Reconciler:
    """The reconciler's loop as steps for `meter.supervise.supervise`: each step waits until an
    organization is marked dirty or a full pass is due, then reconciles. An outage fails the
    step and leaves its work due (the full pass, the dirty organizations), so the supervisor's
    next step redoes it. An organization that fails on its own (its data, not a server) stays
    dirty and is tried again every `retry_s` without holding up the others or the loop."""

    def __init__(
        self,
        admin: AdminService,
        interval_s: float = RECONCILE_INTERVAL_S,
        retry_s: float = BROKEN_RETRY_S,
    ) -> None:
        self.admin = admin
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.next_full: float | None = None
        """Loop time of the next full pass (None: now)."""
        self.passes = 0
        """Full passes completed."""
        self.broken: dict[str, str] = {}
        """Organizations whose last reconcile failed on their own -> the error's class."""
        self._interrupted = False

    async def step(self) -> None:
        admin = self.admin
        loop = asyncio.get_running_loop()
        if self.next_full is not None and not self._interrupted:
            timeout = self.next_full - loop.time()
            if admin.dirty:
                timeout = min(timeout, self.retry_s)
            await wait_event(admin.dirty_event, timeout)
        admin.dirty_event.clear()
        self._interrupted = True  # until this step ends well: the next one starts at once
        if admin.repair_wanted:
            admin.repair_wanted = False
            try:
                await repair(admin)
            except BaseException:
                admin.repair_wanted = True
                raise
        if self.next_full is None or loop.time() >= self.next_full:
            await reconcile_all(admin)
            self.passes += 1
            self.next_full = loop.time() + self.interval_s
            self.broken = {o: e for o, e in self.broken.items() if o in admin.dirty}
            self._interrupted = False
            return
        absent = False
        for org_id in sorted(admin.dirty):
            try:
                absent |= await reconcile_org(admin, org_id) is Reconciled.ABSENT
            except TRANSIENT:
                raise
            except Exception as exc:
                known = self.broken.get(org_id) == type(exc).__name__
                self.broken[org_id] = type(exc).__name__
                log.warning(
                    "reconcile failed", org_id=org_id, error=type(exc).__name__, exc_info=not known
                )
            else:
                self.broken.pop(org_id, None)
        if absent:
            await repair(admin)
        self._interrupted = False


async def run_reconciler(admin: AdminService, interval_s: float = RECONCILE_INTERVAL_S) -> None:
    """Reconcile everything now and every `interval_s`; dirty organizations as soon as marked.
    Supervised: through an outage it retries with backoff (component `reconciler` in `HEALTH`
    while failing) and never stops before it is cancelled."""
    await supervise("reconciler", Reconciler(admin, interval_s).step)
