"""`MeterClient`: the synchronous client (`httpx.Client`), and its `Hold`."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from meter_client.events import (
    DEFAULT_SOURCE,
    AttributeValue,
    Request,
    check_request,
    decision,
    dumps,
    event_request,
    headers,
    new_id,
    parse,
    release_request,
    reserve_request,
    transport_error,
    usage_event,
)
from meter_client.spool import Sender, Spool
from meter_client.types import (
    Amount,
    Decision,
    MeterError,
    MeterUnavailable,
    Policy,
    QuotaDenied,
    Recorded,
)

log = logging.getLogger("meter_client")

DEFAULT_TIMEOUT_S = 0.5
"""Per check, reservation and release: a quota answer later than this is no answer."""
DEFAULT_EVENT_TIMEOUT_S = 5.0
"""Per `POST /v1/events`: meter answers only after Kafka acknowledged the events."""
DEFAULT_TTL_MS = 60_000


class MeterClient:
    """A synchronous client of meter's quota and ingest routes.

    `policy` is what checks and reservations answer when meter cannot (no connection, a timeout,
    a 5xx or 429); each call may override it. With `spool` (a file path), `record` appends the
    event to a durable SQLite spool and a background thread sends it in batches (see
    `meter_client.spool`); without, `record` sends at once and raises when meter cannot take it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        policy: Policy,
        source: str = DEFAULT_SOURCE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        event_timeout_s: float = DEFAULT_EVENT_TIMEOUT_S,
        spool: str | Path | None = None,
        batch_size: int = 100,
        flush_interval_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy: Policy = policy
        self.source = source
        self.timeout_s = timeout_s
        self.event_timeout_s = event_timeout_s
        self._http = httpx.Client(base_url=base_url, headers=headers(api_key), transport=transport)
        self.spool: Spool | None = None
        self._sender: Sender | None = None
        if spool is not None:
            self.spool = Spool(spool)
            sender_http = httpx.Client(
                base_url=base_url, headers=headers(api_key), transport=transport
            )
            self._sender = Sender(
                self.spool,
                sender_http,
                batch_size=batch_size,
                interval_s=flush_interval_s,
                timeout_s=event_timeout_s,
            )
            self._sender_http = sender_http

    def _call(self, request: Request, timeout_s: float | None) -> Any:
        try:
            answer = self._http.request(
                request.method,
                request.path,
                content=request.body,
                headers={"content-type": request.content_type},
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return parse(answer.status_code, answer.content, answer.headers.get("x-request-id"))

    def check(
        self,
        org_id: str,
        member_id: str,
        credits: Amount,
        *,
        policy: Policy | None = None,
        timeout_s: float | None = None,
    ) -> Decision:
        """May `member_id` use `credits` now? Decided by meter, or by `policy` when it cannot."""
        request = check_request(org_id, member_id, credits)
        try:
            return decision(self._call(request, timeout_s))
        except MeterUnavailable as exc:
            return Decision.by_policy(policy or self.policy, exc)

    def reserve(
        self,
        org_id: str,
        member_id: str,
        credits: Amount,
        *,
        reservation_id: str | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
        policy: Policy | None = None,
        timeout_s: float | None = None,
    ) -> Decision:
        """Hold `credits` for `ttl_ms` if allowed (idempotent by `reservation_id`, generated when
        left out). Decided by policy when meter cannot answer; the reservation id is then the
        client's, so the usage event may still name it."""
        reservation_id = reservation_id or new_id()
        request = reserve_request(org_id, member_id, credits, reservation_id, ttl_ms)
        try:
            return decision(self._call(request, timeout_s))
        except MeterUnavailable as exc:
            return Decision.by_policy(policy or self.policy, exc, reservation_id)

    def release(self, org_id: str, reservation_id: str, *, timeout_s: float | None = None) -> bool:
        """Give a hold back; False when no live hold had this id. Raises `MeterUnavailable`
        when meter cannot answer (the hold then ends by itself at its expiry)."""
        body = self._call(release_request(org_id, reservation_id), timeout_s)
        return bool(body["released"])

    def record(
        self,
        org_id: str,
        member_id: str,
        credits: Amount,
        *,
        event_id: str | None = None,
        reservation_id: str | None = None,
        attributes: dict[str, AttributeValue] | None = None,
        time: datetime | None = None,
        timeout_s: float | None = None,
    ) -> Recorded:
        """Emit one usage event (a new uuid as its id unless `event_id` is given; give one
        derived from the request to make retries idempotent). With a spool the event is stored
        and sent in the background; otherwise it is sent now and raises if meter refuses it."""
        event = usage_event(
            org_id=org_id,
            member_id=member_id,
            credits=credits,
            source=self.source,
            event_id=event_id,
            reservation_id=reservation_id,
            attributes=attributes,
            time=time,
        )
        if self.spool is not None and self._sender is not None:
            self.spool.append(dumps(event))
            self._sender.wake_if_full()
            return Recorded(event["id"], self.source, spooled=True)
        self._call(event_request(event), timeout_s or self.event_timeout_s)
        return Recorded(event["id"], self.source)

    def hold(
        self,
        org_id: str,
        member_id: str,
        estimate: Amount,
        *,
        reservation_id: str | None = None,
        ttl_ms: int = DEFAULT_TTL_MS,
        policy: Policy | None = None,
    ) -> Hold:
        """A reservation of `estimate` as a context manager (see `Hold`)."""
        return Hold(self, org_id, member_id, estimate, reservation_id or new_id(), ttl_ms, policy)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every spooled event is acknowledged, at most `timeout_s`; True if so."""
        return True if self._sender is None else self._sender.flush(timeout_s)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is spooled (for at most `flush_timeout_s`), then close; events not yet
        acknowledged stay in the spool for the next client on the same file."""
        if self._sender is not None and self.spool is not None:
            self._sender.flush(flush_timeout_s)
            self._sender.stop()
            self._sender_http.close()
            self.spool.close()
        self._http.close()

    def __enter__(self) -> MeterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hold:
    """`with client.hold(org, member, estimate) as hold:` reserves `estimate` on entry (raising
    `QuotaDenied` if refused), `hold.record(actual)` records the usage naming the reservation
    (meter consumes the hold when it settles the event); leaving the block without recording,
    by an exception or not, releases the hold."""

    def __init__(
        self,
        client: MeterClient,
        org_id: str,
        member_id: str,
        estimate: Amount,
        reservation_id: str,
        ttl_ms: int,
        policy: Policy | None,
    ) -> None:
        self.client = client
        self.org_id = org_id
        self.member_id = member_id
        self.estimate = estimate
        self.reservation_id = reservation_id
        self.ttl_ms = ttl_ms
        self.policy = policy
        self.decision: Decision | None = None
        self.recorded: Recorded | None = None

    def __enter__(self) -> Hold:
        self.decision = self.client.reserve(
            self.org_id,
            self.member_id,
            self.estimate,
            reservation_id=self.reservation_id,
            ttl_ms=self.ttl_ms,
            policy=self.policy,
        )
        if not self.decision.allowed:
            raise QuotaDenied(self.decision)
        return self

    def record(
        self,
        credits: Amount,
        *,
        attributes: dict[str, AttributeValue] | None = None,
        event_id: str | None = None,
    ) -> Recorded:
        """Record the actual usage, naming the reservation; the event id defaults to the
        reservation id, so recording twice is counted once."""
        self.recorded = self.client.record(
            self.org_id,
            self.member_id,
            credits,
            event_id=event_id or self.reservation_id,
            reservation_id=self.reservation_id,
            attributes=attributes,
        )
        return self.recorded

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.recorded is not None:
            return
        try:
            self.client.release(self.org_id, self.reservation_id)
        except MeterError as error:
            log.warning("meter-client: hold %s not released: %s", self.reservation_id, error)
