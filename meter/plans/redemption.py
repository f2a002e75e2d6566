"""Redemption codes: what redeeming one adds to an organization. Pure, no I/O.

- Monthly seat-month code: N seat-months in one lot, usable at once, valid 3 months.
- Annual seat-month code: a multiple of 12 seat-months in 12 equal installments. Installment i is
  returned on the redemption date moved by i calendar months, counted from the redemption date and
  clamped to the month's last day (Mar 31 -> Apr 30 -> May 31 ... -> Feb 28/29); each is valid 3
  months from its return and frozen before it.
- Shared-credit code: a shared-pool bucket of its credits, valid 3 months from redemption.

A code is identified by `code_id(code)`, a digest of its text, so the secret itself is never stored
and lot and bucket ids derived from it are stable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from meter.engine.periods import add_months
from meter.engine.types import Grant, Kind
from meter.errors import Conflict, InvalidInput, NotFound
from meter.plans.balance import SEAT_MONTH, Lot

VALIDITY_MONTHS = 3
INSTALLMENTS = 12


class CodeKind(StrEnum):
    SEAT_MONTHS_MONTHLY = "seat_months_monthly"
    SEAT_MONTHS_ANNUAL = "seat_months_annual"
    SHARED_CREDITS = "shared_credits"


class UnknownCode(NotFound):
    """No such code (or one bound to another organization)."""

    code = "unknown_code"


class CodeAlreadyRedeemed(Conflict):
    code = "code_already_redeemed"


class InvalidCode(InvalidInput):
    """A code definition that breaks the rules (e.g. annual seat-months not a multiple of 12)."""

    code = "invalid_code"


class SeatMonthsNotAccepted(Conflict):
    """Seat-month codes for an organization whose seats are not paid from a balance."""

    code = "seat_months_not_accepted"


def code_id(code: str) -> str:
    """The stable, non-secret id of a code's text."""
    return "c" + hashlib.sha256(code.encode()).hexdigest()[:24]


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


@dataclass(frozen=True, slots=True)
class RedemptionCode:
    """What a code is worth. `seat_months` for seat-month codes, `credits` (micro) for shared."""

    code_id: str
    kind: CodeKind
    seat_months: int = 0
    credits: int = 0
    validity_months: int = VALIDITY_MONTHS

    def __post_init__(self) -> None:
        if self.validity_months < 1:
            raise InvalidCode("validity must be at least one month")
        if self.kind is CodeKind.SHARED_CREDITS:
            if self.credits <= 0 or self.seat_months != 0:
                raise InvalidCode("a shared-credit code carries credits only")
            return
        if self.seat_months <= 0 or self.credits != 0:
            raise InvalidCode("a seat-month code carries seat-months only")
        if self.kind is CodeKind.SEAT_MONTHS_ANNUAL and self.seat_months % INSTALLMENTS:
            raise InvalidCode("an annual code holds a multiple of 12 seat-months")

    @property
    def seat_month_code(self) -> bool:
        return self.kind is not CodeKind.SHARED_CREDITS


@dataclass(frozen=True, slots=True)
class Redemption:
    """What redeeming a code added: seat-month lots, or one shared grant."""

    org_id: str
    code_id: str
    kind: CodeKind
    redeemed_at_ms: int
    lots: tuple[Lot, ...] = ()
    grant: Grant | None = None


def installment_dates(redeemed_at_ms: int, count: int = INSTALLMENTS) -> list[int]:
    """Return instants of an annual code: the redemption, then the same day of each next month
    (clamped to the month's end, always counted from the redemption day)."""
    return [add_months(redeemed_at_ms, i) for i in range(count)]


def shared_bucket_id(cid: str) -> str:
    return f"redeem:{cid}"


def redeem(code: RedemptionCode, org_id: str, now_ms: int) -> Redemption:
    """Lots or the grant that redeeming `code` into `org_id` at `now_ms` adds."""
    if code.kind is CodeKind.SHARED_CREDITS:
        grant = Grant(
            org_id=org_id,
            bucket_id=shared_bucket_id(code.code_id),
            kind=Kind.SHARED,
            amount=code.credits,
            valid_from_ms=now_ms,
            expires_at_ms=add_months(now_ms, code.validity_months),
            granted_at_ms=now_ms,
        )
        return Redemption(org_id, code.code_id, code.kind, now_ms, grant=grant)
    if code.kind is CodeKind.SEAT_MONTHS_MONTHLY:
        portions = [(now_ms, code.seat_months * SEAT_MONTH)]
    else:
        each = code.seat_months // INSTALLMENTS * SEAT_MONTH
        portions = [(t, each) for t in installment_dates(now_ms)]
    lots = tuple(
        Lot(
            org_id=org_id,
            lot_id=f"{code.code_id}:{i}",
            amount=amount,
            remaining=amount,
            available_from_ms=t,
            expires_at_ms=add_months(t, code.validity_months),
            code_id=code.code_id,
            installment=i,
        )
        for i, (t, amount) in enumerate(portions)
    )
    return Redemption(org_id, code.code_id, code.kind, now_ms, lots=lots)
