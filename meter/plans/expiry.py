"""Period rollover: what expired, as entries. Pure, no I/O.

Counters need no rollover (each period has its own), limits and memberships carry over by
themselves; what a period's end leaves behind is the unused remainder of buckets that expired in it
(seat and on-demand buckets at the period end, packs at their own dates). Each becomes one expiry
entry, recorded once per bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meter.engine.types import Grant, Kind, Period


@dataclass(frozen=True, slots=True)
class ExpiryEntry:
    org_id: str
    bucket_id: str
    kind: Kind
    member_id: str | None
    amount: int
    """Micro-credits left in the bucket when it expired."""
    expired_at_ms: int


def expiry_entries(
    grants: Iterable[Grant], remaining: Mapping[str, int], period: Period
) -> list[ExpiryEntry]:
    """Entries for the buckets that expired within `period` (`start < expires_at <= end`) with
    credits left, given `remaining` micro-credits per bucket id (e.g. `Engine.balances`). Buckets
    missing from `remaining` are taken as untouched (their full amount)."""
    out = [
        ExpiryEntry(
            org_id=g.org_id,
            bucket_id=g.bucket_id,
            kind=g.kind,
            member_id=g.member_id,
            amount=remaining.get(g.bucket_id, g.amount),
            expired_at_ms=g.expires_at_ms,
        )
        for g in grants
        if period.start_ms < g.expires_at_ms <= period.end_ms
    ]
    return sorted((e for e in out if e.amount > 0), key=lambda e: (e.expired_at_ms, e.bucket_id))
