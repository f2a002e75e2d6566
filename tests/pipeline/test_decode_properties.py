"""Properties of the event decoder and the consumer's decode stage: whatever the bytes, the
result is a decoded event or a typed error, and valid credits come back exactly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.stages import decode_batch
from meter.money import format_credits, parse_credits
from meter.settings import Settings
from schemas.events import (
    CODE_PRIORITY,
    DecodedEvent,
    EventError,
    decode_event,
    encode_event,
    format_time,
)

NOW = 1_780_000_000_000
LIMITS = Settings()
CODES = {*CODE_PRIORITY, "event_too_large"}


@dataclass(frozen=True)
class _Record:
    """A consumer record as the pipeline reads it (`consumers.stages.Record`)."""

    value: bytes | None
    offset: int = 0
    topic: str = "usage"
    partition: int = 0
    key: bytes | None = b"k"
    headers: Sequence[tuple[str, bytes]] = field(default_factory=list)


def _decoder(raw: bytes, now_ms: int) -> DecodedEvent | EventError:
    return decode_event(raw, now_ms, LIMITS)


def _check(results: Sequence[DecodedEvent | EventError]) -> None:
    for result in results:
        if isinstance(result, EventError):
            assert result.code in CODES, result
        else:
            assert isinstance(result, DecodedEvent)
            assert 0 <= result.event.credits <= LIMITS.max_event_credits


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.sampled_from(
    ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data", "x"]
)
_data_fields = st.sampled_from(
    ["org_id", "member_id", "credits", "reservation_id", "attributes", "extra"]
)


def _valid(credits: int = 1_500_000) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(
        encode_event(
            event_id="e-1",
            source="//s",
            org_id="org-1",
            member_id="m-1",
            credits=credits,
            time_ms=NOW - 1000,
        )
    )
    return doc


@given(st.lists(st.binary(max_size=300), max_size=8))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_give_typed_errors(values: list[bytes]) -> None:
    records = [_Record(v, offset=i) for i, v in enumerate(values)]
    decoded = decode_batch(records, _decoder, NOW)
    assert decoded.events + len(decoded.dead) == len(records)
    for letter in decoded.dead:
        assert letter.reason in CODES
    _check([_decoder(v, NOW) for v in values])


@given(
    st.lists(st.tuples(_fields, _json), max_size=4),
    st.lists(st.tuples(_data_fields, _json), max_size=4),
    st.lists(_fields, max_size=2),
)
@settings(max_examples=500, deadline=None)
def test_json_ish_cloudevents_give_typed_errors(
    top: list[tuple[str, Any]], data: list[tuple[str, Any]], removed: list[str]
) -> None:
    doc = _valid()
    for name, value in top:
        doc[name] = value
    if isinstance(doc.get("data"), dict):
        for name, value in data:
            doc["data"][name] = value
    for name in removed:
        doc.pop(name, None)
    raw = json.dumps(doc).encode()  # integers beyond 64 bits too
    result = _decoder(raw, NOW)
    _check([result])
    decoded = decode_batch([_Record(raw), _Record(None, offset=1)], _decoder, NOW)
    assert decoded.events + len(decoded.dead) == 2


@given(
    st.integers(0, LIMITS.max_event_credits),
    st.sampled_from(["string", "number", "padded"]),
    st.integers(0, NOW),
)
@settings(max_examples=400, deadline=None)
def test_valid_credits_round_trip_exactly(credits: int, form: str, time_ms: int) -> None:
    text = format_credits(credits)
    if form == "padded":
        # The same amount written with trailing zeros up to the 6 fractional digits allowed.
        whole, _, fraction = text.partition(".")
        text = f"{whole}.{fraction.ljust(6, '0')}"
    doc = _valid()
    doc["time"] = format_time(time_ms)
    credits_json: Any = orjson.Fragment(text.encode()) if form == "number" else text
    doc["data"]["credits"] = credits_json
    raw = orjson.dumps(doc)
    result = _decoder(raw, NOW)
    assert isinstance(result, DecodedEvent), result
    assert result.event.credits == credits == parse_credits(text)
    assert result.event.time_ms == time_ms
    (event,) = decode_batch([_Record(raw)], _decoder, NOW).by_org["org-1"]
    assert event.credits == credits
