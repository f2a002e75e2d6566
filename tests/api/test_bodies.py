"""The hand-written quota body parsers give exactly the pydantic models' verdicts and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.api import bodies
from meter.api.http import parse_body
from meter.errors import MeterError
from schemas import api


def _model_check(body: bytes) -> tuple[Any, ...]:
    m = parse_body(api.CheckRequest, body)
    return m.org_id, m.member_id, m.credits


def _model_reserve(body: bytes) -> tuple[Any, ...]:
    m = parse_body(api.ReserveRequest, body)
    return m.org_id, m.member_id, m.credits, m.ttl_ms, m.reservation_id


def _model_release(body: bytes) -> tuple[Any, ...]:
    m = parse_body(api.ReleaseRequest, body)
    return m.org_id, m.reservation_id


PAIRS: list[tuple[Callable[[bytes], tuple[Any, ...]], Callable[[bytes], tuple[Any, ...]]]] = [
    (bodies.check_body, _model_check),
    (bodies.reserve_body, _model_reserve),
    (bodies.release_body, _model_release),
]


def _outcome(parse: Callable[[bytes], tuple[Any, ...]], body: bytes) -> object:
    try:
        return ("ok", parse(body))
    except MeterError as exc:
        return ("error", type(exc), exc.code, exc.message, exc.details)


def _same(body: bytes) -> list[object]:
    outcomes = []
    for fast, model in PAIRS:
        got, want = _outcome(fast, body), _outcome(model, body)
        assert got == want, body
        outcomes.append(got[0])  # type: ignore[index]
    return outcomes


GOOD: list[dict[str, Any]] = [
    {"org_id": "o", "member_id": "m", "credits": "0.5"},
    {"org_id": "org-1.a:b@c_d", "member_id": "M" * 64, "credits": 3},
    {"org_id": "o", "member_id": "m", "credits": "0"},
    {"org_id": "o", "member_id": "m", "credits": "1.000000"},
    {"org_id": "o", "member_id": "m", "credits": "9007199254.740991"},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": 1},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": 900_000},
    {"org_id": "o", "member_id": "m", "credits": "1", "reservation_id": "r-1"},
    {"org_id": "o", "member_id": "m", "credits": "1", "reservation_id": None},
    {"org_id": "o", "reservation_id": "r1"},
]

BAD: list[Any] = [
    {"org_id": "o", "member_id": "m", "credits": "0.0000001"},
    {"org_id": "o", "member_id": "m", "credits": "-1"},
    {"org_id": "o", "member_id": "m", "credits": -1},
    {"org_id": "o", "member_id": "m", "credits": "1e-7"},
    {"org_id": "o", "member_id": "m", "credits": "abc"},
    {"org_id": "o", "member_id": "m", "credits": True},
    {"org_id": "o", "member_id": "m", "credits": None},
    {"org_id": "o", "member_id": "m", "credits": [1]},
    {"org_id": "o", "member_id": "m", "credits": 10**30},
    {"org_id": "o", "member_id": "m", "credits": "9007199254.740992"},
    {"org_id": "o", "member_id": "m", "credits": 9007199255},
    {"org_id": "o", "member_id": "m", "credits": "99999999999999999999"},
    {"org_id": "o", "member_id": "m"},
    {"org_id": "", "member_id": "m", "credits": "1"},
    {"org_id": "o\n", "member_id": "m", "credits": "1"},
    {"org_id": "ö", "member_id": "m", "credits": "1"},
    {"org_id": "o", "member_id": "M" * 65, "credits": "1"},
    {"org_id": 1, "member_id": "m", "credits": "1"},
    {"org_id": "o", "member_id": "m", "credits": "1", "extra": 1},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": 0},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": 900_001},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": "1000"},
    {"org_id": "o", "member_id": "m", "credits": "1", "ttl_ms": True},
    {"org_id": "o", "member_id": "m", "credits": "1", "reservation_id": ""},
    {"org_id": "o", "reservation_id": 5},
    {"org_id": "o"},
    [],
    "x",
    None,
    1,
]

RAW_BAD = [
    b"",
    b"{",
    b"nope",
    b'{"org_id": "o", "member_id": "m", "credits": 1.5}',
    b'{"org_id": "o", "member_id": "m", "credits": 1e2}',
    b'{"org_id": "o", "member_id": "m", "credits": 1, "ttl_ms": 1000.0}',
    b'{"org_id": "o", "member_id": "m", "credits": NaN}',
    b'{"org_id": "o", "org_id": "p", "member_id": "m", "credits": 1}',
    b'{"org_id": "o", "member_id": "m", "credits": 1}garbage',
    b"\xff\xfe",
]


def _dumps(doc: Any) -> bytes:
    """JSON text of any document, integers of any size and floats as JSON numbers."""
    return json.dumps(doc, ensure_ascii=False).encode()


def test_default_ttl_is_the_models() -> None:
    assert api.ReserveRequest.model_fields["ttl_ms"].default == bodies.DEFAULT_TTL_MS


@pytest.mark.parametrize("doc", GOOD)
def test_good_bodies(doc: dict[str, Any]) -> None:
    assert "ok" in _same(_dumps(doc))


@pytest.mark.parametrize("doc", BAD)
def test_bad_bodies(doc: Any) -> None:
    _same(_dumps(doc))


@pytest.mark.parametrize("raw", RAW_BAD)
def test_raw_bodies(raw: bytes) -> None:
    _same(raw)


_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:@-]{1,64}", fullmatch=True),
    st.text(max_size=70),
    st.integers(),
    st.none(),
)
_credits = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.from_regex(r"-?(0|[1-9][0-9]{0,14})(\.[0-9]{0,8})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_values: dict[str, st.SearchStrategy[Any]] = {
    "org_id": _ids,
    "member_id": _ids,
    "reservation_id": _ids,
    "credits": _credits,
    "ttl_ms": st.one_of(st.integers(min_value=-5, max_value=2_000_000), st.booleans(), st.text()),
    "extra": st.integers(),
}


@st.composite
def _docs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.sets(st.sampled_from(sorted(_values)), max_size=6))
    return {name: draw(_values[name]) for name in sorted(names)}


@settings(max_examples=400, deadline=None)
@given(_docs())
def test_generated_bodies(doc: dict[str, Any]) -> None:
    _same(_dumps(doc))
