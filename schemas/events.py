"""The usage event: a CloudEvents 1.0 JSON event in structured mode (DESIGN 2.6).

```json
{"specversion": "1.0", "type": "meter.usage.v1", "source": "//chat.example.com/api",
 "id": "req-8f14e45f", "time": "2026-03-01T12:00:00.250Z", "subject": "member-42",
 "datacontenttype": "application/json",
 "data": {"org_id": "acme", "member_id": "member-42", "credits": "1.5",
          "reservation_id": "res-1", "attributes": {"model": "large-2", "tokens": 1834}}}
```

Rules (`EventError.code` in brackets; any rule not listed is `invalid_schema`):

- The raw event is at most `MAX_EVENT_BYTES` [`event_too_large`] of UTF-8 JSON [`invalid_json`]
  holding an object.
- `specversion` is ``"1.0"``; `type` is ``"meter.usage.v1"`` (`EVENT_TYPE`, the only type this
  topic carries; a new contract gets a new type); `datacontenttype`, optional, is
  ``"application/json"``.
- `id`, `subject`, `data.org_id`, `data.member_id` and the optional `data.reservation_id` are ids:
  1 to 128 characters from ``A-Z a-z 0-9 - _ . : @`` (`ID_PATTERN`). `subject` is the member and
  must equal `data.member_id` [`subject_mismatch`].
- `source` is a URI-reference of at most 256 characters: characters RFC 3986 allows unescaped, and
  ``%`` only as a ``%XX`` escape.
- `time` is RFC 3339 ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` [`invalid_time`]; it
  must carry its offset [`missing_timezone`] and must not be more than `max_future_skew_s` ahead of
  now [`time_in_future`]. Leap seconds (``:60``) are refused; fractions below a millisecond are
  truncated.
- `data.credits` is a JSON string or number, a decimal with at most 6 fractional digits, not
  negative, at most `max_event_credits` micro-credits and never more than the engine's exact
  range `MAX_AMOUNT` [`invalid_credits`; the message names the `meter.money.CreditsError` code].
  See "Exact credits" below.
- Instead of `data.credits`, `data.usage` (exactly one of the two [`invalid_schema`]): an object
  ``{"model": "<name>", "<dimension>": <integer>, ...}``, rated into credits by the consumer with
  the organization's rate card (`meter.rating`). The model is 1 to 128 characters of
  ``A-Z a-z 0-9 . _ : @ / + -``; every other key is a dimension of
  `meter.rating.dimensions.DIMENSIONS` holding an integer in 0..2**53-1; at least one
  [`invalid_usage`].
- `data.attributes`, optional, holds free attributes for reporting: at most `MAX_ATTRIBUTES`
  entries, names 1 to 64 id characters, values strings of at most 256 characters, booleans or
  finite numbers. An integer outside the int64 range becomes a float. `data` allows no other key,
  so a misspelt `reservaton_id` is an error rather than a silent attribute.
- Other top-level attributes are CloudEvents extensions: at most `MAX_EXTENSIONS`, named
  ``[a-z0-9]{1,20}``, with a string of at most 256 characters, a boolean or an int32 as value.
  They are accepted and ignored.
- Optional attributes may be absent or ``null``.
- When several rules are broken, the reported code is the first in `CODE_PRIORITY`.

The idempotency key is ``f"{source} {id}"`` (`event_key`): neither part may contain a space, so the
key identifies the pair exactly.

Two implementations give the same verdicts, and a test holds them to it:

- `decode_event`: the fast path for the consumer and the HTTP ingest. A `msgspec` structure
  (`_Structure`) reads the shape of an event with no extension attributes straight into typed
  fields, and the hand checks of the values follow; any event it does not accept whole is read
  again by `orjson` into plain objects and checked by hand from the start (`decode_checked`),
  which also says what is wrong. So a refusal is always that path's, and the structure only
  saves time (about a quarter of a valid event's decoding).
- `schemas.event_model.UsageEventModel` / `validate_event`: the pydantic model, source of the
  exported JSON Schema.

Exact credits. `orjson` reads a JSON number with a fraction or an exponent as a float, which no
longer holds the digits the producer wrote. ``Decimal(repr(x))`` gives the literal back only when
it had at most 15 significant digits, and a float cannot tell whether it had:
``0.1000000000000000055511151231257827`` parses to the same double as ``0.1``, and ``1e-400`` to
``0.0``; both would be silently rounded. So when `credits` arrives as a float, `decode_event`
reads its literal from the raw bytes. In JSON without ``\\u`` escapes, the key of `data.credits`
can only be written as the bytes ``"credits"``; so when the raw event has no ``\\u`` and these bytes
occur once, that occurrence is the key and the number after it is its literal, parsed as text.
Otherwise (an escape somewhere; the bytes also in another key, a value such as ``"credits"``, the
end of a string; a duplicate key) the event is read again by the standard library parser with
``parse_float=Decimal``, which keeps every digit. Producers avoid both by sending credits as a JSON
string, as `encode_event` does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, NoReturn, Protocol

import msgspec
import orjson

from meter.engine.types import MAX_AMOUNT, UsageEvent
from meter.money import INT64_MAX, CreditsError, format_credits, parse_credits
from meter.rating.dimensions import Usage, UsageError, parse_usage

SPECVERSION: Final = "1.0"
EVENT_TYPE: Final = "meter.usage.v1"
CONTENT_TYPE: Final = "application/json"
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 128
MAX_SOURCE_CHARS: Final = 256
MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_NAME_CHARS: Final = 64
MAX_STRING_CHARS: Final = 256
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"
"""JSON Schema pattern of attribute text: no NUL character (PostgreSQL cannot store one)."""
MAX_EXTENSIONS: Final = 16
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
INT64_MIN: Final = -(2**63)

_ID_CHARS = "A-Za-z0-9._:@-"
_URI_CHARS = "A-Za-z0-9._~:/?#\\[\\]@!$&'()*+,;=-"
ID_PATTERN: Final = f"^[{_ID_CHARS}]{{1,{MAX_ID_CHARS}}}$"
ATTRIBUTE_NAME_PATTERN: Final = f"^[{_ID_CHARS}]{{1,{MAX_ATTRIBUTE_NAME_CHARS}}}$"
SOURCE_PATTERN: Final = f"^(?:[{_URI_CHARS}]|%[0-9A-Fa-f]{{2}})+$"
EXTENSION_NAME_PATTERN: Final = r"^[a-z0-9]{1,20}$"
TIME_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)

CODE_PRIORITY: Final = (
    "event_too_large",
    "invalid_json",
    "invalid_schema",
    "invalid_time",
    "missing_timezone",
    "invalid_credits",
    "invalid_usage",
    "subject_mismatch",
    "time_in_future",
)

AttributeValue = str | bool | int | float
CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"}
)
DATA_KEYS: Final = frozenset(
    {"org_id", "member_id", "credits", "usage", "reservation_id", "attributes"}
)


class EventLimits(Protocol):
    """What validation reads from configuration; `meter.settings.Settings` is one."""

    @property
    def max_future_skew_s(self) -> int: ...

    @property
    def max_event_credits(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EventError:
    """Why an event was refused: a stable `code` (see `CODE_PRIORITY`) and a message for people."""

    code: str
    message: str


class DecodedEvent(msgspec.Struct, frozen=True, gc=False):
    """A valid usage event: what the engine settles, plus the free attributes for reporting.

    A `msgspec.Struct` for the reason `UsageEvent` is one: the consumer builds one per event,
    and a Struct is built in about a tenth of a NamedTuple's time. Its attributes are JSON
    values, which cannot refer back to it, so the garbage collector need not track it."""

    event: UsageEvent
    attributes: dict[str, AttributeValue]
    usage: Usage | None = None
    """Set for an event that carries usage: `event.credits` is 0 until it is rated."""


def event_key(source: str, event_id: str) -> str:
    """The idempotency key of the event `event_id` from `source`."""
    return f"{source} {event_id}"


def split_event_key(key: str) -> tuple[str, str]:
    """`(source, id)` of a key made by `event_key`."""
    source, _, event_id = key.partition(" ")
    return source, event_id


# --- time -------------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
).fullmatch
_TAIL = re.compile(r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))?").fullmatch
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_CACHE_SIZE = 4096
# Valid pieces already seen: a stream repeats its seconds and its ".mmmZ" tails.
_seconds_cache: dict[str, int] = {}
_tail_cache: dict[str, int] = {}


class TimeError(ValueError):
    """A `time` that is not RFC 3339 with an offset; `code` is ``invalid_time`` or
    ``missing_timezone``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp with an offset (see the module rules).

    The first 19 characters are the wall-clock second, the rest the fraction and the offset;
    both are checked (in that order) and remembered separately."""
    head, tail = text[:19], text[19:]
    base = _seconds_cache.get(head)
    if base is None:
        base = _parse_seconds(head)
        if len(_seconds_cache) >= _CACHE_SIZE:
            _seconds_cache.clear()
        _seconds_cache[head] = base
    shift = _tail_cache.get(tail)
    if shift is None:
        shift = _parse_tail(tail)
        if len(_tail_cache) >= _CACHE_SIZE:
            _tail_cache.clear()
        _tail_cache[tail] = shift
    return base + shift


def _parse_seconds(head: str) -> int:
    m = _DATETIME(head)
    if m is None:
        raise TimeError("invalid_time", "time must be RFC 3339, e.g. 2026-03-01T12:00:00Z")
    y, mo, d, h, mi, s = (int(part) for part in m.groups())
    if not 1 <= mo <= 12 or h > 23 or mi > 59 or s > 59 or d < 1:
        raise TimeError("invalid_time", "time has a field out of range")
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if d > _MONTH_DAYS[mo] + (mo == 2 and leap):
        raise TimeError("invalid_time", "time names a day the month does not have")
    # Days since 1970-01-01 in the proleptic Gregorian calendar (days-from-civil).
    yy = y - (mo <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000


def _parse_tail(tail: str) -> int:
    """Milliseconds to add to the wall-clock second: the fraction, minus the offset."""
    m = _TAIL(tail)
    if m is None:
        raise TimeError("invalid_time", "time must be RFC 3339, e.g. 2026-03-01T12:00:00Z")
    frac, zulu, sign, off_h, off_m = m.groups()
    if zulu is None and sign is None:
        raise TimeError("missing_timezone", "time must end in Z or a +HH:MM/-HH:MM offset")
    ms = int((frac + "00")[:3]) if frac else 0
    if sign is None:
        return ms
    oh, om = int(off_h), int(off_m)
    if oh > 23 or om > 59:
        raise TimeError("invalid_time", "time has an offset out of range")
    offset_ms = (oh * 60 + om) * 60_000
    return ms - offset_ms if sign == "+" else ms + offset_ms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_time(ms: int) -> str:
    """RFC 3339 in UTC with milliseconds: 0 -> "1970-01-01T00:00:00.000Z"."""
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- fast path --------------------------------------------------------------------------------

# The same patterns, for fullmatch.
_ID = re.compile(ID_PATTERN[1:-1]).fullmatch
_ATTRIBUTE_NAME = re.compile(ATTRIBUTE_NAME_PATTERN[1:-1]).fullmatch
_SOURCE_PLAIN = re.compile(f"[{_URI_CHARS}]+").fullmatch
_SOURCE = re.compile(SOURCE_PATTERN[1:-1]).fullmatch
_EXTENSION_NAME = re.compile(EXTENSION_NAME_PATTERN[1:-1]).fullmatch
_CREDITS_VALUE = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*(-?[0-9][0-9.eE+-]*)")


# Valid values seen before: producers use few sources and few attribute names, and a stream
# repeats its organizations, members and credit amounts.
_known_sources: set[str] = set()
_known_names: set[str] = set()
_known_ids: set[str] = set()
_known_credits: dict[str, int] = {}


def _remember(known: set[str], value: str) -> None:
    if len(known) >= _CACHE_SIZE:
        known.clear()
    known.add(value)


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


def _schema(message: str) -> _Invalid:
    return _Invalid("invalid_schema", message)


def _bad_id(where: str) -> NoReturn:
    raise _schema(f"{where} must be 1 to 128 characters of A-Z a-z 0-9 - _ . : @")


def _check_extensions(doc: dict[str, Any]) -> None:
    extensions = [name for name in doc if name not in CORE_ATTRIBUTES]
    if len(extensions) > MAX_EXTENSIONS:
        raise _schema(f"at most {MAX_EXTENSIONS} extension attributes are allowed")
    for name in extensions:
        if _EXTENSION_NAME(name) is None:
            raise _schema(f"{name[:40]!r} is not a CloudEvents attribute name ([a-z0-9]{{1,20}})")
        value = doc[name]
        kind = type(value)
        if kind is str:
            if len(value) > MAX_STRING_CHARS:
                raise _schema(f"{name}: at most {MAX_STRING_CHARS} characters")
        elif kind is int:
            if not INT32_MIN <= value <= INT32_MAX:
                raise _schema(f"{name}: an integer extension must fit in 32 bits")
        elif kind is not bool:
            raise _schema(f"{name}: an extension must be a string, an integer or a boolean")


def _check_attributes(attributes: object) -> dict[str, AttributeValue]:
    if attributes is None:
        return {}
    if type(attributes) is not dict:
        raise _schema("data.attributes must be an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _schema(f"data.attributes holds at most {MAX_ATTRIBUTES} entries")
    widened: dict[str, AttributeValue] | None = None
    for name, value in attributes.items():
        if name not in _known_names:
            if _ATTRIBUTE_NAME(name) is None:
                raise _schema(f"data.attributes: {name[:40]!r} is not 1 to 64 id characters")
            _remember(_known_names, name)
        kind = type(value)
        if kind is str:
            if len(value) > MAX_STRING_CHARS:
                raise _schema(f"data.attributes.{name}: at most {MAX_STRING_CHARS} characters")
            if "\x00" in value:
                # PostgreSQL cannot store it: refused here, or the batch's write would fail.
                raise _schema(f"data.attributes.{name}: a NUL character cannot be stored")
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                if widened is None:
                    widened = dict(attributes)
                widened[name] = float(value)
        elif kind is not float and kind is not bool:
            raise _schema(f"data.attributes.{name} must be a string, a number or a boolean")
    return attributes if widened is None else widened


def _credits_literal(raw: bytes) -> str:
    """The literal a float `data.credits` was written as (see "Exact credits")."""
    start = raw.find(b'"credits"')
    if (
        start >= 0
        and raw.find(b'"credits"', start + 9) < 0
        and (0x5C not in raw or b"\\u" not in raw)  # 0x5C: a backslash
    ):
        # Without \u escapes the key of data.credits is spelt as these bytes, so when they
        # occur only once, this is it.
        m = _CREDITS_VALUE.match(raw, start + 9)
        if m is not None:
            return m[1].decode()
    exact = json.loads(raw, parse_float=Decimal)["data"]["credits"]
    return str(exact)


class _Data(msgspec.Struct, forbid_unknown_fields=True):
    org_id: str
    member_id: str
    credits: str | int | float | None = None
    usage: dict[str, Any] | None = None
    reservation_id: str | None = None
    attributes: dict[str, Any] | None = None


class _Structure(msgspec.Struct, forbid_unknown_fields=True):
    """The shape of an event without extension attributes, for `msgspec` to read."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: Literal["meter.usage.v1"]
    time: str
    subject: str
    data: _Data
    datacontenttype: Literal["application/json"] | None = None


_read_structure = msgspec.json.Decoder(_Structure).decode
_NO_ATTRIBUTES: dict[str, AttributeValue] = {}
"""The attributes of every event that has none: one empty dict, read and never changed."""


def _known_id(value: str | None) -> bool:
    """Whether `value` is an id (remembered once it was one)."""
    if value in _known_ids:
        return True
    if value is None or _ID(value) is None:
        return False
    _remember(_known_ids, value)
    return True


def _known_source(source: str) -> bool:
    """Whether `source` is a URI-reference of 1 to 256 characters (remembered once it was)."""
    if source in _known_sources:
        return True
    if len(source) > MAX_SOURCE_CHARS or (
        _SOURCE_PLAIN(source) is None and _SOURCE(source) is None
    ):
        return False
    _remember(_known_sources, source)
    return True


def _micro_credits(raw: bytes, credits: Any, maximum: int) -> int:
    """Micro-credits of `data.credits` (a string, an int or a float read from `raw`)."""
    kind = type(credits)
    micro = _known_credits.get(credits) if kind is str else None
    if micro is not None and micro <= maximum:
        return micro
    try:
        micro = parse_credits(_credits_literal(raw) if kind is float else credits, maximum=maximum)
    except CreditsError as exc:
        raise _Invalid("invalid_credits", f"data.credits: {exc.code}: {exc.message}") from None
    if kind is str:
        if len(_known_credits) >= _CACHE_SIZE:
            _known_credits.clear()
        _known_credits[credits] = micro
    return micro


def _decode_structured(raw: bytes, now_ms: int, limits: EventLimits) -> DecodedEvent | None:
    """The event read by `_Structure` and checked, or None when anything is off (the reason is
    then `decode_checked`'s to give)."""
    try:
        doc = _read_structure(raw)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep
        return None
    data = doc.data
    source, subject, org_id = doc.source, doc.subject, data.org_id
    credits, usage_doc = data.credits, data.usage
    # (The caches are looked up here before the calls that would check and remember a value,
    # the credits' below too: nearly every value is known, and a call costs more than the lookup.)
    if (
        _ID(doc.id) is None  # (each event's own: checked, not remembered)
        or (subject not in _known_ids and not _known_id(subject))
        or (org_id not in _known_ids and not _known_id(org_id))
        or data.member_id != subject
        or (data.reservation_id is not None and _ID(data.reservation_id) is None)
        or (credits is None) == (usage_doc is None)
        or (source not in _known_sources and not _known_source(source))
    ):
        return None
    try:
        given = data.attributes
        if given is None:
            attributes = _NO_ATTRIBUTES
        else:
            attributes = _check_attributes(given)
            if attributes is not given:
                return (
                    None  # an integer widened to a float: the checked path reads it as orjson does
                )
        time_ms = parse_time_ms(doc.time)
        if usage_doc is not None:
            usage: Usage | None = parse_usage(usage_doc)
            micro = 0
        else:
            usage = None
            maximum = limits.max_event_credits
            if maximum > MAX_AMOUNT:
                maximum = MAX_AMOUNT
            known = _known_credits.get(credits) if type(credits) is str else None
            micro = (
                known
                if known is not None and known <= maximum
                else _micro_credits(raw, credits, maximum)
            )
    except (_Invalid, TimeError, UsageError):
        return None
    if time_ms > now_ms + limits.max_future_skew_s * 1000:
        return None
    event = UsageEvent(f"{source} {doc.id}", org_id, subject, micro, time_ms, data.reservation_id)
    return DecodedEvent(event, attributes, usage)


def decode_event(raw: bytes, now_ms: int, limits: EventLimits) -> DecodedEvent | EventError:
    """Validate one raw event; the fast path the consumer runs per message."""
    if len(raw) > MAX_EVENT_BYTES:
        return EventError("event_too_large", f"event is larger than {MAX_EVENT_BYTES} bytes")
    decoded = _decode_structured(raw, now_ms, limits)
    if decoded is not None:
        return decoded
    return decode_checked(raw, now_ms, limits)


def decode_checked(raw: bytes, now_ms: int, limits: EventLimits) -> DecodedEvent | EventError:
    """`decode_event` by hand checks of the event read into plain objects: the path that says
    what is wrong with an event."""
    if len(raw) > MAX_EVENT_BYTES:
        return EventError("event_too_large", f"event is larger than {MAX_EVENT_BYTES} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return EventError("invalid_json", f"not UTF-8 JSON: {exc}")
    try:
        return _decode(raw, doc, now_ms, limits)
    except _Invalid as exc:
        return EventError(exc.code, exc.message)


def _decode(raw: bytes, doc: Any, now_ms: int, limits: EventLimits) -> DecodedEvent:
    if type(doc) is not dict:
        raise _schema("event must be a JSON object")
    if not CORE_ATTRIBUTES.issuperset(doc):
        _check_extensions(doc)
    if doc.get("specversion") != SPECVERSION:
        raise _schema('specversion must be "1.0"')
    if doc.get("type") != EVENT_TYPE:
        raise _schema(f'type must be "{EVENT_TYPE}"')
    content_type = doc.get("datacontenttype")
    if content_type is not None and content_type != CONTENT_TYPE:
        raise _schema(f'datacontenttype must be "{CONTENT_TYPE}" when present')
    event_id = doc.get("id")
    if type(event_id) is not str or _ID(event_id) is None:
        _bad_id("id")
    source = doc.get("source")
    if type(source) is not str:
        raise _schema("source must be a string")
    if not _known_source(source):
        raise _schema("source must be a URI-reference of 1 to 256 characters")
    subject = doc.get("subject")
    if type(subject) is not str or not _known_id(subject):
        _bad_id("subject")
    time_text = doc.get("time")
    if type(time_text) is not str:
        raise _schema("time must be a string")
    data = doc.get("data")
    if type(data) is not dict:
        raise _schema("data must be an object")
    if not DATA_KEYS.issuperset(data):
        unknown = sorted(set(data) - DATA_KEYS)[0]
        raise _schema(f"data: unknown key {unknown[:40]!r}")
    org_id = data.get("org_id")
    if type(org_id) is not str or not _known_id(org_id):
        _bad_id("data.org_id")
    member_id = data.get("member_id")
    if member_id != subject and (type(member_id) is not str or _ID(member_id) is None):
        _bad_id("data.member_id")
    reservation_id = data.get("reservation_id")
    if reservation_id is not None and (
        type(reservation_id) is not str or _ID(reservation_id) is None
    ):
        _bad_id("data.reservation_id")
    credits: Any = data.get("credits")
    usage_doc = data.get("usage")
    kind = type(credits)
    if usage_doc is not None:
        if credits is not None:
            raise _schema("data carries credits or usage, not both")
    elif kind is not str and kind is not int and kind is not float:
        raise _schema("data.credits must be a string or a number")
    attributes = _check_attributes(data.get("attributes"))

    try:
        time_ms = parse_time_ms(time_text)
    except TimeError as exc:
        raise _Invalid(exc.code, f"time: {exc.message}") from None
    usage: Usage | None = None
    micro = 0
    if usage_doc is not None:
        try:
            usage = parse_usage(usage_doc)
        except UsageError as exc:
            raise _Invalid("invalid_usage", f"data.{exc.message}") from None
    else:
        micro = _micro_credits(raw, credits, min(limits.max_event_credits, MAX_AMOUNT))
    if subject != member_id:
        raise _Invalid("subject_mismatch", "subject must equal data.member_id")
    if time_ms > now_ms + limits.max_future_skew_s * 1000:
        raise _Invalid("time_in_future", "time is too far in the future")
    return DecodedEvent(
        UsageEvent(f"{source} {event_id}", org_id, member_id, micro, time_ms, reservation_id),
        attributes,
        usage,
    )


# --- encoder ----------------------------------------------------------------------------------


def encode_event(
    *,
    event_id: str,
    source: str,
    org_id: str,
    member_id: str,
    credits: int | None = None,
    time_ms: int,
    reservation_id: str | None = None,
    attributes: dict[str, AttributeValue] | None = None,
    credits_as: Literal["string", "number"] = "string",
    usage: Usage | None = None,
) -> bytes:
    """A usage event as bytes; `credits` in micro-credits, or `usage` (one of the two),
    `time_ms` in epoch ms.

    Credits are written exactly, as a JSON string by default or as a JSON number. Nothing is
    validated: decoding the result of valid arguments gives them back."""
    data: dict[str, Any] = {"org_id": org_id, "member_id": member_id}
    if usage is not None:
        data["usage"] = {"model": usage.model, **usage.quantities}
    else:
        text = format_credits(credits or 0)
        data["credits"] = text if credits_as == "string" else orjson.Fragment(text.encode())
    if reservation_id is not None:
        data["reservation_id"] = reservation_id
    if attributes:
        data["attributes"] = attributes
    return orjson.dumps(
        {
            "specversion": SPECVERSION,
            "id": event_id,
            "source": source,
            "type": EVENT_TYPE,
            "time": format_time(time_ms),
            "subject": member_id,
            "datacontenttype": CONTENT_TYPE,
            "data": data,
        }
    )
