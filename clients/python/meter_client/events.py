"""Usage events (CloudEvents 1.0, `meter.usage.v1`) and the requests both clients send.

The idempotency key of an event is its `source` and `id`: meter settles an event once however
often it arrives, so an event may be sent again whenever its acknowledgement is in doubt.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from meter_client.types import (
    Amount,
    Decision,
    MeterError,
    MeterUnavailable,
    amount_fields,
    error_from,
)

EVENT_TYPE = "meter.usage.v1"
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
DEFAULT_SOURCE = "//meter-client.python"
AttributeValue = str | bool | int | float


def new_id() -> str:
    """A fresh event or reservation id (a UUID4 in hex)."""
    return uuid.uuid4().hex


def rfc3339(instant: datetime | None = None) -> str:
    """`instant` (now when None) as RFC 3339 UTC to the millisecond."""
    moment = (instant or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usage_event(
    *,
    org_id: str,
    member_id: str,
    credits: Amount,
    source: str,
    event_id: str | None = None,
    reservation_id: str | None = None,
    attributes: dict[str, AttributeValue] | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """One usage event as a JSON-ready dict; credits as an exact decimal string, or usage."""
    data: dict[str, Any] = {"org_id": org_id, "member_id": member_id, **amount_fields(credits)}
    if reservation_id is not None:
        data["reservation_id"] = reservation_id
    if attributes:
        data["attributes"] = dict(attributes)
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE,
        "source": source,
        "id": event_id or new_id(),
        "time": rfc3339(time),
        "subject": member_id,
        "datacontenttype": "application/json",
        "data": data,
    }


def dumps(value: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, built alike for the sync and the async client."""

    method: str
    path: str
    body: bytes
    content_type: str = "application/json"


def check_request(org_id: str, member_id: str, credits: Amount) -> Request:
    """`POST /v1/check`."""
    body = {"org_id": org_id, "member_id": member_id, **amount_fields(credits)}
    return Request("POST", "/v1/check", dumps(body))


def reserve_request(
    org_id: str, member_id: str, credits: Amount, reservation_id: str, ttl_ms: int
) -> Request:
    """`POST /v1/reserve`."""
    body = {
        "org_id": org_id,
        "member_id": member_id,
        **amount_fields(credits),
        "ttl_ms": ttl_ms,
        "reservation_id": reservation_id,
    }
    return Request("POST", "/v1/reserve", dumps(body))


def release_request(org_id: str, reservation_id: str) -> Request:
    """`POST /v1/release`."""
    return Request(
        "POST", "/v1/release", dumps({"org_id": org_id, "reservation_id": reservation_id})
    )


def event_request(event: dict[str, Any]) -> Request:
    """`POST /v1/events` with one event."""
    return Request("POST", "/v1/events", dumps(event), SINGLE)


def batch_request(raw_events: list[bytes]) -> Request:
    """`POST /v1/events` with a batch of already encoded events."""
    return Request("POST", "/v1/events", b"[" + b",".join(raw_events) + b"]", BATCH)


def parse(status: int, content: bytes, request_id: str | None) -> Any:
    """The JSON body of a 2xx answer; the typed `MeterError` of any other."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    raise error_from(status, body, request_id)


def decision(body: Any) -> Decision:
    """A `Decision` from a check or reserve answer."""
    if not isinstance(body, dict):
        raise MeterError("unexpected_answer", "the answer is not a JSON object")
    return Decision.from_body(body)


def headers(api_key: str) -> dict[str, str]:
    """The headers every request carries."""
    return {"authorization": f"Bearer {api_key}", "user-agent": "meter-client-python/0.1"}


def transport_error(exc: httpx.TransportError) -> MeterUnavailable:
    """A `MeterUnavailable` for a request that got no answer."""
    if isinstance(exc, httpx.TimeoutException):
        code = "timeout"
    elif isinstance(exc, httpx.ConnectError):
        code = "connect_error"
    else:
        code = "transport_error"
    return MeterUnavailable(code, str(exc) or type(exc).__name__)
