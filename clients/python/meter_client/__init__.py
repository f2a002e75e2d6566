"""Python client of meter: quota checks, reservations, holds and usage events.

`MeterClient` (sync) and `AsyncMeterClient` (asyncio) share results (`Decision`, `Recorded`),
errors (`MeterError` and its kinds, each carrying the API's stable `code`) and policies
(`fail_open`, `fail_closed`). See `clients/python/README.md`.
"""

from meter_client.aio import AsyncHold, AsyncMeterClient
from meter_client.client import Hold, MeterClient
from meter_client.events import usage_event
from meter_client.spool import Spool
from meter_client.types import (
    Amount,
    Conflict,
    CreditsIn,
    Decision,
    Forbidden,
    InvalidInput,
    MeterError,
    MeterUnavailable,
    NotFound,
    Policy,
    QuotaDenied,
    Recorded,
    Unauthenticated,
    UsageIn,
    credits_text,
)
from meter_client.usage import Prices, TokenUsage, from_anthropic, from_gemini, from_openai

__all__ = [
    "Amount",
    "AsyncHold",
    "AsyncMeterClient",
    "Conflict",
    "CreditsIn",
    "Decision",
    "Forbidden",
    "Hold",
    "InvalidInput",
    "MeterClient",
    "MeterError",
    "MeterUnavailable",
    "NotFound",
    "Policy",
    "Prices",
    "QuotaDenied",
    "Recorded",
    "Spool",
    "TokenUsage",
    "Unauthenticated",
    "UsageIn",
    "credits_text",
    "from_anthropic",
    "from_gemini",
    "from_openai",
    "usage_event",
]
