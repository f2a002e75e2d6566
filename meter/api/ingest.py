"""`POST /v1/events`: usage events over HTTP, for products that do not speak Kafka.

One CloudEvent (`application/cloudevents+json`, or `application/json`) or a batch
(`application/cloudevents-batch+json`: a JSON array of at most `MAX_BATCH_EVENTS` events and
`MAX_BATCH_BYTES` bytes). Each event is validated by `schemas.events.decode_event`, the consumer's
own check, and must belong to the caller's organization. Valid events are produced to the usage
topic (key = org id) and the answer, 202, comes only after the broker acknowledged every one of
them. A single invalid event is a 422; in a batch, each event gets its own result and the valid
ones are produced.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiokafka.errors import KafkaError

from meter import metrics
from meter.admin.reads import unknown_members
from meter.api.http import Call, Response, json_response
from meter.auth import Scope
from meter.errors import InvalidInput, MalformedRequest, MeterError, Unavailable
from schemas.events import DecodedEvent, EventError, decode_event

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
CONTENT_TYPES = (SINGLE, BATCH, "application/json")
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 1024 * 1024
QUOTA = (Scope.ORG_ADMIN, Scope.PRODUCT)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decimal_literal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"cannot encode {type(value).__name__}")


def split_batch(body: bytes) -> list[bytes]:
    """The raw bytes of each event of a batch, with every number literal kept as written."""
    try:
        doc = json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"batch is not JSON: {exc}", code="invalid_json") from None
    if type(doc) is not list:
        raise InvalidInput("a batch is a JSON array of events", code="invalid_batch")
    if not doc:
        raise InvalidInput("a batch holds at least one event", code="invalid_batch")
    if len(doc) > MAX_BATCH_EVENTS:
        raise InvalidInput(f"a batch holds at most {MAX_BATCH_EVENTS} events", code="invalid_batch")
    out = []
    for item in doc:
        try:
            out.append(orjson.dumps(item, default=_decimal_literal))
        except (TypeError, orjson.JSONEncodeError):
            out.append(b"null" if item is None else b'"unencodable"')
    return out


def _result(index: int, raw: bytes, error: MeterError | EventError | None) -> dict[str, Any]:
    ident = source = None
    try:
        doc = orjson.loads(raw)
        if type(doc) is dict:
            ident = doc.get("id") if isinstance(doc.get("id"), str) else None
            source = doc.get("source") if isinstance(doc.get("source"), str) else None
    except orjson.JSONDecodeError:
        pass
    out: dict[str, Any] = {"index": index, "id": ident, "source": source}
    if error is None:
        out["accepted"] = True
        out["error"] = None
    else:
        out["accepted"] = False
        out["error"] = {"code": error.code, "message": error.message, "details": []}
    return out


VALIDATE_HEADER = "meter-validate"


async def check_members(call: Call, verdicts: list[DecodedEvent | EventError | MeterError]) -> None:
    """`?validate=members` (or header `meter-validate: members`): 422 `unknown_member`, nothing
    produced, when a valid event names an organization or member that does not exist; the
    details give each such event's `index`. Without it such events are accepted and
    dead-lettered by the consumer."""
    wanted = parse_qs(call.query.decode(errors="replace")).get("validate", [])
    if VALIDATE_HEADER in call.headers:
        wanted.append(call.headers[VALIDATE_HEADER])
    if not wanted:
        return
    if any(w != "members" for w in wanted):
        raise InvalidInput("validate takes only the value members", code="invalid_query")
    pairs = [
        (i, v.event.org_id, v.event.member_id)
        for i, v in enumerate(verdicts)
        if isinstance(v, DecodedEvent)
    ]
    unknown = await unknown_members(call.app.pool, pairs)
    if unknown:
        metrics.count_ingest("unknown_member", len(unknown))
        raise InvalidInput(
            f"{len(unknown)} event(s) name an organization or member that does not exist",
            code="unknown_member",
            details=unknown,
        )


async def ingest(call: Call) -> Response:
    app = call.app
    media = (call.headers.get("content-type") or SINGLE).split(";", 1)[0].strip().lower()
    batch = media == BATCH
    if not call.body:
        raise InvalidInput("empty body", code="invalid_input")
    raws = split_batch(call.body) if batch else [call.body]
    now = app.clock()
    verdicts: list[DecodedEvent | EventError | MeterError] = []
    for raw in raws:
        decoded = decode_event(raw, now, app.settings)
        if isinstance(decoded, DecodedEvent):
            try:
                call.who.require_org(decoded.event.org_id, *QUOTA)
            except MeterError as exc:
                verdicts.append(exc)
                continue
        verdicts.append(decoded)
    for verdict in verdicts:
        if not isinstance(verdict, DecodedEvent):
            metrics.count_ingest(verdict.code)
    if call.query or VALIDATE_HEADER in call.headers:
        await check_members(call, verdicts)
    if not batch:
        verdict = verdicts[0]
        if isinstance(verdict, MeterError):
            raise verdict
        if isinstance(verdict, EventError):
            raise InvalidInput(verdict.message, code=verdict.code)
    to_send = [
        (raw, v.event.org_id) for raw, v in zip(raws, verdicts, strict=True)
        if isinstance(v, DecodedEvent)
    ]  # fmt: skip
    if to_send:
        topic = app.settings.usage_topic
        try:
            async with asyncio.timeout(app.settings.produce_timeout_s):
                producer = await app.producer()
                futures = [
                    await producer.send(topic, value=raw, key=org_id.encode())
                    for raw, org_id in to_send
                ]
                await asyncio.gather(*futures)
        except (KafkaError, OSError) as exc:  # OSError: asyncio's timeouts included
            metrics.count_ingest("unavailable", len(to_send))
            raise Unavailable(f"the broker did not acknowledge the events: {exc}") from exc
        metrics.count_ingest("accepted", len(to_send))
    results = [
        _result(i, raw, None if isinstance(v, DecodedEvent) else v)
        for i, (raw, v) in enumerate(zip(raws, verdicts, strict=True))
    ]
    accepted = sum(1 for r in results if r["accepted"])
    return json_response(
        {"accepted": accepted, "rejected": len(results) - accepted, "results": results}, 202
    )
