"""The period scheduler: seats at each period start, expiry entries, charge-due events.

Nothing correct depends on it running: a period's seats are issued lazily by whoever needs them
first (`meter.admin.issuance`: the consumer before settling an organization's first events of a
period, an API process before its first check of one), and a threshold charge is recorded and
published as soon as the settlement that crossed it commits (`watch_charges`). The scheduler
issues the seats of organizations nobody used yet, records expiries, charges at period ends, and
is the fallback of the rest.

`PeriodScheduler.tick()` does, for every organization, at the admin service's clock:

1. when a new period began since the last tick: issue the period's seats (`refresh_seats`: seat
   and on-demand buckets, a package plan's pool, seat-months drawn from the balance; members whose
   seat cannot be paid are unseated in the engine, so checks say `no_seat`; idempotent, so seats
   a lazy issuer gave are not given again), and record the expired remainders of the period(s)
   that ended (`record_expiries`, from the engine's balances);
2. on plans with on-demand usage: record the charges now due (threshold crossed, or a period
   ended), then publish every unpublished charge on the billing topic (`meter.billing.v1`) as a
   CloudEvent keyed by organization, and mark it published;
3. for the organizations whose shared buckets expired since the previous tick (every
   organization on the first tick): evaluate the shared pool's level now and record a
   `shared_pool` crossing in the alerts outbox (`meter.alerts.shared_pool_after_expiry`), once
   per period and threshold as at a draw; the alert publisher sends it;
4. delete a bounded batch of dead letters, webhook messages and attempts older than 30 days
   (`meter.admin.retention`).

`watch_charges()` runs beside it: the settlement transaction whose on-demand totals cross a
plan's charge threshold sends `NOTIFY meter_charges` with the organization's id (trigger of
migration 0016); the watcher records that organization's charges due and publishes them at once
(and every `charges_poll_s` publishes what is left in the outbox). A notification missed while
its connection was down is caught by the next `tick()`.

Every step is idempotent, so a restart, a second scheduler or a missed wake-up only repeats work.
`run()` ticks at each organization's next period start and at least every `poll_s` seconds.
Both loops run supervised (`meter.supervise`): a pass that meets an outage stops and is retried
with backoff (the components `scheduler` and `charges` are reported in `HEALTH` while they
fail); an organization whose own work fails is logged and tried again at the next tick.
Time comes from `admin.clock`, so tests move it and call `tick()`.

It runs as the `meter scheduler` role (`run_component`, one active replica by lease), apart from
the API processes, which scale out.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]
import orjson
import structlog
from aiokafka import AIOKafkaProducer

from meter import alerts, kafka
from meter.admin import queries as q
from meter.admin import retention
from meter.admin.service import AdminService
from meter.engine.periods import period_index, period_start
from meter.engine.redis import RedisEngine
from meter.engine.types import Period
from meter.plans.charges import ChargeDue, charge_event
from meter.plans.expiry import ExpiryEntry
from meter.redis_client import connect as redis_connect
from meter.settings import Settings
from meter.store import ENSURE_PARTITIONS, ms_to_datetime
from meter.supervise import TRANSIENT, close_quietly, supervise, wait_event
from schemas.events import format_time

if TYPE_CHECKING:
    from meter.services import Services

log = structlog.get_logger("meter.admin.scheduler")

CHARGE_EVENT_TYPE = "meter.charge_due.v1"
CHARGE_SOURCE = "//meter/plans"
COMPONENT = "scheduler"
"""The scheduler's name in `meter.health.HEALTH`."""
CHARGES_COMPONENT = "charges"
"""The charge watcher's name in `meter.health.HEALTH`."""
CHARGES_CHANNEL = "meter_charges"
"""Notified (payload: organization id) by a settlement that crossed a charge threshold."""
MAX_CATCH_UP = 24
"""At most this many ended periods are looked back at when an organization is first seen or the
scheduler was away for long."""
PARTITIONS_EVERY_MS = 3_600_000
"""How often a tick makes sure of the monthly settlement partitions ahead."""

Publish = Callable[[str, bytes, bytes], Awaitable[None]]
"""`(topic, key, value)`: send one record and wait for the broker's acknowledgement."""


def charge_cloudevent(charge: ChargeDue) -> bytes:
    """A charge-due record as a CloudEvents 1.0 structured-mode JSON event."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "type": CHARGE_EVENT_TYPE,
            "source": CHARGE_SOURCE,
            "id": f"{charge.org_id}/{charge.charge_id}",
            "time": format_time(charge.due_at_ms),
            "subject": charge.org_id,
            "datacontenttype": "application/json",
            "data": charge_event(charge),
        }
    )


def kafka_publish(producer: AIOKafkaProducer) -> Publish:
    async def publish(topic: str, key: bytes, value: bytes) -> None:
        await producer.send_and_wait(topic, value=value, key=key)

    return publish


@dataclass
class TickReport:
    started: list[tuple[str, int]] = field(default_factory=list)
    """(organization, period start ms) of the periods started in this tick."""
    expiries: list[ExpiryEntry] = field(default_factory=list)
    charges: list[ChargeDue] = field(default_factory=list)
    """Charges that became due in this tick."""
    published: int = 0
    pool_alerts: int = 0
    """Shared-pool crossings recorded after expiries in this tick."""
    purged: retention.Purged | None = None
    """Old rows deleted in this tick (None when the purge failed)."""
    next_wake_ms: int | None = None
    """The soonest next period start of all organizations."""


class PeriodScheduler:
    def __init__(
        self,
        admin: AdminService,
        publish: Publish,
        topic: str,
        poll_s: float = 60.0,
        charges_poll_s: float = 2.0,
    ) -> None:
        self.admin = admin
        self.publish = publish
        self.topic = topic
        self.poll_s = poll_s
        self.charges_poll_s = charges_poll_s
        self._charge_orgs: set[str] = set()
        """Organizations notified since the watcher last looked."""
        self._charge_wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._publishing = asyncio.Lock()
        self.started: dict[str, int] = {}
        """Organization -> index of the last period this scheduler started."""
        self.pools_checked_ms: int | None = None
        self.partitions_checked_ms: int | None = None
        """When the monthly settlement partitions ahead were last made sure of (hourly)."""
        """When shared pools were last evaluated after expiries (None: not yet)."""

    async def tick(self) -> TickReport:
        report = TickReport()
        now = self.admin.clock()
        periods: list[tuple[str, int, int]] = []
        failed = False
        for row in await self.admin.pool.fetch(q.SELECT_ORG_IDS):
            org_id: str = row["org_id"]
            try:
                start, end = await self._org(org_id, report)
            except TRANSIENT:
                raise  # a server is away: the supervisor retries the whole tick
            except Exception:
                failed = True
                log.warning("period work failed", org_id=org_id, exc_info=True)
                continue
            periods.append((org_id, start, end))
        try:
            report.pool_alerts = await alerts.shared_pool_after_expiry(
                self.admin.pool, periods, now, self.pools_checked_ms
            )
        except TRANSIENT:
            raise
        except Exception:
            log.warning("shared pool evaluation failed", exc_info=True)
        else:
            if not failed:
                # An organization that failed is looked at again, over the longer interval.
                self.pools_checked_ms = now
        report.published = await self.publish_charges()
        checked = self.partitions_checked_ms
        if checked is None or now - checked >= PARTITIONS_EVERY_MS:
            # This month's and the next two months' partitions exist before a settlement needs
            # them (the store makes sure too, at a batch's first row of a new month).
            await self.admin.pool.execute(ENSURE_PARTITIONS, ms_to_datetime(now))
            self.partitions_checked_ms = now
        try:
            report.purged = await retention.purge(self.admin.pool)
        except TRANSIENT:
            raise
        except Exception:
            log.warning("retention purge failed", exc_info=True)
        return report

    async def _org(self, org_id: str, report: TickReport) -> tuple[int, int]:
        """The organization's period work; returns its current period (start, end ms)."""
        admin, plans = self.admin, self.admin.plans
        now = admin.clock()
        op = await plans.org_plan(org_id)
        k = period_index(op.org, now)
        last = self.started.get(org_id)
        if last != k:
            await admin.refresh_seats(org_id)
            report.started.append((org_id, period_start(op.org, k)))
            first = k - 1 if last is None or last >= k else max(last, k - MAX_CATCH_UP)
            if first < k:
                remaining = await admin.engine.balances(org_id, now)
                for i in range(first, k):
                    ended = Period(period_start(op.org, i), period_start(op.org, i + 1))
                    report.expiries.extend(await plans.record_expiries(org_id, ended, remaining))
            self.started[org_id] = k
        if op.plan.on_demand_allowed:
            report.charges.extend(await plans.due_charges(org_id, now))
        wake = period_start(op.org, k + 1)
        if report.next_wake_ms is None or wake < report.next_wake_ms:
            report.next_wake_ms = wake
        return period_start(op.org, k), wake

    async def publish_charges(self, batch: int = 100) -> int:
        """Send every unpublished charge to the billing topic; returns how many were sent."""
        plans, sent = self.admin.plans, 0
        async with self._publishing:
            while charges := await plans.unpublished_charges(batch):
                for charge in charges:
                    key, value = charge.org_id.encode(), charge_cloudevent(charge)
                    await self.publish(self.topic, key, value)
                    now = self.admin.clock()
                    await plans.mark_published(charge.org_id, [charge.charge_id], now)
                    sent += 1
        return sent

    async def watch_charges(self, dsn: str) -> None:
        """Record and publish the charges of organizations whose settlements crossed a charge
        threshold as soon as PostgreSQL notifies it (`meter_charges`), until cancelled.
        Supervised (component `charges` in `HEALTH` while failing)."""
        try:
            await supervise(
                CHARGES_COMPONENT,
                functools.partial(self._charges_step, dsn),
                on_failure=self._unlisten,
            )
        finally:
            await self._unlisten()

    async def _charges_step(self, dsn: str) -> None:
        if self._listener is None or self._listener.is_closed():
            # Held before it listens: a cancellation while it does leaves it to `_unlisten`.
            self._listener = await asyncpg.connect(dsn, timeout=10)
            await self._listener.add_listener(CHARGES_CHANNEL, self._charge_notified)
        await wait_event(self._charge_wake, self.charges_poll_s)
        self._charge_wake.clear()
        orgs, self._charge_orgs = self._charge_orgs, set()
        try:
            for org_id in sorted(orgs):
                await self.admin.plans.due_charges(org_id, self.admin.clock())
            await self.publish_charges()
        except BaseException:
            self._charge_orgs |= orgs  # looked at again on the next pass
            raise

    def _charge_notified(self, _conn: object, _pid: int, _channel: str, org_id: str) -> None:
        self._charge_orgs.add(org_id)
        self._charge_wake.set()

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        await close_quietly(listener, None)

    async def run(self) -> None:
        """Tick at each next period start and at least every `poll_s` seconds, until cancelled.
        Supervised (component `scheduler` in `HEALTH` while failing): a failed tick is retried
        with backoff."""
        await supervise(COMPONENT, self._step)

    async def _step(self) -> None:
        report = await self.tick()
        delay = self.poll_s
        if report.next_wake_ms is not None:
            delay = min(delay, max(0.0, (report.next_wake_ms - self.admin.clock()) / 1000))
        await asyncio.sleep(max(delay, 0.05))


class LazyProducer:
    """A Kafka producer started on first use, so the scheduler runs while Kafka is away (charges
    stay in the outbox until they can be sent)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                enable_idempotence=False,
                acks="all",
                **kafka.client_options(),
            )
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                raise
            self._producer = producer
        await self._producer.send_and_wait(topic, value=value, key=key)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def run_component(settings: Settings, services: Services) -> None:
    """`meter run` component: the period scheduler on the service's PostgreSQL, Redis, Kafka."""
    pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=4)
    redis = redis_connect(services.redis_url)
    producer = LazyProducer(services.kafka_bootstrap)
    try:
        engine = RedisEngine(redis, encoding=settings.member_encoding)
        await engine.load_scripts()
        admin = AdminService(pool, engine)
        await admin.install_presets()
        scheduler = PeriodScheduler(admin, producer.publish, settings.billing_topic)
        log.info("period scheduler started", topic=settings.billing_topic)
        await asyncio.gather(scheduler.run(), scheduler.watch_charges(services.postgres_dsn))
    finally:
        await close_quietly(None, pool, producer.stop, redis.aclose)
