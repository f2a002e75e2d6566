"""The credit engine's data: what goes in and what comes out.

Shared by the pure reference model (`meter.engine.model`) and the Redis engine
(`meter.engine.redis`), which must give identical results for identical calls.

Conventions:
- amounts are integer micro-credits (1 credit = 1_000_000);
- instants are integer epoch milliseconds (UTC); no floats anywhere;
- the built-in billing group `Unassigned` is `UNASSIGNED` (""), never a stored group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

import msgspec

MICRO = 1_000_000
UNASSIGNED = ""


class Kind(StrEnum):
    """Bucket kinds, in burn-down order."""

    SEAT = "seat"
    PERSONAL = "personal"
    SHARED = "shared"
    ON_DEMAND = "on_demand"


KIND_RANK = {Kind.SEAT: 0, Kind.PERSONAL: 1, Kind.SHARED: 2, Kind.ON_DEMAND: 3}


class OrgStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    SUSPENDED = "suspended"


class LimitPolicy(StrEnum):
    """What a member limit counts."""

    ALL = "all"
    SHARED = "shared"


class PeriodKind(StrEnum):
    MONTHLY = "monthly"
    ROLLING = "rolling"


class Reason(StrEnum):
    """Stable reason codes of a denied check (DESIGN 2.5) and of an event that cannot settle."""

    UNKNOWN_ORG = "unknown_org"
    UNKNOWN_MEMBER = "unknown_member"
    ORG_INACTIVE = "org_inactive"
    NO_SEAT = "no_seat"
    MEMBER_LIMIT_REACHED = "member_limit_reached"
    GROUP_LIMIT_REACHED = "group_limit_reached"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    ORG_QUARANTINED = "org_quarantined"
    """The organization exists but its state could not be applied (`meter.quarantine`)."""
    COUNTER_OVERFLOW = "counter_overflow"
    """An event whose settlement would push a counter of its period past `MAX_AMOUNT`: refused,
    nothing changed (the caller dead-letters it)."""


@dataclass(frozen=True, slots=True)
class OrgConfig:
    """What the engine needs to know of an organization and its plan."""

    org_id: str
    status: OrgStatus
    period_kind: PeriodKind
    anchor_ms: int
    """Billing anchor: start of period 0."""
    rolling_days: int = 30
    """Period length for `PeriodKind.ROLLING`."""
    limit_policy: LimitPolicy = LimitPolicy.ALL
    default_member_limit: int | None = None
    """Limit of a member with none set: None = unlimited, 0 = may not use credits."""
    grace_ms: int = 0
    """How long after its end a period still accepts late events."""


@dataclass(frozen=True, slots=True)
class MemberConfig:
    org_id: str
    member_id: str
    seated: bool = True
    member_limit: int | None = None
    """Per-period limit in micro-credits; None falls back to the org's default."""
    billing_group: str = UNASSIGNED


@dataclass(frozen=True, slots=True)
class BillingGroupConfig:
    org_id: str
    group_id: str
    limit: int | None = None
    """Per-period limit in micro-credits; None = unlimited."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A bucket of credits. `member_id` is None for an organization's shared pool."""

    org_id: str
    bucket_id: str
    kind: Kind
    amount: int
    valid_from_ms: int
    expires_at_ms: int
    granted_at_ms: int
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int


class UsageEvent(msgspec.Struct, frozen=True, gc=False):
    """One usage event as the engine sees it (already validated).

    A `msgspec.Struct`, not a frozen dataclass: the consumer builds one per event it reads, and
    a Struct is built in a tenth of the time (a frozen dataclass's `__init__` sets each field
    through `object.__setattr__`). Its fields are strings, integers and None, so it can hold no
    reference cycle and the garbage collector need not track it (`gc=False`)."""

    key: str
    """Idempotency key, built by the caller from the CloudEvents `source` and `id`."""
    org_id: str
    member_id: str
    credits: int
    time_ms: int
    reservation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Line:
    bucket_id: str
    kind: Kind
    amount: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """The result of settling one event. `reason` set means it did not settle (dead-letter)."""

    key: str
    org_id: str
    member_id: str
    credits: int
    time_ms: int
    period: Period | None
    billing_group: str = UNASSIGNED
    lines: tuple[Line, ...] = ()
    unfunded: int = 0
    member_limited: bool = False
    group_limited: bool = False
    late: bool = False
    reservation_id: str | None = None
    reason: Reason | None = None
    duplicate: bool = False
    """True when this is the stored result of an earlier settlement of the same key."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    reason: Reason | None
    available: dict[Kind, int] = field(default_factory=dict)
    member_remaining: int | None = None
    group_remaining: int | None = None
    period_end_ms: int | None = None
    reservation_id: str | None = None
    reservation_expires_ms: int | None = None


@dataclass(frozen=True, slots=True)
class VoidResult:
    key: str
    voided: bool
    """False when the key was never settled."""
    returned: tuple[Line, ...] = ()
    """Credits put back, per bucket (buckets expired at void time get nothing back)."""
    duplicate: bool = False


MAX_HOLD_MS = 15 * 60 * 1000
DEFAULT_HOLD_MS = 60 * 1000

MemberEncoding = Literal["binary", "text"]
"""How the Redis engine writes a member's value (and the shared pool's): it reads both. `text` is
the only one that earlier releases read: a rolling upgrade from one of them writes `text` until
no process of it is left (meter/engine/README.md, "Member encodings")."""

MAX_AMOUNT = 2**53 - 1
"""Largest amount (and largest sum kept in one counter) the engine accepts, in micro-credits.

The Lua scripts compute with doubles, which are exact integers up to 2**53 (about 9 billion
credits); amounts and instants are validated against it before they reach either engine."""


class EngineInputError(ValueError):
    """A call the engine refuses before touching any state: bad id, amount or instant."""


def check_amount(name: str, value: int) -> int:
    """`value` if it is an int in `0..MAX_AMOUNT`, else `EngineInputError`."""
    if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
        raise EngineInputError(f"{name} must be an integer in 0..{MAX_AMOUNT}, got {value!r}")
    return value


def check_instant(name: str, value: int) -> int:
    """`value` if it is an int epoch-ms instant within +-MAX_AMOUNT, else `EngineInputError`."""
    if type(value) is not int or not -MAX_AMOUNT <= value <= MAX_AMOUNT:
        raise EngineInputError(f"{name} must be an integer epoch-ms instant, got {value!r}")
    return value


_CONTROL = re.compile("[\x00-\x1f\x7f]").search
"""The first control character of a string (C0 or DEL), if any."""


def check_id(name: str, value: str, *, empty: bool = False) -> str:
    """`value` if it is a string of printable characters (no control characters, which the Redis
    encoding uses as separators), non-empty unless `empty`; else `EngineInputError`."""
    if not isinstance(value, str) or (not value and not empty):
        raise EngineInputError(f"{name} must be a non-empty string, got {value!r}")
    if _CONTROL(value) is not None:
        raise EngineInputError(f"{name} must not contain control characters: {value!r}")
    return value


class Engine(Protocol):
    """What both engine implementations offer. The Redis one is async; the model is sync and
    offers the same methods without `await` (see `model.Ledger`)."""

    async def put_org(self, org: OrgConfig, *, create: bool = True) -> None:
        """Create or replace the organization's config; with `create` False only replace it (an
        organization whose state was lost stays absent, to be rebuilt)."""

    async def put_member(self, member: MemberConfig) -> None: ...

    async def remove_member(self, org_id: str, member_id: str) -> None: ...

    async def put_billing_group(self, group: BillingGroupConfig) -> None: ...

    async def delete_billing_group(self, org_id: str, group_id: str) -> None:
        """Members of the group fall back to Unassigned from now on."""

    async def apply_grant(self, grant: Grant) -> bool:
        """Add a bucket; idempotent by bucket id. True when it was new."""

    async def revoke_grant(
        self, org_id: str, member_id: str | None, bucket_id: str, now_ms: int
    ) -> int | None:
        """Revoke a bucket (owned by `member_id`, or the shared pool when None) from `now_ms`: its
        credits left become 0 and it expires at `now_ms` if it expires later, so nothing draws
        from it and voids return nothing to it. Idempotent. Returns the credits it had left, None
        when the owner has no such bucket."""

    async def settle_batch(
        self,
        org_id: str,
        events: Sequence[UsageEvent],
        now_ms: int,
        *,
        trusted: bool = False,
    ) -> list[Settlement]:
        """Settle `events` (all of `org_id`) in order. `trusted=True` skips the per-event input
        checks for events the caller already validated (`schemas.events.decode_event`: ids of
        printable characters, amounts and instants in range, the org of each event `org_id`);
        untrusted input must not be passed with it."""

    async def confirm(self, org_id: str, keys: Sequence[str]) -> None:
        """Forget stored results the settlement store now holds."""

    async def check(
        self, org_id: str, member_id: str, credits: int, now_ms: int
    ) -> CheckResult: ...

    async def reserve(
        self,
        org_id: str,
        member_id: str,
        credits: int,
        now_ms: int,
        reservation_id: str,
        ttl_ms: int = DEFAULT_HOLD_MS,
    ) -> CheckResult: ...

    async def release(self, org_id: str, reservation_id: str, now_ms: int) -> bool:
        """True when a live hold was released."""

    async def void(
        self, org_id: str, key: str, now_ms: int, settlement: Settlement | None = None
    ) -> VoidResult:
        """Undo a settlement. The engine uses its stored result while the key is unconfirmed;
        after `confirm` the caller passes the `settlement` it holds (from the settlement store)."""

    async def usage(self, org_id: str, now_ms: int) -> dict[str, int]:
        """Non-zero counters of the period containing `now_ms`: `member:<id>` (all drawn),
        `member_shared:<id>` (shared drawn), `group:<id>` (drawn, "" = Unassigned), `drawn`,
        `unfunded`."""

    async def balances(self, org_id: str, now_ms: int) -> dict[str, int]:
        """Credits left per bucket id (expired and empty buckets included), for comparisons."""

    async def restore(
        self, org_id: str, balances: Mapping[str, int], usage: Mapping[str, int], now_ms: int
    ) -> None:
        """Put an organization's hot state back after its config and grants were put again on an
        empty store (the rebuild from PostgreSQL).

        Preconditions: `put_org`, `put_member`, `remove_member`, `put_billing_group` and
        `apply_grant` were called for the org (every bucket named in `balances` exists, once).
        Then:
        - `balances` (bucket id -> credits left, the format of `balances()`) sets what is left of
          each named bucket; buckets not named keep what `apply_grant` gave them. A bucket id must
          name exactly one bucket of the org (`EngineInputError` otherwise, nothing changed).
        - `usage` replaces the counters of the period containing `now_ms`, in the format of
          `usage()`: `member:<member_id>` credits the member drew, of every kind, this period;
          `member_shared:<member_id>` the part of it drawn from the shared pool;
          `group:<group_id>` credits drawn by settlements attributed to the billing group
          (`group:` alone is Unassigned); `drawn` the organization's total drawn; `unfunded` the
          organization's total unfunded. Values are non-negative; absent names are 0. Counters
          of other periods are left as they are: to restore a period still open in its grace
          window, call `restore` again with a `now_ms` inside it.
        - live holds and stored (unconfirmed) settlement results of the org are dropped.
        """

    async def prune(self, org_id: str, now_ms: int) -> int:
        """Drop buckets no event can draw from any more: expired, and the period containing their
        last valid instant closed (end + grace) more than a week before `now_ms`. Voids return
        nothing to expired buckets, so no later call changes its result. Returns the number of
        buckets dropped (they leave `balances()` too)."""

    async def has_org(self, org_id: str) -> bool:
        """Whether the store holds the organization's state (False: never applied, lost, or
        quarantined)."""


def check_org_id(value: str) -> str:
    """`check_id` for an organization id, which must not contain braces: it becomes the Redis
    hash tag `{org_id}` of every key of the organization."""
    check_id("org_id", value)
    if "{" in value or "}" in value:
        raise EngineInputError(f"org_id must not contain braces: {value!r}")
    return value
