"""Typed domain errors with stable codes.

Every error the service reports to a caller is one of these. Each carries a stable machine-readable
`code` (part of the public contract) and a human message; the HTTP edge (`meter.api`) alone maps
the classes to status codes.
"""

from __future__ import annotations

from typing import Any


class MeterError(Exception):
    """Base of all domain errors."""

    code = "error"

    def __init__(
        self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []


class MalformedRequest(MeterError):
    """The request could not be read at all: not JSON, wrong content type."""

    code = "malformed_request"


class InvalidInput(MeterError):
    """Well-formed but not valid: a field missing, out of range, over-precise credits."""

    code = "invalid_input"


class Unauthenticated(MeterError):
    """No credentials, or credentials that are unknown or revoked."""

    code = "unauthenticated"


class Forbidden(MeterError):
    """Authenticated, addressing its own organization, but the key's scope does not allow this."""

    code = "forbidden"


class NotFound(MeterError):
    """The addressed resource does not exist, or belongs to another organization."""

    code = "not_found"


class Conflict(MeterError):
    """The request contradicts the current state: a duplicate id, an immutable object."""

    code = "conflict"


class PayloadTooLarge(MeterError):
    code = "payload_too_large"


class UnsupportedMediaType(MeterError):
    code = "unsupported_media_type"


class MethodNotAllowed(MeterError):
    code = "method_not_allowed"


class RateLimited(MeterError):
    """Too many requests of a kind this process rations (unknown keys); the caller may retry."""

    code = "rate_limited"


class Unavailable(MeterError):
    """A dependency (Kafka, PostgreSQL, Redis) did not answer in time; the caller may retry."""

    code = "unavailable"


class OrgQuarantined(Unavailable):
    """The organization exists but its state could not be applied; it is set aside until an
    operator releases it (`meter quarantine`)."""

    code = "org_quarantined"
