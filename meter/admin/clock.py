"""Instants: aware datetimes at the edges, integer epoch milliseconds for the engine."""

from __future__ import annotations

import datetime as dt
import time

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(instant: dt.datetime) -> int:
    return (instant - EPOCH) // _MS


def from_ms(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)
