"""The pure stages of a settlement batch: decode records, split off dead letters, group by
organization, and sort engine results into what to store and what to dead-letter.

No I/O here; `consumers.settle` runs these between the Kafka, Redis and PostgreSQL calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from consumers.dlq import DeadLetter
from meter.engine.redis import EncodedResults, encode_settlement
from meter.engine.types import Settlement, UsageEvent
from meter.rating.book import CardBook
from meter.rating.dimensions import Usage
from meter.rating.rate import UNRATED, Unrated, rate
from meter.store import Encoded
from schemas.events import DecodedEvent, EventError

Decoder = Callable[[bytes, int], "DecodedEvent | EventError"]
"""`decoder(raw_value, now_ms)`: the decoded event of a record, or why it is invalid."""


class Record(Protocol):
    """The parts of an aiokafka `ConsumerRecord` the pipeline reads."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


EMPTY_VALUE = EventError("invalid_json", "record has no value")

Identity = tuple[str, str]
"""What settles once: (organization, event key). The same source + id in two organizations is
two events."""


def dead_letter(record: Record, code: str, message: str) -> DeadLetter:
    return DeadLetter(
        key=record.key,
        value=record.value,
        headers=list(record.headers),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=code,
        message=message,
    )


@dataclass
class Decoded:
    """A batch after decoding: valid events per organization (in partition order), the record
    of each event, and the records that are dead already."""

    by_org: dict[str, list[UsageEvent]] = field(default_factory=dict)
    records: dict[Identity, Record] = field(default_factory=dict)
    """Record of each event (organization, key): the first occurrence in the batch."""
    attributes: dict[Identity, str] = field(default_factory=dict)
    """Free attributes of each event (organization, key) that has any, as JSON text."""
    usages: dict[Identity, Usage] = field(default_factory=dict)
    """Usage of each event that carries it (first occurrence), until `rate_batch`."""
    ratings: dict[Identity, str] = field(default_factory=dict)
    """How each usage event was rated (`meter.rating.rate.Rating`), as JSON text."""
    dead: list[DeadLetter] = field(default_factory=list)
    events: int = 0


def decode_batch(
    records: Iterable[Record], decoder: Decoder, now_ms: int, into: Decoded | None = None
) -> Decoded:
    """Decode `records` into a new `Decoded`, or added to `into` (a batch decoded a slice at a
    time, in order, is the batch decoded at once)."""
    out = Decoded() if into is None else into
    by_org, keyed, attributes, dead = out.by_org, out.records, out.attributes, out.dead
    valid = 0
    for record in records:
        raw = record.value
        result = decoder(raw, now_ms) if raw is not None else EMPTY_VALUE
        if isinstance(result, DecodedEvent):
            event = result.event
            valid += 1
            org_id = event.org_id
            events = by_org.get(org_id)
            if events is None:
                events = by_org[org_id] = []
            events.append(event)
            identity = (org_id, event.key)
            if identity not in keyed:
                keyed[identity] = record
                if result.attributes:
                    attributes[identity] = orjson.dumps(result.attributes).decode()
                if result.usage is not None:
                    out.usages[identity] = result.usage
        else:
            dead.append(dead_letter(record, result.code, result.message))
    out.events += valid
    return out


def drop_keys(decoded: Decoded, keys: set[Identity]) -> int:
    """Remove events whose (organization, key) is in `keys` (already settled); returns how
    many."""
    if not keys:
        return 0
    dropped = 0
    for org_id in list(decoded.by_org):
        events = decoded.by_org[org_id]
        kept = [e for e in events if (org_id, e.key) not in keys]
        dropped += len(events) - len(kept)
        if kept:
            decoded.by_org[org_id] = kept
        else:
            del decoded.by_org[org_id]
    return dropped


def rate_batch(decoded: Decoded, book: CardBook, plans: Mapping[str, str], maximum: int) -> None:
    """Rate the usage events of `decoded` in place: each gets the credits of its card (the one
    in force for its organization and plan at its time), and its rating is kept for the
    settlement. What cannot be rated goes to the dead letters: `unrated` (no card, or the card
    cannot price it), `unknown_org`, or `invalid_credits` (more than `maximum`)."""
    usages = decoded.usages
    if not usages:
        return
    for org_id in sorted({o for o, _ in usages}):
        if org_id not in decoded.by_org:
            continue  # its events were settled already
        plan_id = plans.get(org_id)
        kept: list[UsageEvent] = []
        failed: dict[Identity, tuple[str, str]] = {}
        for ev in decoded.by_org[org_id]:
            identity = (org_id, ev.key)
            usage = usages.get(identity)
            if usage is None:
                kept.append(ev)
                continue
            why = failed.get(identity)
            if why is None:
                why = _rate_one(decoded, identity, ev, usage, book, plan_id, maximum, kept)
                if why is not None:
                    failed[identity] = why
                    decoded.dead.append(dead_letter(decoded.records[identity], *why))
        if kept:
            decoded.by_org[org_id] = kept
        else:
            del decoded.by_org[org_id]
    usages.clear()


def _rate_one(
    decoded: Decoded,
    identity: Identity,
    ev: UsageEvent,
    usage: Usage,
    book: CardBook,
    plan_id: str | None,
    maximum: int,
    kept: list[UsageEvent],
) -> tuple[str, str] | None:
    if plan_id is None:
        return "unknown_org", f"organization {ev.org_id!r} is not known"
    card = book.card_for(plan_id, ev.org_id, ev.time_ms)
    if card is None:
        return UNRATED, f"plan {plan_id!r} has no rate card in force at the event's time"
    try:
        rating = rate(usage, card)
    except Unrated as exc:
        return UNRATED, exc.message
    if rating.credits > maximum:
        return "invalid_credits", f"usage rates to more than the {maximum} micro-credits allowed"
    kept.append(
        UsageEvent(ev.key, ev.org_id, ev.member_id, rating.credits, ev.time_ms, ev.reservation_id)
    )
    decoded.ratings.setdefault(identity, rating.json_text())
    return None


Settled = tuple[list[UsageEvent], EncodedResults]
"""What one engine call settled: the events sent, and the engine's status and body per event."""


def encode_results(settlements: Sequence[Settlement]) -> EncodedResults:
    """Results of `Engine.settle_batch` in the form of `RedisEngine.settle_encoded`."""
    status = "".join(
        ["x" if s.reason is not None else "d" if s.duplicate else "n" for s in settlements]
    )
    bodies = [s.reason.value if s.reason is not None else encode_settlement(s) for s in settlements]
    return status, bodies


@dataclass
class Sorted:
    store: list[Encoded] = field(default_factory=list)
    keys_by_org: dict[str, list[str]] = field(default_factory=dict)
    settled: set[Identity] = field(default_factory=set)
    """(organization, key) of each settlement in `store`."""
    dead: list[DeadLetter] = field(default_factory=list)
    replayed: int = 0
    """Results the engine had stored before (`duplicate=True`) that are stored now."""


def sort_results(
    results: Mapping[str, Settled],
    records: Mapping[Identity, Record],
    attributes: Mapping[Identity, str | None],
    ratings: Mapping[Identity, str] | None = None,
    into: Sorted | None = None,
) -> Sorted:
    """Settlements to store (one per organization and key) and dead letters for those that did
    not settle; in a new `Sorted`, or added to `into` (a batch's organizations sorted a few at
    a time, each once, are the batch sorted at once)."""
    out = Sorted() if into is None else into
    store, settled = out.store, out.settled
    for org_id, (events, (status, bodies)) in results.items():
        keys: list[str] = []
        seen: set[str] = set()
        for ev, tag, body in zip(events, status, bodies, strict=True):
            key = ev.key
            if key in seen:
                continue
            seen.add(key)
            identity = (org_id, key)
            if tag == "x":
                why = _reason_message(body, org_id, ev.member_id)
                out.dead.append(dead_letter(records[identity], body, why))
                continue
            if tag == "d":
                out.replayed += 1
            store.append(
                (
                    key,
                    org_id,
                    body,
                    attributes.get(identity) if attributes else None,
                    ratings.get(identity) if ratings else None,
                )
            )
            settled.add(identity)
            keys.append(key)
        if keys:
            out.keys_by_org[org_id] = keys
    return out


ENGINE_INPUT = "engine_input"
"""Dead-letter reason of an event the engine refused as input (`EngineInputError`)."""


def refused_letters(
    refused: Mapping[Identity, str], records: Mapping[Identity, Record]
) -> list[DeadLetter]:
    """Dead letters for the events the engine refused ((organization, key) -> why), one each."""
    return [dead_letter(records[identity], ENGINE_INPUT, why) for identity, why in refused.items()]


def _reason_message(reason: str, org_id: str, member_id: str) -> str:
    if reason == "unknown_org":
        return f"organization {org_id!r} is not known"
    if reason == "unknown_member":
        return f"member {member_id!r} of organization {org_id!r} is not known"
    if reason == "org_quarantined":
        return f"organization {org_id!r} is quarantined (meter quarantine show {org_id})"
    if reason == "counter_overflow":
        return f"settling it would take a counter of organization {org_id!r} past 2**53 - 1"
    return f"cannot settle: {reason}"


def settle_waves(
    calls: Sequence[tuple[str, list[UsageEvent]]], size: int
) -> list[list[tuple[str, list[UsageEvent]]]]:
    """Consecutive organizations' engine calls in waves of about `size` events: a wave ends once
    it holds `size` events or more (an organization is never split)."""
    waves: list[list[tuple[str, list[UsageEvent]]]] = []
    wave: list[tuple[str, list[UsageEvent]]] = []
    events = 0
    for call in calls:
        wave.append(call)
        events += len(call[1])
        if events >= size:
            waves.append(wave)
            wave, events = [], 0
    if wave:
        waves.append(wave)
    return waves


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
