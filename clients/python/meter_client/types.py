"""Results, errors and credits of the client: what every call returns or raises.

Credits travel as exact decimal strings (at most 6 fractional digits, the API's unit is the
micro-credit); the client never turns them into floats. Inputs take `str`, `int` (whole credits)
or `decimal.Decimal`; outputs are `Decimal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Policy = Literal["fail_open", "fail_closed"]
"""What a check or reservation answers when meter cannot: allow (`fail_open`) or deny."""

CreditsIn = str | int | Decimal
"""Credits as the caller gives them: a decimal string, whole credits, or a `Decimal`."""
UsageIn = Mapping[str, str | int]
"""Usage for meter to rate with the organization's rate card: `{"model": ..., "<dimension>":
count, ...}` (e.g. `TokenUsage.meter_usage()`)."""
Amount = CreditsIn | UsageIn
"""What a call costs: credits, or usage that meter rates."""

MAX_FRACTION_DIGITS = 6
_MICRO = Decimal("0.000001")
POLICY_REASON = "meter_unavailable"
"""`Decision.reason` of an answer decided by policy."""


def credits_text(value: CreditsIn) -> str:
    """`value` as the API's exact decimal string; `ValueError` for floats, negatives, NaN,
    infinities and more than 6 fractional digits."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise TypeError(f"credits must be str, int or Decimal, not {type(value).__name__}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"credits {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"credits {value!r} is not finite")
    if number < 0:
        raise ValueError(f"credits {value!r} is negative")
    try:
        micro = number.quantize(_MICRO)
    except InvalidOperation:
        raise ValueError(f"credits {value!r} is too large") from None
    if micro != number:
        raise ValueError(f"credits {value!r} has more than {MAX_FRACTION_DIGITS} fractional digits")
    text = format(micro, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def credits_out(value: object) -> Decimal | None:
    """A credits string of a response as a `Decimal` (None stays None)."""
    return None if value is None else Decimal(str(value))


def _instant(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


# --- errors ---------------------------------------------------------------------------------


class MeterError(Exception):
    """An answer of meter that is not a success, or no answer at all.

    `code` is the API's stable error code (`error.code` of the body), or one of the client's own
    when meter did not answer: `timeout`, `connect_error`, `transport_error`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: list[Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details or []
        self.request_id = request_id


class MeterUnavailable(MeterError):
    """Meter could not answer: no connection, a timeout, 503 or 5xx, or 429 (rationed key
    lookups). Retry later; checks and reservations apply their policy instead of raising it."""


class Unauthenticated(MeterError):
    """401: no key, or an unknown or revoked one."""


class Forbidden(MeterError):
    """403: the key's scope does not allow the call."""


class NotFound(MeterError):
    """404: no such object, or one of another organization."""


class Conflict(MeterError):
    """409: the request contradicts what exists (a reused id with other content, for one)."""


class InvalidInput(MeterError):
    """400, 413, 415 or 422: the request itself is wrong; sending it again will not help."""


_BY_STATUS: dict[int, type[MeterError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    415: InvalidInput,
    422: InvalidInput,
    429: MeterUnavailable,
}


def error_from(status: int, body: Any, request_id: str | None = None) -> MeterError:
    """The typed error of a non-2xx answer (`{"error": {"code", "message", "details"}}`)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"http_{status}", "message": "unexpected answer", "details": []}
    kind = _BY_STATUS.get(status, MeterUnavailable if status >= 500 else MeterError)
    return kind(
        str(error.get("code")),
        str(error.get("message")),
        status=status,
        details=list(error.get("details") or []),
        request_id=request_id,
    )


class QuotaDenied(Exception):
    """A hold was refused (by meter, or by the `fail_closed` policy); `decision` says why."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"denied: {decision.reason}")
        self.decision = decision


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of a check or a reservation.

    `decided_by` is `"meter"` when meter answered, `"policy"` when it could not and the call's
    policy decided; then `reason` is `"meter_unavailable"` and `error` says what went wrong."""

    allowed: bool
    reason: str | None
    decided_by: Literal["meter", "policy"] = "meter"
    available: dict[str, Decimal] = field(default_factory=dict)
    member_remaining: Decimal | None = None
    group_remaining: Decimal | None = None
    period_end: datetime | None = None
    reservation_id: str | None = None
    reservation_expires_at: datetime | None = None
    error: MeterError | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Decision:
        """A decision from a `CheckResponse` body."""
        return cls(
            allowed=bool(body["allowed"]),
            reason=body.get("reason"),
            available={k: Decimal(str(v)) for k, v in (body.get("available") or {}).items()},
            member_remaining=credits_out(body.get("member_remaining")),
            group_remaining=credits_out(body.get("group_remaining")),
            period_end=_instant(body.get("period_end")),
            reservation_id=body.get("reservation_id"),
            reservation_expires_at=_instant(body.get("reservation_expires_at")),
        )

    @classmethod
    def by_policy(
        cls, policy: Policy, error: MeterError, reservation_id: str | None = None
    ) -> Decision:
        """The decision `policy` makes when meter could not answer (`error`)."""
        if policy not in ("fail_open", "fail_closed"):
            raise ValueError(f"policy must be fail_open or fail_closed, not {policy!r}")
        allowed = policy == "fail_open"
        return cls(
            allowed=allowed,
            reason=POLICY_REASON,
            decided_by="policy",
            reservation_id=reservation_id if allowed else None,
            error=error,
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """A usage event handed to meter (`spooled` False: acknowledged with 202) or to the local
    spool (`spooled` True: it will be sent in the background)."""

    event_id: str
    source: str
    spooled: bool = False


def amount_fields(amount: Amount) -> dict[str, object]:
    """The request fields of `amount`: `{"credits": "<decimal>"}`, or `{"usage": {...}}` for
    usage (a model name and non-negative integer counts; meter checks the dimensions)."""
    if isinstance(amount, Mapping):
        model = amount.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("usage needs a model name")
        counts = {k: v for k, v in amount.items() if k != "model"}
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"usage {name!r} must be a non-negative integer, not {count!r}")
        return {"usage": {"model": model, **counts}}
    return {"credits": credits_text(amount)}
