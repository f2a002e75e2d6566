"""Hand-written parsers of the quota bodies (`/v1/check`, `/v1/reserve`, `/v1/release`).

Validating with the pydantic models costs more than the rest of a check's Python path. These
parsers accept a body only when it is the plain, valid case (a JSON object with exactly the
model's fields, strings for ids, a string or an integer for credits, an integer `ttl_ms` in
range) and otherwise hand the body to the model (`parse_body`), so every verdict and every error
is the model's own. `tests/api/test_bodies.py` compares both on good and bad bodies.

A body with `usage` instead of `credits` always goes through the model; the answer then holds the
`Usage` in place of the credits, for the route to rate.
"""

from __future__ import annotations

import re

import orjson

from meter.api.http import parse_body
from meter.engine.types import MAX_AMOUNT, MAX_HOLD_MS
from meter.errors import MeterError
from meter.money import parse_credits
from meter.rating.dimensions import Usage
from schemas import api

Amount = int | Usage
"""Micro-credits, or usage to be rated into them."""

_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}").fullmatch
"""`schemas.api.Id`."""

_CHECK_KEYS = frozenset(("org_id", "member_id", "credits"))
_RESERVE_KEYS = frozenset(("org_id", "member_id", "credits", "ttl_ms", "reservation_id"))
_RELEASE_KEYS = frozenset(("org_id", "reservation_id"))
DEFAULT_TTL_MS = 60_000
"""`schemas.api.ReserveRequest.ttl_ms`'s default."""


def _plain_id(value: object) -> bool:
    return type(value) is str and _ID(value) is not None


def _plain_credits(value: object) -> int | None:
    kind = type(value)
    if kind is not str and kind is not int:
        return None
    try:
        return parse_credits(value, maximum=MAX_AMOUNT)  # type: ignore[arg-type]
    except MeterError:
        return None


def _object(body: bytes) -> dict[str, object] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if type(data) is dict else None


def _amount(model: api.CheckRequest | api.ReserveRequest) -> Amount:
    if model.credits is not None:
        return model.credits
    assert model.usage is not None  # the model requires one of the two
    return model.usage


def check_body(body: bytes) -> tuple[str, str, Amount]:
    """`CheckRequest`: (org_id, member_id, credits in micro-credits or usage)."""
    data = _object(body)
    if data is not None and len(data) == 3 and data.keys() == _CHECK_KEYS:
        org_id, member_id = data["org_id"], data["member_id"]
        if _plain_id(org_id) and _plain_id(member_id):
            credits = _plain_credits(data["credits"])
            if credits is not None:
                return org_id, member_id, credits  # type: ignore[return-value]
    model = parse_body(api.CheckRequest, body)
    return model.org_id, model.member_id, _amount(model)


def reserve_body(body: bytes) -> tuple[str, str, Amount, int, str | None]:
    """`ReserveRequest`: (org_id, member_id, credits or usage, ttl_ms, reservation_id or
    None)."""
    data = _object(body)
    if data is not None and data.keys() <= _RESERVE_KEYS:
        org_id, member_id = data.get("org_id"), data.get("member_id")
        ttl_ms = data.get("ttl_ms", DEFAULT_TTL_MS)
        reservation_id = data.get("reservation_id")
        if (
            _plain_id(org_id)
            and _plain_id(member_id)
            and type(ttl_ms) is int
            and 1 <= ttl_ms <= MAX_HOLD_MS
            and (reservation_id is None or _plain_id(reservation_id))
            and "credits" in data
        ):
            credits = _plain_credits(data["credits"])
            if credits is not None:
                return org_id, member_id, credits, ttl_ms, reservation_id  # type: ignore[return-value]
    model = parse_body(api.ReserveRequest, body)
    return model.org_id, model.member_id, _amount(model), model.ttl_ms, model.reservation_id


def release_body(body: bytes) -> tuple[str, str]:
    """`ReleaseRequest`: (org_id, reservation_id)."""
    data = _object(body)
    if data is not None and len(data) == 2 and data.keys() == _RELEASE_KEYS:
        org_id, reservation_id = data["org_id"], data["reservation_id"]
        if _plain_id(org_id) and _plain_id(reservation_id):
            return org_id, reservation_id  # type: ignore[return-value]
    model = parse_body(api.ReleaseRequest, body)
    return model.org_id, model.reservation_id
