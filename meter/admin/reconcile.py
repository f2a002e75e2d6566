"""Re-apply PostgreSQL's administration state to Redis, repairing any drift.

Every engine call used here is idempotent (`put_*` overwrite configuration, `apply_grant` adds a
bucket only if its id is new, `delete_billing_group` of a deleted group changes nothing), so
reconciling an organization that is already right changes nothing. It first issues the current
period's seats (`PlansStore.start_period`, idempotent): members whose seat could not be paid from
the seat-month balance are put to the engine unseated, so their checks say `no_seat`.

`run_reconciler` runs supervised (`meter.supervise`): a PostgreSQL or Redis outage during a pass
is retried with backoff until the pass succeeds; the loop only ends when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import structlog

from meter.admin import queries as q
from meter.admin.clock import from_ms
from meter.admin.service import AdminService, member_config, org_config
from meter.engine.types import BillingGroupConfig
from meter.plans.store import grant_of
from meter.supervise import TRANSIENT, supervise

log = structlog.get_logger("meter.admin.reconcile")

RECONCILE_INTERVAL_S = 60.0
BROKEN_RETRY_S = 30.0
"""How often an organization whose state fails to apply (not an outage) is tried again."""


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
    admin.dirty.discard(org_id)
    return True


async def reconcile_all(admin: AdminService) -> int:
    """Reconcile every organization; returns how many failed (they stay dirty). A server that
    cannot be reached stops the pass (raised): the other organizations would fail alike."""
    failed = 0
    for row in await admin.pool.fetch(q.SELECT_ORG_IDS):
        org_id = row["org_id"]
        try:
            await reconcile_org(admin, org_id)
        except TRANSIENT:
            admin.dirty.add(org_id)
            raise
        except Exception:
            failed += 1
            admin.dirty.add(org_id)
            log.warning("reconcile failed", org_id=org_id, exc_info=True)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(admin.dirty_event.wait(), max(0.0, timeout))
        admin.dirty_event.clear()
        self._interrupted = True  # until this step ends well: the next one starts at once
        if self.next_full is None or loop.time() >= self.next_full:
            await reconcile_all(admin)
            self.passes += 1
            self.next_full = loop.time() + self.interval_s
            self.broken = {o: e for o, e in self.broken.items() if o in admin.dirty}
            self._interrupted = False
            return
        for org_id in sorted(admin.dirty):
            try:
                await reconcile_org(admin, org_id)
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
        self._interrupted = False


async def run_reconciler(admin: AdminService, interval_s: float = RECONCILE_INTERVAL_S) -> None:
    """Reconcile everything now and every `interval_s`; dirty organizations as soon as marked.
    Supervised: through an outage it retries with backoff (component `reconciler` in `HEALTH`
    while failing) and never stops before it is cancelled."""
    await supervise("reconciler", Reconciler(admin, interval_s).step)
