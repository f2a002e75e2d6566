"""`AsyncMeterClient`: the asyncio client (`httpx.AsyncClient`), and its `AsyncHold`.

The same calls, results, errors and policies as `MeterClient`. The spool's sender is the same
background thread (with a synchronous `httpx.Client` of its own), so spooled events keep moving
while the event loop is busy; appending to the spool is one short SQLite insert on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from meter_client.client import DEFAULT_EVENT_TIMEOUT_S, DEFAULT_TIMEOUT_S, DEFAULT_TTL_MS
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


class AsyncMeterClient:
    """An asyncio client of meter's quota and ingest routes; see `MeterClient` for the
    arguments, the policies and the spool."""

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy: Policy = policy
        self.source = source
        self.timeout_s = timeout_s
        self.event_timeout_s = event_timeout_s
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers(api_key), transport=transport
        )
        self.spool: Spool | None = None
        self._sender: Sender | None = None
        if spool is not None:
            self.spool = Spool(spool)
            self._sender_http = httpx.Client(base_url=base_url, headers=headers(api_key))
            self._sender = Sender(
                self.spool,
                self._sender_http,
                batch_size=batch_size,
                interval_s=flush_interval_s,
                timeout_s=event_timeout_s,
            )

    async def _call(self, request: Request, timeout_s: float | None) -> Any:
        try:
            answer = await self._http.request(
                request.method,
                request.path,
                content=request.body,
                headers={"content-type": request.content_type},
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return parse(answer.status_code, answer.content, answer.headers.get("x-request-id"))

    async def check(
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
            return decision(await self._call(request, timeout_s))
        except MeterUnavailable as exc:
            return Decision.by_policy(policy or self.policy, exc)

    async def reserve(
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
        """Hold `credits` for `ttl_ms` if allowed; see `MeterClient.reserve`."""
        reservation_id = reservation_id or new_id()
        request = reserve_request(org_id, member_id, credits, reservation_id, ttl_ms)
        try:
            return decision(await self._call(request, timeout_s))
        except MeterUnavailable as exc:
            return Decision.by_policy(policy or self.policy, exc, reservation_id)

    async def release(
        self, org_id: str, reservation_id: str, *, timeout_s: float | None = None
    ) -> bool:
        """Give a hold back; see `MeterClient.release`."""
        body = await self._call(release_request(org_id, reservation_id), timeout_s)
        return bool(body["released"])

    async def record(
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
        """Emit one usage event; see `MeterClient.record`."""
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
        await self._call(event_request(event), timeout_s or self.event_timeout_s)
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
    ) -> AsyncHold:
        """A reservation of `estimate` as an async context manager (see `AsyncHold`)."""
        return AsyncHold(
            self, org_id, member_id, estimate, reservation_id or new_id(), ttl_ms, policy
        )

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every spooled event is acknowledged, at most `timeout_s`; True if so."""
        if self._sender is None:
            return True
        return await asyncio.to_thread(self._sender.flush, timeout_s)

    async def aclose(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is spooled (for at most `flush_timeout_s`), then close."""
        if self._sender is not None and self.spool is not None:
            await asyncio.to_thread(self._sender.flush, flush_timeout_s)
            await asyncio.to_thread(self._sender.stop)
            self._sender_http.close()
            self.spool.close()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMeterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncHold:
    """`async with client.hold(org, member, estimate) as hold:`; see `Hold`."""

    def __init__(
        self,
        client: AsyncMeterClient,
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

    async def __aenter__(self) -> AsyncHold:
        self.decision = await self.client.reserve(
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

    async def record(
        self,
        credits: Amount,
        *,
        attributes: dict[str, AttributeValue] | None = None,
        event_id: str | None = None,
    ) -> Recorded:
        """Record the actual usage, naming the reservation; see `Hold.record`."""
        self.recorded = await self.client.record(
            self.org_id,
            self.member_id,
            credits,
            event_id=event_id or self.reservation_id,
            reservation_id=self.reservation_id,
            attributes=attributes,
        )
        return self.recorded

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.recorded is not None:
            return
        try:
            await self.client.release(self.org_id, self.reservation_id)
        except MeterError as error:
            log.warning("meter-client: hold %s not released: %s", self.reservation_id, error)
