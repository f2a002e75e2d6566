"""The delivery worker: renders queued messages and sends them, signed, with retries.

Runs in the scheduler role (`meter.roles.scheduler_work`, under the scheduler lease) beside the
alert publisher, supervised (component `webhooks` in `HEALTH` while failing). Each pass:

1. renders the payload of new messages from their source rows with the encoders of the Kafka
   events (`meter.alerts.alert_event`, `meter.admin.scheduler.charge_cloudevent`) and, for dead
   letters, `meter.webhooks.dead_letters`;
2. claims due deliveries for its free slots (`FOR UPDATE SKIP LOCKED`, pushed `claim_s` into the
   future so a crash leaves them to be retried, never lost; at most `concurrency` attempts under
   way, `per_endpoint` to one endpoint, so a slow endpoint holds up no other), POSTs each as a
   task with the Standard Webhooks headers, and records the attempt: a 2xx ends it; anything
   else is retried after the next wait of the schedule (with jitter); when the schedule is
   exhausted the delivery is `failed` and its endpoint marked failing (`failing_since`) until a
   later delivery succeeds.

It wakes on `NOTIFY meter_webhooks` (sent by the triggers of migration 0018 and by the API) and
at the next due retry, or every `poll_s` at the latest. Delivery is at least once: the
`webhook-id` is the message's id on every attempt, so receivers deduplicate by it.
"""

from __future__ import annotations

import asyncio
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
from meter.supervise import Backoff, cancel_and_wait, close_quietly, supervise, wait_event
from meter.webhooks import rules
from meter.webhooks.dead_letters import SOURCE_PREFIX as DEAD_LETTER_SOURCE
from meter.webhooks.dead_letters import dead_letter_events
from meter.webhooks.targets import TargetForbidden, check_target, pin

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
      AND m.payload IS NOT NULL AND NOT d.endpoint_id = ANY($3::text[])
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
UNCLAIM = """
UPDATE webhook_deliveries SET next_attempt_at = now()
WHERE message_id = $1 AND endpoint_id = $2 AND state = 'pending'
"""
NEXT_DUE = """
SELECT extract(epoch FROM min(d.next_attempt_at) - now())::float8 FROM webhook_deliveries d
JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id
WHERE d.state = 'pending' AND e.enabled AND NOT d.endpoint_id = ANY($1::text[])
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
        concurrency: int = 32,
        per_endpoint: int = 8,
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
        self.concurrency = concurrency
        self.per_endpoint = per_endpoint
        self.delivered = 0
        self._inflight: dict[asyncio.Task[None], str] = {}
        """Attempts under way -> their endpoint."""
        self._failure: BaseException | None = None
        self._unrendered = True
        """Messages may await rendering (notified, polled, or a full batch last time)."""
        self._done: list[Outcome] = []
        """Attempts that ended, not recorded yet."""
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
        dead_ids: dict[int, str] = {}
        for r in rows:
            kind, _, rest = r["source"].partition(":")
            if kind == "alert":
                alert_ids[int(rest)] = r["message_id"]
            elif kind == "charge":
                charge_keys[(r["org_id"], rest.removeprefix(r["org_id"] + ":"))] = r["message_id"]
            elif kind + ":" == DEAD_LETTER_SOURCE:
                dead_ids[int(rest)] = r["message_id"]
        events: dict[str, dict[str, Any]] = {}
        if dead_ids:
            events.update(await dead_letter_events(conn, dead_ids))
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

    async def start_due(self) -> int:
        """Claim due deliveries for the free slots (at most `concurrency` attempts under way, at
        most `per_endpoint` to one endpoint, so a slow endpoint cannot hold up the others) and
        start each as a task; returns how many were started."""
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return 0
        pool = await self._open_pool()
        busy = self._busy()
        full = sorted(e for e, n in busy.items() if n >= self.per_endpoint)
        claimed = await pool.fetch(CLAIM, free, self.claim_s, full)
        started = 0
        for row in claimed:
            endpoint_id = row["endpoint_id"]
            if busy.get(endpoint_id, 0) >= self.per_endpoint:
                await pool.execute(UNCLAIM, row["message_id"], endpoint_id)
                continue
            busy[endpoint_id] = busy.get(endpoint_id, 0) + 1
            task = asyncio.create_task(self._attempt(row))
            self._inflight[task] = endpoint_id
            task.add_done_callback(self._finished)
            started += 1
        return started

    def _busy(self) -> dict[str, int]:
        """Endpoint -> attempts under way."""
        busy: dict[str, int] = {}
        for endpoint_id in self._inflight.values():
            busy[endpoint_id] = busy.get(endpoint_id, 0) + 1
        return busy

    async def _attempt(self, row: asyncpg.Record) -> None:
        outcome = await self._send(row)
        self._done.append(outcome)
        (log.debug if outcome.ok else log.info)(
            "webhook_attempt", message_id=outcome.message_id, endpoint_id=outcome.endpoint_id,
            attempt=outcome.attempt, status=outcome.status_code, error=outcome.error,
            ms=outcome.duration_ms,
        )  # fmt: skip

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # Left claimed: retried once the claim runs out. The loop reports the failure.
            self._failure = task.exception()
        self._wake.set()

    async def record_done(self) -> int:
        """Record the attempts that ended since the last call, in one transaction."""
        done, self._done = self._done, []
        if not done:
            return 0
        try:
            await self._record(await self._open_pool(), done)
        except BaseException:
            self._done[:0] = done  # recorded on the next pass
            raise
        self.delivered += sum(o.ok for o in done)
        return len(done)

    async def _send(self, row: asyncpg.Record) -> Outcome:
        attempt = row["attempts"] + 1
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            url: str = row["url"]
            addresses = await check_target(url, self.production)
            client = self._open_client()
            body = row["body"].encode()
            keys = [row["secret"]]
            if row["previous_secret"] is not None:
                keys.append(row["previous_secret"])
            headers = rules.headers(keys, row["message_id"], int(time.time()), body)
            extensions: dict[str, Any] = {}
            if addresses:
                url, host, extensions = pin(url, addresses[0])
                headers.update(host)
            request = client.build_request(
                "POST", url, content=body, headers=headers, extensions=extensions
            )
            response = await client.send(request, stream=True)
            status = response.status_code
            await response.aclose()
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
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        await self._listen()
        await self.record_done()
        rendered = 0
        if self._unrendered:
            self._unrendered = False  # a notification during the render sets it again
            try:
                rendered = await self.render_pending()
            except BaseException:
                self._unrendered = True
                raise
            if rendered >= self.batch:
                self._unrendered = True
        await self.start_due()
        if rendered >= self.batch:
            return
        pool = await self._open_pool()
        # Endpoints at their limit are waited for by their attempts' ends, not by polling.
        full = sorted(e for e, n in self._busy().items() if n >= self.per_endpoint)
        due_in: float | None = await pool.fetchval(NEXT_DUE, full)
        # At least a moment: a due delivery another worker holds must not make this one spin.
        wait = self.poll_s if due_in is None else min(self.poll_s, max(due_in, 0.01))
        if len(self._inflight) >= self.concurrency:
            wait = self.poll_s  # an attempt that ends wakes the loop
        if not await wait_event(self._wake, wait):
            self._unrendered = True  # a notification missed while reconnecting is caught here

    async def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=3)
        return self._pool

    def _open_client(self) -> httpx.AsyncClient:
        if self._client is None:
            # Pinned requests (production) go to an address with the host as TLS server name; a
            # pooled connection is keyed by the address alone, so none is kept for reuse there.
            keepalive = 0 if self.production else 20
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=keepalive),
            )
        return self._client

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(CHANNEL, self._notified)
        self._unrendered = True  # whatever was queued while not listening

    def _notified(self, *_: Any) -> None:
        self._unrendered = True
        self._wake.set()

    async def _reset(self) -> None:
        try:
            await cancel_and_wait(list(self._inflight))
            self._inflight.clear()
            # Attempts that ended stay in `_done` for the next pass to record; those cancelled
            # now stay claimed and are sent again once their claim runs out (at least once).
        finally:
            await self._close()

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        await close_quietly(listener, pool, *([client.aclose] if client is not None else []))


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
