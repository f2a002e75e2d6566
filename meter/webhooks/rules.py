"""The pure rules of webhooks: event types, subscriptions, signatures, the retry schedule.

Signatures follow the Standard Webhooks specification: a secret is `whsec_` and the base64 of
random bytes; a message is signed as `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with
each secret in force (the current one, and the previous one during a rotation's grace period),
the signatures separated by spaces in `webhook-signature`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
from collections.abc import Iterable, Sequence

from meter.alerts import KINDS

ALERT_TYPES = tuple(f"alert.{kind}" for kind in KINDS.values())
"""One per alert kind of `meter.alerts` (`alert.shared_pool_low` is the pool running low)."""
CHARGE_DUE = "charge.due"
DEAD_LETTER = "dead_letter"
"""An event of the organization could not settle (a `dead_letters` row, migration 0021)."""
TEST = "webhook.test"
"""Sent by `POST .../test` to one endpoint, whatever it subscribes to."""
ALL_ALERTS = "alert.*"
EVENT_TYPES = (*ALERT_TYPES, ALL_ALERTS, CHARGE_DUE, DEAD_LETTER)
"""What an endpoint may subscribe to."""

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24

DEFAULT_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Waits before the 2nd, 3rd, ... attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h (about 18 h)."""
JITTER = 0.2
"""Each wait is scaled by a random factor in [1 - JITTER, 1 + JITTER]."""


def subscribes(event_types: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to `event_types` receives `event_type` (as the trigger of
    migration 0018 decides)."""
    types = set(event_types)
    return event_type in types or (event_type.startswith("alert.") and ALL_ALERTS in types)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<signature>` of `body` sent as `message_id` at `timestamp` (Unix seconds)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: one signature per secret in force, space separated."""
    return " ".join(sign(s, message_id, timestamp, body) for s in secrets_)


def headers(
    secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, message_id, timestamp, body),
        "content-type": "application/json",
    }


def retry_delay(attempt: int, schedule: Sequence[float], rand: float | None = None) -> float | None:
    """Seconds to wait after the `attempt`-th failed attempt (1-based) before the next one, with
    jitter (`rand` in [0, 1) replaces the random draw); None once the schedule is exhausted."""
    if attempt < 1 or attempt > len(schedule):
        return None
    r = random.random() if rand is None else rand
    return schedule[attempt - 1] * (1.0 - JITTER + 2.0 * JITTER * r)
