"""Alerts on the alerts topic: limits crossed and shared pools running low.

Crossings are found by PostgreSQL itself, in the settlement transaction that changes the totals
(triggers of schemas/migrations/0007_alerts.sql, replaced in 0010), and recorded in the `alerts`
outbox with a UNIQUE (organization, subject kind, subject id, period start, threshold): each
fires once per period and threshold, whatever is retried, replayed or restarted. Thresholds are
the defaults in `alert_thresholds` (80% and 100% of member and billing-group limits, shared pool
at 20% left; `GET`/`PUT /v1/alert-thresholds`), or an organization's own lists
(`org_alert_thresholds`, 0010; `/v1/orgs/{org}/alert-thresholds`), both in
`meter.admin.alert_thresholds`.

A shared pool also runs low when a bucket expires, which no settlement sees: the period scheduler
calls `shared_pool_after_expiry` on each tick for the organizations whose shared buckets expired
since its previous tick (all of them on its first tick), through the same SQL function the
settlement trigger uses, so each crossing still fires once per period and threshold.

`AlertPublisher` sends unpublished rows to Kafka (key = org id) and marks them published. It
wakes on the triggers' `NOTIFY meter_alerts` and polls every few seconds as well. Publishing is
at least once (a crash between the broker's acknowledgement and the mark sends the alert again);
an alert's CloudEvents `id` is stable, so receivers deduplicate by it. Several publishers may
run at once: each claims rows with `FOR UPDATE SKIP LOCKED`. It runs supervised
(`meter.supervise`): through a PostgreSQL or Kafka outage, or an unexpected error, it drops its
connections and retries with backoff, reporting `alerts_publisher` in `HEALTH` meanwhile.

The event (CloudEvents 1.0, structured JSON) is described in the README ("Metrics and alerts").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from meter import kafka
from meter.metrics import REGISTRY
from meter.money import format_credits
from meter.supervise import Backoff, close_quietly, supervise, wait_event
from schemas.events import format_time

if TYPE_CHECKING:
    from meter.services import Services
    from meter.settings import Settings

log = structlog.get_logger("meter.alerts")

CHANNEL = "meter_alerts"
COMPONENT = "alerts_publisher"
"""The publisher's name in `meter.health.HEALTH`."""
SOURCE = "meter/alerts"

KINDS = {
    "member": "member_limit",
    "billing_group": "billing_group_limit",
    "shared_pool": "shared_pool_low",
    "quarantine": "org_quarantined",
}
"""Subject kind in the outbox -> `data.kind` of the event (its `type` is `meter.alert.<kind>`)."""

PUBLISHED = Counter(
    "meter_alerts_published_total",
    "Alerts sent to the alerts topic, by kind",
    ["kind"],
    registry=REGISTRY,
)

CLAIM = """
SELECT alert_id, org_id, subject_kind, subject_id, period_start, period_end, threshold, amount,
       reference, created_at, detail
FROM alerts WHERE published_at IS NULL
ORDER BY alert_id LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = "UPDATE alerts SET published_at = now() WHERE alert_id = ANY($1::bigint[])"

SHARED_POOL_AFTER_EXPIRY = """
SELECT alerts_shared_pool(
    coalesce(array_agg(o.org_id), '{}'), coalesce(array_agg(o.period_start), '{}'),
    coalesce(array_agg(o.period_end), '{}'), $4)
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS o(org_id, period_start, period_end)
WHERE $5::timestamptz IS NULL OR EXISTS (
    SELECT 1 FROM credit_grants g
    WHERE g.org_id = o.org_id AND g.expires_at > $5 AND g.expires_at <= $4 AND g.kind = 'shared'
)
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ms(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def _instant(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


async def shared_pool_after_expiry(
    pool: asyncpg.Pool,
    periods: list[tuple[str, int, int]],
    now_ms: int,
    since_ms: int | None,
) -> int:
    """Evaluate the shared pool of the organizations of `periods` (org id, current period start
    and end, ms) whose shared buckets expired in `(since_ms, now_ms]` (all of them when
    `since_ms` is None) at `now_ms`; record the crossings in the outbox. Returns how many were
    new."""
    if not periods:
        return 0
    orgs, starts, ends = zip(*periods, strict=True)
    crossed: int = await pool.fetchval(
        SHARED_POOL_AFTER_EXPIRY,
        list(orgs),
        [_instant(ms) for ms in starts],
        [_instant(ms) for ms in ends],
        _instant(now_ms),
        None if since_ms is None else _instant(since_ms),
    )
    return crossed


def alert_event(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The CloudEvent of one `alerts` row."""
    kind = KINDS[row["subject_kind"]]
    start_ms = _ms(row["period_start"])
    if row["subject_kind"] == "quarantine":
        return _quarantine_event(row, kind, start_ms)
    data: dict[str, Any] = {
        "org_id": row["org_id"],
        "kind": kind,
        "threshold_percent": row["threshold"],
        "period_start": format_time(start_ms),
        "period_end": format_time(_ms(row["period_end"])),
    }
    if row["subject_kind"] == "shared_pool":
        subject = row["org_id"]
        data["remaining"] = format_credits(row["amount"])
        data["granted"] = format_credits(row["reference"])
    else:
        subject = row["subject_id"]
        field = "member_id" if row["subject_kind"] == "member" else "billing_group_id"
        data[field] = subject
        data["used"] = format_credits(row["amount"])
        data["limit"] = format_credits(row["reference"])
    event = {
        "specversion": "1.0",
        "id": "/".join(
            (row["org_id"], kind, row["subject_id"], str(start_ms), str(row["threshold"]))
        ),
        "source": SOURCE,
        "type": f"meter.alert.{kind}",
        "subject": subject,
        "time": format_time(_ms(row["created_at"])),
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(event)


def _quarantine_event(row: asyncpg.Record | dict[str, Any], kind: str, since_ms: int) -> bytes:
    """An organization was quarantined (`meter.quarantine`): its id, reason code and since when
    (the `period_start` of its row). Its `id` names the quarantine's start, so a later
    quarantine of the same organization alerts again."""
    org_id = row["org_id"]
    event = {
        "specversion": "1.0",
        "id": f"{org_id}/{kind}//{since_ms}/0",
        "source": SOURCE,
        "type": f"meter.alert.{kind}",
        "subject": org_id,
        "time": format_time(_ms(row["created_at"])),
        "datacontenttype": "application/json",
        "data": {
            "org_id": org_id,
            "kind": kind,
            "reason": row["detail"],
            "since": format_time(since_ms),
        },
    }
    return orjson.dumps(event)


class AlertPublisher:
    """Sends the `alerts` outbox to `topic`. `run()` until cancelled."""

    def __init__(
        self,
        dsn: str,
        bootstrap: str,
        topic: str,
        *,
        poll_interval_s: float = 5.0,
        batch: int = 500,
        retry_max_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.topic = topic
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.retry_max_s = retry_max_s
        self.published = 0
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._listener: asyncpg.Connection | None = None

    async def publish_pending(self) -> int:
        """One round: claim up to `batch` unpublished alerts, send them, wait for the broker,
        mark them published. Returns how many were sent."""
        pool, producer = await self._open()
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM, self.batch)
            if not rows:
                return 0
            futures = [
                await producer.send(self.topic, value=alert_event(r), key=r["org_id"].encode())
                for r in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(MARK_PUBLISHED, [r["alert_id"] for r in rows])
        for r in rows:
            PUBLISHED.labels(KINDS[r["subject_kind"]]).inc()
        self.published += len(rows)
        log.info("alerts_published", count=len(rows))
        return len(rows)

    async def run(self) -> None:
        """Publish until cancelled, supervised (component `alerts_publisher` in `HEALTH` while
        failing): after a failure the connections are dropped and opened again after a backoff
        (from 0.1 s up to `retry_max_s`)."""
        backoff = Backoff(initial_s=0.1, max_s=self.retry_max_s)
        try:
            await supervise(COMPONENT, self._step, backoff=backoff, on_failure=self._reset)
        finally:
            await self._reset()

    async def _step(self) -> None:
        self._wake.clear()
        await self._listen()
        sent = await self.publish_pending()
        if sent >= self.batch:
            return
        await wait_event(self._wake, self.poll_interval_s)

    async def _open(self) -> tuple[asyncpg.Pool, AIOKafkaProducer]:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id="meter-alerts",
                enable_idempotence=False,
                acks="all",
                **kafka.client_options(),
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._pool, self._producer

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._notified)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _reset(self) -> None:
        listener, self._listener = self._listener, None
        producer, self._producer = self._producer, None
        pool, self._pool = self._pool, None
        await close_quietly(listener, pool, *([producer.stop] if producer is not None else []))


def publisher_for(settings: Settings) -> AlertPublisher:
    if settings.postgres_dsn is None or settings.kafka_bootstrap is None:
        raise ValueError("settings need postgres_dsn and kafka_bootstrap")
    return AlertPublisher(settings.postgres_dsn, settings.kafka_bootstrap, settings.alerts_topic)


@contextlib.asynccontextmanager
async def publishing(settings: Settings) -> AsyncIterator[AlertPublisher]:
    """While inside, an `AlertPublisher` for `settings` runs as a task (`meter consume`)."""
    publisher = publisher_for(settings)
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_component(settings: Settings, services: Services) -> None:
    """The alert publisher as a `meter run` component (`settings` name the servers)."""
    await publisher_for(settings).run()
