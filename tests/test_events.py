"""The usage-event contract: every rule with a good and a bad example, exact credits from JSON
numbers, and the fast decoder agreeing with the pydantic model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meter.engine.types import UsageEvent
from meter.settings import Settings
from schemas.event_model import UsageEventModel, validate_event
from schemas.events import (
    CODE_PRIORITY,
    MAX_EVENT_BYTES,
    DecodedEvent,
    EventError,
    _decode_structured,
    decode_checked,
    decode_event,
    encode_event,
    event_key,
    format_time,
    parse_time_ms,
    split_event_key,
)
from schemas.export import USAGE_EVENT_SCHEMA, render, usage_event_schema


@dataclass(frozen=True)
class Limits:
    max_future_skew_s: int = 300
    max_event_credits: int = 10**12


LIMITS = Limits()
NOW = parse_time_ms("2026-03-01T12:00:00Z")
Doc = dict[str, Any]


def good() -> Doc:
    return {
        "specversion": "1.0",
        "id": "req-8f14e45f",
        "source": "//chat.example.com/api",
        "type": "meter.usage.v1",
        "time": "2026-03-01T11:59:00.250Z",
        "subject": "member-42",
        "datacontenttype": "application/json",
        "data": {
            "org_id": "acme",
            "member_id": "member-42",
            "credits": "1.5",
            "reservation_id": "res-1",
            "attributes": {"model": "large-2", "tokens": 1834, "cached": False, "ratio": 0.5},
        },
    }


def both(raw: bytes, now: int = NOW, limits: Limits = LIMITS) -> DecodedEvent | EventError:
    """The verdict of the fast decoder, after checking that the model gives the same one, and
    that reading the event by its structure gives what the hand checks alone give."""
    fast = decode_event(raw, now, limits)
    checked = decode_checked(raw, now, limits)
    assert fast == checked, (raw, fast, checked)
    model = validate_event(raw, now, limits)
    if isinstance(fast, EventError):
        assert isinstance(model, EventError), (raw, fast, model)
        assert fast.code == model.code, (raw, fast, model)
    else:
        assert fast == model, (raw, fast, model)
    return fast


def code_of(raw: bytes, **kw: Any) -> str | None:
    result = both(raw, **kw)
    return result.code if isinstance(result, EventError) else None


def big(n: int) -> orjson.Fragment:
    """An integer literal orjson would not write itself."""
    return orjson.Fragment(str(n).encode())


def with_(change: Callable[[Doc], object]) -> bytes:
    doc = good()
    change(doc)
    return orjson.dumps(doc)


def put(path: str, value: object) -> Callable[[Doc], object]:
    *parents, last = path.split(".")

    def change(doc: Doc) -> None:
        target = doc
        for part in parents:
            target = target[part]
        target[last] = value

    return change


def drop(path: str) -> Callable[[Doc], object]:
    *parents, last = path.split(".")

    def change(doc: Doc) -> None:
        target = doc
        for part in parents:
            target = target[part]
        del target[last]

    return change


def test_good_event_decodes_to_what_the_engine_needs() -> None:
    result = both(orjson.dumps(good()))
    assert result == DecodedEvent(
        UsageEvent(
            key="//chat.example.com/api req-8f14e45f",
            org_id="acme",
            member_id="member-42",
            credits=1_500_000,
            time_ms=NOW - 59_750,
            reservation_id="res-1",
        ),
        {"model": "large-2", "tokens": 1834, "cached": False, "ratio": 0.5},
    )


def test_settings_are_accepted_as_limits() -> None:
    result = decode_event(orjson.dumps(good()), NOW, Settings())
    assert isinstance(result, DecodedEvent)


GOOD = {
    "minimal": [drop("datacontenttype"), drop("data.reservation_id"), drop("data.attributes")],
    "nulls for optional attributes": [
        put("datacontenttype", None),
        put("data.reservation_id", None),
        put("data.attributes", None),
    ],
    "id charset, 128 characters": [put("id", "aZ09-_.:@" + "x" * 119)],
    "id of one character": [put("id", "1")],
    "subject and member id with every id character": [
        put("subject", "m:a_b.c@d-1"),
        put("data.member_id", "m:a_b.c@d-1"),
    ],
    "org and reservation ids": [put("data.org_id", "o" * 128), put("data.reservation_id", "r@1")],
    "source: URN": [put("source", "urn:meter:chat")],
    "source: absolute URI with query, fragment, escapes": [
        put("source", "https://a.example/x%20y?q=1&r=[2]#f!$'()*+,;=~")
    ],
    "source: 256 characters": [put("source", "/" + "s" * 255)],
    "credits: JSON string": [put("data.credits", "0.000001")],
    "credits: JSON integer": [put("data.credits", 3000)],
    "credits: JSON number": [put("data.credits", orjson.Fragment(b"123456.000001"))],
    "credits: zero": [put("data.credits", 0)],
    "credits: exponent": [put("data.credits", orjson.Fragment(b"1e-6"))],
    "credits: trailing zeros": [put("data.credits", orjson.Fragment(b"0.1000000"))],
    "credits: the maximum": [put("data.credits", "1000000")],
    "time: offset": [put("time", "2026-03-01T13:04:05+01:00")],
    "time: negative offset, no fraction": [put("time", "2026-03-01T06:00:00-05:30")],
    "time: lower-case t and z, nanoseconds": [put("time", "2026-03-01t11:00:00.123456789z")],
    "time: leap day": [put("time", "2024-02-29T00:00:00Z")],
    "time: exactly the skew ahead": [put("time", "2026-03-01T12:05:00Z")],
    "time: long ago": [put("time", "1999-12-31T23:59:59.999Z")],
    "extension attributes": [
        put("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        put("partitionkey", "acme"),
        put("sequence", 2**31 - 1),
        put("sampled", True),
    ],
    "16 extensions": [put(f"ext{i}", i) for i in range(16)],
    "32 attributes": [put("data.attributes", {f"a{i}": i for i in range(32)})],
    "attribute name of 64 characters, string of 256": [
        put("data.attributes", {"n" * 64: "v" * 256})
    ],
    "attribute values of every kind": [
        put("data.attributes", {"s": "", "t": True, "i": -(2**63), "f": -1.5e300})
    ],
    "data with a credits attribute and a float": [
        put("data.credits", orjson.Fragment(b"2.25")),
        put("data.attributes", {"credits": 7.5}),
    ],
}


@pytest.mark.parametrize("changes", GOOD.values(), ids=GOOD.keys())
def test_good_examples(changes: list[Callable[[Doc], object]]) -> None:
    doc = good()
    for change in changes:
        change(doc)
    assert isinstance(both(orjson.dumps(doc)), DecodedEvent)


BAD: dict[str, tuple[bytes, str]] = {
    "too large": (b" " * MAX_EVENT_BYTES + orjson.dumps(good()), "event_too_large"),
    "not JSON": (b"{not json", "invalid_json"),
    "not UTF-8": (b'{"id": "\xff"}', "invalid_json"),
    "NaN": (orjson.dumps(good()).replace(b'"1.5"', b"NaN"), "invalid_json"),
    "overflowing number": (orjson.dumps(good()).replace(b'"1.5"', b"1e400"), "invalid_json"),
    "lone surrogate": (orjson.dumps(good()).replace(b'"acme"', b'"\\ud800"'), "invalid_json"),
    "not an object": (b"[1, 2]", "invalid_schema"),
    "a string": (b'"event"', "invalid_schema"),
    "specversion": (with_(put("specversion", "0.3")), "invalid_schema"),
    "specversion missing": (with_(drop("specversion")), "invalid_schema"),
    "type": (with_(put("type", "meter.usage.v2")), "invalid_schema"),
    "datacontenttype": (with_(put("datacontenttype", "text/plain")), "invalid_schema"),
    "id missing": (with_(drop("id")), "invalid_schema"),
    "id empty": (with_(put("id", "")), "invalid_schema"),
    "id too long": (with_(put("id", "x" * 129)), "invalid_schema"),
    "id with a space": (with_(put("id", "a b")), "invalid_schema"),
    "id with a slash": (with_(put("id", "a/b")), "invalid_schema"),
    "id not ASCII": (with_(put("id", "é")), "invalid_schema"),
    "id with a newline": (with_(put("id", "a\n")), "invalid_schema"),
    "id a number": (with_(put("id", 7)), "invalid_schema"),
    "source missing": (with_(drop("source")), "invalid_schema"),
    "source empty": (with_(put("source", "")), "invalid_schema"),
    "source too long": (with_(put("source", "/" + "s" * 256)), "invalid_schema"),
    "source with a space": (with_(put("source", "//a b")), "invalid_schema"),
    "source with a bad escape": (with_(put("source", "/a%2")), "invalid_schema"),
    "source with a quote": (with_(put("source", '/a"b')), "invalid_schema"),
    "source a list": (with_(put("source", ["/a"])), "invalid_schema"),
    "subject missing": (with_(drop("subject")), "invalid_schema"),
    "subject invalid": (with_(put("subject", "m 1")), "invalid_schema"),
    "org id missing": (with_(drop("data.org_id")), "invalid_schema"),
    "org id invalid": (with_(put("data.org_id", "{acme}")), "invalid_schema"),
    "member id invalid": (with_(put("data.member_id", "")), "invalid_schema"),
    "reservation id invalid": (with_(put("data.reservation_id", "r" * 129)), "invalid_schema"),
    "data missing": (with_(drop("data")), "invalid_schema"),
    "data a string": (with_(put("data", '{"org_id": "acme"}')), "invalid_schema"),
    "data with an unknown key": (with_(put("data.reservaton_id", "r")), "invalid_schema"),
    "credits missing": (with_(drop("data.credits")), "invalid_schema"),
    "credits null": (with_(put("data.credits", None)), "invalid_schema"),
    "credits a boolean": (with_(put("data.credits", True)), "invalid_schema"),
    "credits an object": (with_(put("data.credits", {"value": 1})), "invalid_schema"),
    "credits 7 fractional digits": (with_(put("data.credits", "0.0000001")), "invalid_credits"),
    "credits 7 digits as a number": (
        with_(put("data.credits", orjson.Fragment(b"1.0000001"))),
        "invalid_credits",
    ),
    "credits negative": (with_(put("data.credits", "-1")), "invalid_credits"),
    "credits negative integer": (with_(put("data.credits", -3)), "invalid_credits"),
    "credits negative number": (
        with_(put("data.credits", orjson.Fragment(b"-0.5"))),
        "invalid_credits",
    ),
    "credits NaN string": (with_(put("data.credits", "NaN")), "invalid_credits"),
    "credits Infinity string": (with_(put("data.credits", "Infinity")), "invalid_credits"),
    "credits over the maximum": (with_(put("data.credits", "1000000.000001")), "invalid_credits"),
    "credits a huge integer": (with_(put("data.credits", big(2**64))), "invalid_credits"),
    "credits exponent abuse": (with_(put("data.credits", "1e999999999")), "invalid_credits"),
    "credits long literal equal to 0.1 as a double": (
        with_(put("data.credits", orjson.Fragment(b"0.1000000000000000055511151231257827"))),
        "invalid_credits",
    ),
    "credits underflowing to 0.0 as a double": (
        with_(put("data.credits", orjson.Fragment(b"1e-400"))),
        "invalid_credits",
    ),
    "time missing": (with_(drop("time")), "invalid_schema"),
    "time a number": (with_(put("time", 1772366400000)), "invalid_schema"),
    "time without timezone": (with_(put("time", "2026-03-01T11:00:00")), "missing_timezone"),
    "time with fraction, without timezone": (
        with_(put("time", "2026-03-01T11:00:00.5")),
        "missing_timezone",
    ),
    "time date only": (with_(put("time", "2026-03-01")), "invalid_time"),
    "time with a space": (with_(put("time", "2026-03-01 11:00:00Z")), "invalid_time"),
    "time basic format": (with_(put("time", "20260301T110000Z")), "invalid_time"),
    "time offset without colon": (with_(put("time", "2026-03-01T11:00:00+0100")), "invalid_time"),
    "time offset out of range": (with_(put("time", "2026-03-01T11:00:00+24:00")), "invalid_time"),
    "time month 13": (with_(put("time", "2026-13-01T11:00:00Z")), "invalid_time"),
    "time February 29 of a common year": (
        with_(put("time", "2025-02-29T11:00:00Z")),
        "invalid_time",
    ),
    "time hour 24": (with_(put("time", "2026-03-01T24:00:00Z")), "invalid_time"),
    "time leap second": (with_(put("time", "2016-12-31T23:59:60Z")), "invalid_time"),
    "time 10 fraction digits": (
        with_(put("time", "2026-03-01T11:00:00.1234567890Z")),
        "invalid_time",
    ),
    "time non-ASCII digits": (with_(put("time", "٢٠٢٦-03-01T11:00:00Z")), "invalid_time"),
    "time one ms beyond the skew": (
        with_(put("time", "2026-03-01T12:05:00.001Z")),
        "time_in_future",
    ),
    "time far in the future": (with_(put("time", "2999-01-01T00:00:00Z")), "time_in_future"),
    "subject differs from member id": (with_(put("subject", "member-43")), "subject_mismatch"),
    "extension name with capitals": (with_(put("traceParent", "x")), "invalid_schema"),
    "extension name too long": (with_(put("x" * 21, "x")), "invalid_schema"),
    "extension data_base64": (with_(put("data_base64", "AAAA")), "invalid_schema"),
    "extension a float": (with_(put("ratio", 0.5)), "invalid_schema"),
    "extension beyond int32": (with_(put("sequence", 2**31)), "invalid_schema"),
    "extension an object": (with_(put("ext", {})), "invalid_schema"),
    "extension a long string": (with_(put("ext", "x" * 257)), "invalid_schema"),
    "17 extensions": (with_(lambda d: d.update({f"e{i}": i for i in range(17)})), "invalid_schema"),
    "33 attributes": (
        with_(put("data.attributes", {f"a{i}": i for i in range(33)})),
        "invalid_schema",
    ),
    "attributes a list": (with_(put("data.attributes", ["model"])), "invalid_schema"),
    "attribute name too long": (with_(put("data.attributes", {"n" * 65: 1})), "invalid_schema"),
    "attribute name with a space": (with_(put("data.attributes", {"a b": 1})), "invalid_schema"),
    "attribute name empty": (with_(put("data.attributes", {"": 1})), "invalid_schema"),
    "attribute string too long": (
        with_(put("data.attributes", {"a": "v" * 257})),
        "invalid_schema",
    ),
    "attribute text with a NUL": (
        with_(put("data.attributes", {"model": "a\u0000b"})),
        "invalid_schema",
    ),
    "attribute null": (with_(put("data.attributes", {"a": None})), "invalid_schema"),
    "attribute nested": (with_(put("data.attributes", {"a": {"b": 1}})), "invalid_schema"),
}


@pytest.mark.parametrize(("raw", "code"), BAD.values(), ids=BAD.keys())
def test_bad_examples(raw: bytes, code: str) -> None:
    result = both(raw)
    assert isinstance(result, EventError)
    assert result.code == code
    assert result.message


def test_the_first_broken_rule_in_priority_order_is_reported() -> None:
    raw = with_(
        lambda d: (
            put("subject", "other")(d),
            put("data.credits", "-1")(d),
            put("time", "2026-03-01T00:00:00")(d),
        )
    )
    assert code_of(raw) == "missing_timezone"
    raw = with_(lambda d: (put("subject", "other")(d), put("data.credits", "-1")(d)))
    assert code_of(raw) == "invalid_credits"
    raw = with_(lambda d: (put("data.credits", "-1")(d), put("id", "")(d)))
    assert code_of(raw) == "invalid_schema"
    raw = with_(lambda d: (put("subject", "x")(d), put("time", "2999-01-01T00:00:00Z")(d)))
    assert code_of(raw) == "subject_mismatch"
    assert list(CODE_PRIORITY)[:3] == ["event_too_large", "invalid_json", "invalid_schema"]


def test_limits_come_from_configuration() -> None:
    raw = with_(put("data.credits", "2"))
    assert code_of(raw, limits=Limits(max_event_credits=2_000_000)) is None
    assert code_of(raw, limits=Limits(max_event_credits=1_999_999)) == "invalid_credits"
    raw = with_(put("time", "2026-03-01T12:00:01Z"))
    assert code_of(raw, limits=Limits(max_future_skew_s=1)) is None
    assert code_of(raw, limits=Limits(max_future_skew_s=0)) == "time_in_future"


# --- exact credits from JSON numbers ------------------------------------------------------


def credits_of(raw: bytes) -> int | str:
    result = both(raw)
    return result.code if isinstance(result, EventError) else result.event.credits


@pytest.mark.parametrize(
    ("literal", "micro"),
    [
        (b"0.1", 100_000),
        (b"1e-6", 1),
        (b"1E-6", 1),
        (b"123456.000001", 123_456_000_001),
        (b"3000", 3_000_000_000),
        (b"3000.0", 3_000_000_000),
        (b"0.30000000000000000", 300_000),
        (b"999999.999999", 999_999_999_999),
        (b"-0.0", 0),
    ],
)
def test_json_numbers_are_read_from_their_digits(literal: bytes, micro: int) -> None:
    assert credits_of(with_(put("data.credits", orjson.Fragment(literal)))) == micro


def test_float_credits_with_another_credits_key_take_the_exact_path() -> None:
    raw = with_(
        lambda d: (
            put("data.credits", orjson.Fragment(b"0.10000000000000000555"))(d),
            put("data.attributes", {"credits": 0.1})(d),
        )
    )
    assert credits_of(raw) == "invalid_credits"
    raw = with_(
        lambda d: (
            put("data.credits", orjson.Fragment(b"0.1"))(d),
            put("credits", 1)(d),
        )
    )
    assert credits_of(raw) == 100_000


def test_float_credits_behind_an_escaped_key() -> None:
    # The data.credits key is spelt with a \u escape, a decoy "credits" sits in the attributes.
    raw = (
        b'{"specversion":"1.0","id":"e","source":"/s","type":"meter.usage.v1",'
        b'"time":"2026-03-01T11:00:00Z","subject":"m","data":{"org_id":"o","member_id":"m",'
        b'"attributes":{"credits":0.1},"cr\\u0065dits":0.1000000000000000055511151231257827}}'
    )
    assert credits_of(raw) == "invalid_credits"
    assert credits_of(raw.replace(b"0.1000000000000000055511151231257827", b"0.25")) == 250_000


def test_duplicate_credits_keys_last_one_wins() -> None:
    raw = (
        b'{"specversion":"1.0","id":"e","source":"/s","type":"meter.usage.v1",'
        b'"time":"2026-03-01T11:00:00Z","subject":"m","data":{"org_id":"o","member_id":"m",'
        b'"credits":0.1,"credits":0.1000000000000000055511151231257827}}'
    )
    assert credits_of(raw) == "invalid_credits"
    raw = raw.replace(b'"credits":0.1,', b'"credits":1e-400,').replace(
        b"0.1000000000000000055511151231257827", b"0.1"
    )
    assert credits_of(raw) == 100_000


def test_string_ending_in_credits_does_not_confuse_the_literal() -> None:
    raw = with_(
        lambda d: (
            put("data.credits", orjson.Fragment(b"0.75"))(d),
            put("data.attributes", {"note": 'say "credits'})(d),
        )
    )
    assert credits_of(raw) == 750_000
    raw = with_(
        lambda d: (
            put("data.credits", orjson.Fragment(b"0.1000000000000000055511151231257827"))(d),
            put("data.attributes", {"unit": "credits"})(d),
        )
    )
    assert credits_of(raw) == "invalid_credits"


def test_model_refuses_non_finite_attributes() -> None:
    doc = good()
    doc["data"]["attributes"] = {"x": float("nan")}
    with pytest.raises(ValueError, match="finite"):
        UsageEventModel.model_validate(doc)


def test_model_refuses_plain_float_credits() -> None:
    doc = good()
    doc["data"]["credits"] = 0.5
    with pytest.raises(ValueError, match="inexact"):
        UsageEventModel.model_validate(doc)


_number_literals = st.builds(
    lambda minus, whole, frac, exp: f"{minus}{whole}{frac}{exp}".encode(),
    st.sampled_from(["", "", "-"]),
    st.one_of(st.just("0"), st.integers(1, 10**18).map(str)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=20).map(lambda f: "." + f)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, sign, n: f"{e}{sign}{n}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 400),
        ),
    ),
)


@given(_number_literals)
@settings(max_examples=300)
def test_number_credits_agree_with_the_same_literal_as_a_string(literal: bytes) -> None:
    as_number = with_(put("data.credits", orjson.Fragment(literal)))
    try:
        orjson.loads(as_number)
    except orjson.JSONDecodeError:
        return  # beyond the double range: not JSON orjson accepts, checked elsewhere
    as_string = with_(put("data.credits", literal.decode()))
    assert credits_of(as_number) == credits_of(as_string)


# --- the decoder and the model agree ------------------------------------------------------

_ints = st.integers(min_value=-(2**70), max_value=2**70).map(
    lambda n: n if -(2**63) <= n < 2**64 else big(n)
)
_ids = st.one_of(
    st.sampled_from(["member-42", "acme", "r-1", "a", "x" * 128, "x" * 129, "", "a b", "é"]),
    st.text(min_size=0, max_size=6),
    _ints,
    st.none(),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.just("x" * 257),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), _scalars, max_size=2),
)
_times = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T11:59:00.250Z",
            "2026-03-01T12:05:00Z",
            "2026-03-01T12:05:00.001Z",
            "2026-03-01T11:00:00",
            "2024-02-29T23:59:59.9999+23:59",
            "2025-02-29T00:00:00Z",
            "2026-03-01T11:00:00-00:60",
            "2026-03-02T00:00:00+12:00",
            "2026-03-01T12:05:00.000999Z",
        ]
    ),
    st.integers(0, 2**41).map(format_time),
    st.text(max_size=30),
)
_credits = st.one_of(
    st.sampled_from(["1.5", "0.0000001", "-1", "1e-6", "NaN", "1000000", "1000000.000001"]),
    _number_literals.map(lambda b: orjson.Fragment(b)),
    _number_literals.map(bytes.decode),
    _scalars,
)
_valid_ids = st.sampled_from(["member-42", "acme", "r-1", "a", "x" * 128, "m@x:y_z.1"])
_mutations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["id", "data.org_id", "data.reservation_id"]), _valid_ids),
        st.tuples(st.sampled_from(["id", "subject", "data.org_id", "data.member_id"]), _ids),
        st.tuples(st.just("data.reservation_id"), st.one_of(_ids, st.none())),
        st.tuples(
            st.just("source"), st.one_of(_ids, st.sampled_from(["/a%2x", "urn:x", "s" * 257]))
        ),
        st.tuples(st.just("time"), _times),
        st.tuples(st.just("time"), _times),
        st.tuples(st.just("data.credits"), _credits),
        st.tuples(st.just("data.credits"), _credits),
        st.tuples(st.sampled_from(["specversion", "type", "datacontenttype"]), _values),
        st.tuples(st.sampled_from(["ext", "Ext", "data_base64", "e" * 21]), _values),
        st.tuples(
            st.just("data.attributes"),
            st.one_of(_values, st.dictionaries(st.text(max_size=4), _scalars, max_size=4)),
        ),
        st.tuples(st.sampled_from(["data.extra", "data"]), _values),
    ),
    max_size=3,
)


@given(_mutations, st.booleans())
@settings(max_examples=400, deadline=None)
def test_decoder_and_model_agree(mutations: list[tuple[str, Any]], remove: bool) -> None:
    doc = good()
    for path, value in mutations:
        try:
            if remove and value is None:
                drop(path)(doc)
            else:
                put(
                    path, copy.deepcopy(value) if not isinstance(value, orjson.Fragment) else value
                )(doc)
        except (KeyError, TypeError):
            continue  # "data" replaced by a non-object earlier: nothing to put into
    result = both(orjson.dumps(doc))
    event(result.code if isinstance(result, EventError) else "valid")


@pytest.mark.parametrize(
    "change",
    [
        lambda d: None,
        put("data.credits", 2),
        put("data.credits", orjson.Fragment(b"1.5")),
        drop("datacontenttype"),
        put("data.reservation_id", None),
        drop("data.attributes"),
        lambda d: d["data"].update(credits=None, usage={"model": "m-1", "input_tokens": 3}),
    ],
)
def test_common_events_are_read_by_their_structure(change: Callable[[Doc], object]) -> None:
    raw = with_(change)
    structured = _decode_structured(raw, NOW, LIMITS)
    assert structured is not None
    assert structured == decode_checked(raw, NOW, LIMITS)


def test_events_the_structure_does_not_hold_are_checked_by_hand() -> None:
    raw = with_(put("traceparent", "00-abc"))  # an extension attribute
    assert _decode_structured(raw, NOW, LIMITS) is None
    assert isinstance(decode_event(raw, NOW, LIMITS), DecodedEvent)
    bad = with_(put("data.member_id", "someone-else"))
    assert _decode_structured(bad, NOW, LIMITS) is None
    assert code_of(bad) == "subject_mismatch"


# --- keys, encoder, time, schema file -----------------------------------------------------


@given(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1), st.text(min_size=1))
def test_event_keys_identify_the_pair(s1: str, i1: str, s2: str, i2: str) -> None:
    # Valid sources and ids contain no space, which is what makes the key unambiguous.
    s1, i1, s2, i2 = (t.replace(" ", "") or "x" for t in (s1, i1, s2, i2))
    assert split_event_key(event_key(s1, i1)) == (s1, i1)
    assert (event_key(s1, i1) == event_key(s2, i2)) == ((s1, i1) == (s2, i2))


_id_text = st.text("abcXYZ019-_.:@", min_size=1, max_size=128)


@given(
    _id_text,
    st.sampled_from(["//chat.example.com/api", "urn:x:y", "/p%20q"]),
    _id_text,
    _id_text,
    st.integers(0, 10**12),
    st.integers(0, NOW + 300_000),
    st.one_of(st.none(), _id_text),
    st.dictionaries(
        st.text("abc._-", min_size=1, max_size=64),
        st.one_of(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=256,
            ),
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
        ),
        max_size=32,
    ),
    st.sampled_from(["string", "number"]),
)
@settings(max_examples=200)
def test_encode_then_decode_round_trips(
    event_id: str,
    source: str,
    org_id: str,
    member_id: str,
    micro: int,
    time_ms: int,
    reservation_id: str | None,
    attributes: dict[str, Any],
    credits_as: Any,
) -> None:
    raw = encode_event(
        event_id=event_id,
        source=source,
        org_id=org_id,
        member_id=member_id,
        credits=micro,
        time_ms=time_ms,
        reservation_id=reservation_id,
        attributes=attributes,
        credits_as=credits_as,
    )
    assert both(raw) == DecodedEvent(
        UsageEvent(event_key(source, event_id), org_id, member_id, micro, time_ms, reservation_id),
        attributes,
    )


def test_integer_attributes_beyond_int64_become_floats() -> None:
    result = both(with_(put("data.attributes", {"big": big(2**64 + 1), "neg": big(-(2**63) - 1)})))
    assert isinstance(result, DecodedEvent)
    assert result.attributes == {"big": float(2**64 + 1), "neg": float(-(2**63) - 1)}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.001Z", 1),
        ("1970-01-01T00:00:00.0019Z", 1),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2000-03-01T00:00:00Z", 951_868_800_000),
        ("2026-03-01T12:00:00Z", 1_772_366_400_000),
        ("2026-03-01T06:30:00-05:30", 1_772_366_400_000),
    ],
)
def test_time_values(text: str, ms: int) -> None:
    assert parse_time_ms(text) == ms


@given(st.integers(-(10**13), 10**14))
def test_format_time_round_trips(ms: int) -> None:
    assert parse_time_ms(format_time(ms)) == ms


def test_committed_json_schema_is_current() -> None:
    committed = USAGE_EVENT_SCHEMA.read_text(encoding="utf-8")
    assert committed == render(usage_event_schema()), "run: python -m schemas.export"
