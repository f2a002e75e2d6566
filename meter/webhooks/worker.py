"""The delivery worker: renders queued messages and sends them, signed, with retries.

Runs in the scheduler role (`meter.roles.scheduler_work`, under the scheduler lease) beside the
alert publisher, supervised (component `webhooks` in `HEALTH` while failing). Each pass:

1. renders the payload of new messages from their source rows with the encoders of the Kafka
   events (`meter.alerts.alert_event`, `meter.admin.scheduler.charge_cloudevent`);
2. claims due deliveries (`FOR UPDATE SKIP LOCKED`, pushed `claim_s` into the future so a crash
   leaves them to be retried, never lost), POSTs each with the Standard Webhooks headers, and
   records the attempt: a 2xx ends it; anything else is retried after the next wait of the
   schedule (with jitter); when the schedule is exhausted the delivery is `failed` and its
   endpoint marked failing (`failing_since`) until a later delivery succeeds.

It wakes on `NOTIFY meter_webhooks` (sent by the triggers of migration 0018 and by the API) and
at the next due retry, or every `poll_s` at the latest. Delivery is at least once: the
`webhook-id` is the message's id on every attempt, so receivers deduplicate by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import orjson
import structlog
from prometheus_client import Counter

from meter import alerts
from meter.metrics import REGISTRY
from meter.supervise import Backoff, supervise, wait_event
from meter.webhooks import rules
from meter.webhooks.targets import TargetForbidden, check_target

if TYPE_CHECKING:
    from meter.services import Services
    from meter.settings import Settings

log = structlog.get_logger("meter.webhooks")

CHANNEL = "meter_webhooks"
COMPONENT = "webhooks"
"""The worker's name in `meter.health.HEALTH`."""
USER_AGENT = "meter-webhooks/1"
MAX_ERROR = 500

ATTEMPTS = Counter(
    "meter_webhook_attempts_total",
    "Webhook delivery attempts, by outcome",
    ["outcome"],
    registry=REGISTRY,
)

SELECT_UNRENDERED = """
SELECT message_id, org_id, event_type, source FROM webhook_messages
WHERE payload IS NULL ORDER BY created_at LIMIT $1
FOR UPDATE SKIP LOCKED
"""
SELECT_ALERTS = "SELECT * FROM alerts WHERE alert_id = ANY($1::bigint[])"
SELECT_CHARGES = """
SELECT c.* FROM charges_due c
JOIN unnest($1::text[], $2::text[]) AS k(org_id, charge_id)
  ON c.org_id = k.org_id AND c.charge_id = k.charge_id
"""
SET_PAYLOAD = "UPDATE webhook_messages SET payload = $2::jsonb WHERE message_id = $1"
CLAIM = """
WITH due AS (
    SELECT d.message_id, d.endpoint_id FROM webhook_deliveries d
    JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id
    JOIN webhook_messages m ON m.message_id = d.message_id
    WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND e.enabled
      AND m.payload IS NOT NULL
    ORDER BY d.next_attempt_at LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
FROM due, webhook_messages m, webhook_endpoints e
WHERE d.message_id = due.message_id AND d.endpoint_id = due.endpoint_id
  AND m.message_id = d.message_id AND e.endpoint_id = d.endpoint_id
RETURNING d.message_id, d.endpoint_id, d.attempts, m.payload::text AS body, e.url, e.secret,
          CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END AS previous_secret
"""
NEXT_DUE = """
SELECT extract(epoch FROM min(d.next_attempt_at) - now())::float8 FROM webhook_deliveries d
JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id
WHERE d.state = 'pending' AND e.enabled
"""
INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (message_id, endpoint_id, attempt, status_code, error, duration_ms,
                              next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::float8 IS NULL THEN NULL
                                     ELSE now() + make_interval(secs => $7) END)
"""
UPDATE_DELIVERY = """
UPDATE webhook_deliveries SET state = $3, attempts = $4,
    next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $5) END
WHERE message_id = $1 AND endpoint_id = $2
"""
ENDPOINT_OK = """
UPDATE webhook_endpoints SET failing_since = NULL
WHERE endpoint_id = ANY($1::text[]) AND failing_since IS NOT NULL
"""
ENDPOINT_FAILING = """
UPDATE webhook_endpoints SET failing_since = now()
WHERE endpoint_id = ANY($1::text[]) AND failing_since IS NULL
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: str
    endpoint_id: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _payload(event_type: str, cloudevent: dict[str, Any] | None) -> dict[str, Any]:
    """The webhook body: Standard Webhooks' `type`, `timestamp`, `data`, and the `event_id` of the
    same event on Kafka (None when the source row is gone)."""
    if cloudevent is None:
        return {"type": event_type, "timestamp": None, "event_id": None, "data": None}
    return {
        "type": event_type,
        "timestamp": cloudevent["time"],
        "event_id": cloudevent["id"],
        "data": cloudevent["data"],
    }


class WebhookWorker:
    """Delivers the webhook outbox of the database at `dsn`. `run()` until cancelled."""

    def __init__(
        self,
        dsn: str,
        *,
        production: bool,
        schedule: Sequence[float] = rules.DEFAULT_SCHEDULE_S,
        timeout_s: float = 10.0,
        poll_s: float = 5.0,
        batch: int = 100,
        concurrency: int = 16,
        claim_s: float | None = None,
        retry_max_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.production = production
        self.schedule = tuple(schedule)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.batch = batch
        self.claim_s = claim_s if claim_s is not None else 3 * timeout_s + 30.0
        self.retry_max_s = retry_max_s
        self.delivered = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._client: httpx.AsyncClient | None = None

    # -- rendering ------------------------------------------------------------------------------

    async def render_pending(self) -> int:
        """Fill in the payload of messages queued by the triggers; returns how many."""
        pool = await self._open_pool()
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SELECT_UNRENDERED, self.batch)
            if not rows:
                return 0
            events = await self._source_events(conn, rows)
            await conn.executemany(
                SET_PAYLOAD,
                [
                    (
                        r["message_id"],
                        orjson.dumps(
                            _payload(r["event_type"], events.get(r["message_id"]))
                        ).decode(),
                    )
                    for r in rows
                ],
            )
        return len(rows)

    async def _source_events(
        self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]
    ) -> dict[str, dict[str, Any]]:
        """message id -> the CloudEvent of its source row, for the rows still there."""
        from meter.admin.scheduler import charge_cloudevent
        from meter.plans.store import charge_of

        alert_ids: dict[int, str] = {}
        charge_keys: dict[tuple[str, str], str] = {}
        for r in rows:
            kind, _, rest = r["source"].partition(":")
            if kind == "alert":
                alert_ids[int(rest)] = r["message_id"]
            elif kind == "charge":
                charge_keys[(r["org_id"], rest.removeprefix(r["org_id"] + ":"))] = r["message_id"]
        events: dict[str, dict[str, Any]] = {}
        if alert_ids:
            for a in await conn.fetch(SELECT_ALERTS, list(alert_ids)):
                events[alert_ids[a["alert_id"]]] = orjson.loads(alerts.alert_event(a))
        if charge_keys:
            orgs, ids = zip(*charge_keys, strict=True)
            for c in await conn.fetch(SELECT_CHARGES, list(orgs), list(ids)):
                message_id = charge_keys[(c["org_id"], c["charge_id"])]
                events[message_id] = orjson.loads(charge_cloudevent(charge_of(c)))
        return events

    # -- delivery -------------------------------------------------------------------------------

    async def deliver_due(self) -> list[Outcome]:
        """One round: claim up to `batch` due deliveries, send them, record every attempt."""
        pool = await self._open_pool()
        claimed = await pool.fetch(CLAIM, self.batch, self.claim_s)
        if not claimed:
            return []
        outcomes = await asyncio.gather(*(self._send(row) for row in claimed))
        await self._record(pool, outcomes)
        self.delivered += sum(o.ok for o in outcomes)
        log.info(
            "webhooks_delivered",
            attempts=len(outcomes),
            succeeded=sum(o.ok for o in outcomes),
        )
        return list(outcomes)

    async def _send(self, row: asyncpg.Record) -> Outcome:
        attempt = row["attempts"] + 1
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        async with self._limit:
            try:
                await check_target(row["url"], self.production)
                client = self._open_client()
                body = row["body"].encode()
                keys = [row["secret"]]
                if row["previous_secret"] is not None:
                    keys.append(row["previous_secret"])
                headers = rules.headers(keys, row["message_id"], int(time.time()), body)
                async with client.stream("POST", row["url"], content=body, headers=headers) as r:
                    status = r.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except TargetForbidden as exc:
                error = f"{exc.code}: {exc.message}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = int((time.monotonic() - started) * 1000)
        return Outcome(
            row["message_id"], row["endpoint_id"], attempt, status, error and error[:MAX_ERROR],
            duration_ms,
        )  # fmt: skip

    async def _record(self, pool: asyncpg.Pool, outcomes: Sequence[Outcome]) -> None:
        attempts, deliveries, ok, exhausted = [], [], [], []
        for o in outcomes:
            delay = None if o.ok else rules.retry_delay(o.attempt, self.schedule)
            state = "succeeded" if o.ok else ("pending" if delay is not None else "failed")
            attempts.append(
                (o.message_id, o.endpoint_id, o.attempt, o.status_code, o.error, o.duration_ms,
                 delay)
            )  # fmt: skip
            deliveries.append((o.message_id, o.endpoint_id, state, o.attempt, delay))
            ATTEMPTS.labels(state).inc()
            if o.ok:
                ok.append(o.endpoint_id)
            elif delay is None:
                exhausted.append(o.endpoint_id)
                log.warning(
                    "webhook_failed", message_id=o.message_id, endpoint_id=o.endpoint_id,
                    attempts=o.attempt, error=o.error,
                )  # fmt: skip
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(INSERT_ATTEMPT, attempts)
            await conn.executemany(UPDATE_DELIVERY, deliveries)
            if ok:
                await conn.execute(ENDPOINT_OK, sorted(set(ok)))
            if exhausted:
                await conn.execute(ENDPOINT_FAILING, sorted(set(exhausted)))

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled, supervised (component `webhooks` in `HEALTH` while failing)."""
        backoff = Backoff(initial_s=0.1, max_s=self.retry_max_s)
        try:
            await supervise(COMPONENT, self._step, backoff=backoff, on_failure=self._reset)
        finally:
            await self._reset()

    async def _step(self) -> None:
        self._wake.clear()
        await self._listen()
        rendered = await self.render_pending()
        sent = await self.deliver_due()
        if rendered >= self.batch or len(sent) >= self.batch:
            return
        pool = await self._open_pool()
        due_in: float | None = await pool.fetchval(NEXT_DUE)
        # At least a moment: a due delivery another worker holds must not make this one spin.
        wait = self.poll_s if due_in is None else min(self.poll_s, max(due_in, 0.01))
        await wait_event(self._wake, wait)

    async def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        return self._pool

    def _open_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
                trust_env=False,
            )
        return self._client

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._notified)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _reset(self) -> None:
        listener, self._listener = self._listener, None
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()


def worker_for(settings: Settings, dsn: str) -> WebhookWorker:
    return WebhookWorker(
        dsn,
        production=settings.env == "production",
        schedule=settings.webhook_retry_schedule_s,
        timeout_s=settings.webhook_timeout_s,
        poll_s=settings.webhook_poll_s,
    )


async def run_component(settings: Settings, services: Services) -> None:
    """The webhook worker as a scheduler-role component."""
    await worker_for(settings, services.postgres_dsn).run()
