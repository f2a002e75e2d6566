"""Usage events: the fast decoder and the pydantic model agree; bad usage is `invalid_usage`;
the exported JSON Schema describes `usage`."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from meter.rating.dimensions import DIMENSIONS, Usage
from meter.settings import Settings
from schemas.event_model import UsageEventModel, validate_event
from schemas.events import DecodedEvent, EventError, decode_event, encode_event
from schemas.export import USAGE_EVENT_SCHEMA

NOW = time.time_ns() // 1_000_000
SETTINGS = Settings()


def _raw(usage: Any = None, credits: Any = None, *, both: bool = False) -> bytes:
    raw = encode_event(event_id="e1", source="//t", org_id="o", member_id="m", credits=1,
                       time_ms=NOW)  # fmt: skip
    doc = orjson.loads(raw)
    if usage is not None:
        doc["data"]["usage"] = usage
        if not both:
            del doc["data"]["credits"]
    if credits is not None:
        doc["data"]["credits"] = credits
    return orjson.dumps(doc)


GOOD = [
    {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 0},
    {"model": "models/gemini-2.5-pro", "requests": 1},
    {"model": "claude-3-5-sonnet@20240620", "seconds": 2**53 - 1},
    {"model": "m", **{d: 1 for d in DIMENSIONS}},
]
BAD = [
    {"model": "gpt-4o"},
    {"input_tokens": 1},
    {"model": 5, "input_tokens": 1},
    {"model": "a b", "input_tokens": 1},
    {"model": "x" * 129, "input_tokens": 1},
    {"model": "m", "input_tokens": -1},
    {"model": "m", "input_tokens": 1.5},
    {"model": "m", "input_tokens": 1e3},
    {"model": "m", "input_tokens": "1"},
    {"model": "m", "input_tokens": True},
    {"model": "m", "input_tokens": 2**53},
    {"model": "m", "tokens": 1},
    [],
    "gpt-4o",
]


@pytest.mark.parametrize("usage", GOOD)
def test_good_usage_decodes_alike(usage: dict[str, Any]) -> None:
    raw = _raw(usage)
    fast, model = decode_event(raw, NOW, SETTINGS), validate_event(raw, NOW, SETTINGS)
    assert isinstance(fast, DecodedEvent) and fast == model
    assert fast.event.credits == 0
    assert fast.usage == Usage(usage["model"], {k: v for k, v in usage.items() if k != "model"})


@pytest.mark.parametrize("usage", BAD)
def test_bad_usage_is_refused_alike(usage: Any) -> None:
    raw = _raw(usage)
    fast, model = decode_event(raw, NOW, SETTINGS), validate_event(raw, NOW, SETTINGS)
    assert isinstance(fast, EventError) and isinstance(model, EventError)
    assert fast.code == model.code == "invalid_usage", (fast, model)


def test_credits_and_usage_together_or_neither() -> None:
    both = _raw(GOOD[0], both=True)
    neither = orjson.loads(_raw())
    del neither["data"]["credits"]
    for raw in (both, orjson.dumps(neither)):
        fast, model = decode_event(raw, NOW, SETTINGS), validate_event(raw, NOW, SETTINGS)
        assert isinstance(fast, EventError) and isinstance(model, EventError)
        assert fast.code == model.code == "invalid_schema"


def test_round_trip_and_schema() -> None:
    usage = Usage("gpt-4o", {"input_tokens": 3, "reasoning_tokens": 4})
    raw = encode_event(event_id="e", source="//t", org_id="o", member_id="m", usage=usage,
                       time_ms=NOW)  # fmt: skip
    decoded = decode_event(raw, NOW, SETTINGS)
    assert isinstance(decoded, DecodedEvent) and decoded.usage == usage
    exported = json.loads(USAGE_EVENT_SCHEMA.read_text())
    exported.pop("$schema", None)
    assert exported == json.loads(json.dumps(UsageEventModel.model_json_schema()))
    data = exported["$defs"]["UsageData"]
    assert set(data["properties"]["usage"]["anyOf"][0]["properties"]) == {"model", *DIMENSIONS}
