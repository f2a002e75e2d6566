"""The usage event as a pydantic model: the declarative twin of `schemas.events.decode_event`.

`UsageEventModel` is the source of the exported JSON Schema (`schemas/usage-event.schema.json`)
and of the HTTP API's documentation. `validate_event` runs it on raw bytes and gives the same
verdicts as the fast decoder; a test holds the two to that on many good and bad events. The rules
are listed in `schemas.events`. Shared with the decoder are only the parsers of the two values that
need one (`meter.money.parse_credits`, `schemas.events.parse_time_ms`); ids, source, names, sizes
and shapes are checked here by pydantic's own constraints.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from meter.engine.types import MAX_AMOUNT, UsageEvent
from meter.money import INT64_MAX, CreditsError, format_credits, parse_credits
from meter.rating.dimensions import (
    DIMENSIONS,
    MAX_QUANTITY,
    MODEL_PATTERN,
    Usage,
    UsageError,
    parse_usage,
)
from schemas.events import (
    ATTRIBUTE_NAME_PATTERN,
    CODE_PRIORITY,
    CORE_ATTRIBUTES,
    EXTENSION_NAME_PATTERN,
    ID_PATTERN,
    INT32_MAX,
    INT32_MIN,
    INT64_MIN,
    MAX_ATTRIBUTES,
    MAX_EVENT_BYTES,
    MAX_EXTENSIONS,
    MAX_SOURCE_CHARS,
    MAX_STRING_CHARS,
    NO_NUL_PATTERN,
    SOURCE_PATTERN,
    TIME_PATTERN,
    AttributeValue,
    DecodedEvent,
    EventError,
    EventLimits,
    TimeError,
    event_key,
    format_time,
    parse_time_ms,
)


def _validate_time(value: object) -> int:
    if type(value) is not str:
        raise PydanticCustomError("invalid_schema", "time must be a string")
    try:
        return parse_time_ms(value)
    except TimeError as exc:
        raise PydanticCustomError(exc.code, exc.message) from None


def _validate_credits(value: object, info: ValidationInfo) -> int:
    maximum = MAX_AMOUNT
    if isinstance(info.context, dict) and "limits" in info.context:
        maximum = min(info.context["limits"].max_event_credits, MAX_AMOUNT)
    if isinstance(value, Decimal):
        value = str(value)  # a JSON number read with parse_float=Decimal: every digit kept
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PydanticCustomError("invalid_schema", "credits must be a string or a number")
    try:
        if isinstance(value, float):
            raise CreditsError("inexact", "credits arrived as a float, without its digits")
        return parse_credits(value, maximum=maximum)
    except CreditsError as exc:
        raise PydanticCustomError(
            "invalid_credits", "{code}: {detail}", {"code": exc.code, "detail": exc.message}
        ) from None


def _validate_attribute_value(value: object) -> AttributeValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise PydanticCustomError("invalid_schema", "a number attribute must be finite")
        return number
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise PydanticCustomError("invalid_schema", "string attribute too long")
        if "\x00" in value:
            raise PydanticCustomError("invalid_schema", "a NUL character cannot be stored")
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    raise PydanticCustomError("invalid_schema", "an attribute must be a string, number or boolean")


Id = Annotated[str, Field(pattern=ID_PATTERN)]
EventTime = Annotated[
    int,
    PlainValidator(_validate_time),
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": TIME_PATTERN,
            "description": "RFC 3339 with an offset; at most max_future_skew_s in the future.",
        }
    ),
]
Credits = Annotated[
    int,
    PlainValidator(_validate_credits),
    PlainSerializer(format_credits, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": (
                "Credits used, a decimal with at most 6 fractional digits (trailing zeros aside),"
                " not negative, at most max_event_credits."
            ),
        }
    ),
]


def _validate_usage(value: object) -> Usage:
    if isinstance(value, dict):
        # parse_usage refuses what is not an int; a Decimal (a JSON fraction) is not one.
        value = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in value.items()}
    try:
        return parse_usage(value)
    except UsageError as exc:
        raise PydanticCustomError("invalid_usage", "{detail}", {"detail": exc.message}) from None


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {"model": usage.model, **usage.quantities}


UsageQuantities = Annotated[
    Usage,
    PlainValidator(_validate_usage),
    PlainSerializer(_usage_json),
    WithJsonSchema(
        {
            "type": "object",
            "description": (
                "Usage to be rated into credits by the organization's rate card: a model and a"
                " non-negative integer quantity per dimension (at least one)."
            ),
            "properties": {
                "model": {"type": "string", "pattern": MODEL_PATTERN},
                **{
                    name: {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_QUANTITY,
                        "description": meaning,
                    }
                    for name, meaning in DIMENSIONS.items()
                },
            },
            "required": ["model"],
            "minProperties": 2,
            "additionalProperties": False,
        }
    ),
]
AttributeName = Annotated[str, Field(pattern=ATTRIBUTE_NAME_PATTERN)]
_ATTRIBUTE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": MAX_STRING_CHARS, "pattern": NO_NUL_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
    ]
}
Attribute = Annotated[
    AttributeValue, PlainValidator(_validate_attribute_value), WithJsonSchema(_ATTRIBUTE_SCHEMA)
]


class UsageData(BaseModel):
    """`data` of a usage event: `credits`, or `usage` to be rated."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        json_schema_extra={"oneOf": [{"required": ["credits"]}, {"required": ["usage"]}]},
    )

    org_id: Id
    member_id: Id
    credits: Credits | None = None
    usage: UsageQuantities | None = None
    reservation_id: Id | None = None
    attributes: Annotated[
        dict[AttributeName, Attribute] | None,
        Field(max_length=MAX_ATTRIBUTES),
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "maxProperties": MAX_ATTRIBUTES,
                        "propertyNames": {"pattern": ATTRIBUTE_NAME_PATTERN},
                        "additionalProperties": _ATTRIBUTE_SCHEMA,
                    },
                    {"type": "null"},
                ],
                "description": "Free attributes for reporting (model, request id ...).",
            }
        ),
    ] = None

    @model_validator(mode="after")
    def _credits_or_usage(self) -> UsageData:
        if (self.credits is None) == (self.usage is None):
            raise PydanticCustomError("invalid_schema", "data carries credits or usage, not both")
        return self


_EXTENSION_NAME = re.compile(EXTENSION_NAME_PATTERN)
_EXTENSION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": MAX_STRING_CHARS},
        {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX},
        {"type": "boolean"},
    ]
}


class UsageEventModel(BaseModel):
    """A usage event as a pydantic model; its JSON Schema is `schemas/usage-event.schema.json`.

    JSON numbers must reach it with their digits: validate ``json.loads(raw,
    parse_float=Decimal)``, as `validate_event` does. A plain float `credits` is refused
    (``inexact``). Pass ``context={"now_ms": ..., "limits": ...}`` to apply the future-skew and
    maximum-credits rules.
    """

    model_config = ConfigDict(
        strict=True,
        extra="allow",
        frozen=True,
        title="UsageEvent",
        json_schema_extra={
            "description": "A metered usage event: CloudEvents 1.0, JSON structured mode.",
            "propertyNames": {"pattern": EXTENSION_NAME_PATTERN},
            "maxProperties": len(CORE_ATTRIBUTES) + MAX_EXTENSIONS,
            "additionalProperties": _EXTENSION_SCHEMA,
        },
    )

    specversion: Literal["1.0"]
    id: Id
    source: Annotated[str, Field(max_length=MAX_SOURCE_CHARS, pattern=SOURCE_PATTERN)]
    type: Literal["meter.usage.v1"]
    time: EventTime
    subject: Id
    datacontenttype: Literal["application/json"] | None = None
    data: UsageData

    @model_validator(mode="before")
    @classmethod
    def _extensions(cls, value: Any) -> Any:
        """Extension attributes (what `extra="allow"` lets through) against the JSON Schema's
        `propertyNames`, `maxProperties` and `additionalProperties`."""
        if not isinstance(value, dict):
            return value
        names = [name for name in value if name not in CORE_ATTRIBUTES]
        if len(names) > MAX_EXTENSIONS:
            raise PydanticCustomError("invalid_schema", "too many extension attributes")
        for name in names:
            if _EXTENSION_NAME.fullmatch(name) is None:
                raise PydanticCustomError("invalid_schema", "bad extension attribute name")
            ext = value[name]
            if isinstance(ext, bool):
                continue
            if isinstance(ext, str) and len(ext) <= MAX_STRING_CHARS:
                continue
            if isinstance(ext, int) and INT32_MIN <= ext <= INT32_MAX:
                continue
            raise PydanticCustomError("invalid_schema", "bad extension attribute value")
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> UsageEventModel:
        if self.subject != self.data.member_id:
            raise PydanticCustomError("subject_mismatch", "subject must equal data.member_id")
        context = info.context
        if (
            isinstance(context, dict)
            and "now_ms" in context
            and "limits" in context
            and self.time > context["now_ms"] + context["limits"].max_future_skew_s * 1000
        ):
            raise PydanticCustomError("time_in_future", "time is too far in the future")
        return self

    def to_decoded(self) -> DecodedEvent:
        """What the engine settles, as `decode_event` returns it."""
        data = self.data
        return DecodedEvent(
            UsageEvent(
                event_key(self.source, self.id),
                data.org_id,
                data.member_id,
                data.credits or 0,
                self.time,
                data.reservation_id,
            ),
            dict(data.attributes or {}),
            data.usage,
        )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def validate_event(raw: bytes, now_ms: int, limits: EventLimits) -> DecodedEvent | EventError:
    """The same verdicts as `decode_event`, through `UsageEventModel`: slower, for tests and for
    callers that want the model's error details."""
    if len(raw) > MAX_EVENT_BYTES:
        return EventError("event_too_large", f"event is larger than {MAX_EVENT_BYTES} bytes")
    try:
        orjson.loads(raw)  # the one definition of well-formed JSON
        doc = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return EventError("invalid_json", f"not UTF-8 JSON: {exc}")
    try:
        model = UsageEventModel.model_validate(doc, context={"now_ms": now_ms, "limits": limits})
    except ValidationError as exc:
        return _event_error(exc)
    return model.to_decoded()


def _event_error(exc: ValidationError) -> EventError:
    best: tuple[int, str, str] | None = None
    for err in exc.errors():
        code = err["type"] if err["type"] in CODE_PRIORITY else "invalid_schema"
        where = ".".join(str(part) for part in err["loc"])
        candidate = (
            CODE_PRIORITY.index(code),
            code,
            f"{where}: {err['msg']}" if where else err["msg"],
        )
        if best is None or candidate[0] < best[0]:
            best = candidate
    assert best is not None
    return EventError(best[1], best[2])
