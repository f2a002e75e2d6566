"""The seat-month balance: lots of seat-months and paying seats from them. Pure, no I/O.

Amounts are integer micro-seat-months (`SEAT_MONTH` = one seat for one whole period). A lot is one
portion of the balance with its own window: usable while `available_from <= t < expires_at`;
before `available_from` it is frozen (an annual code's unreturned installment), from `expires_at`
on its remainder is lost.

Paying a seat draws its fraction from the lots usable at the instant the seat starts, soonest
expiring first, then the earliest available, then the lot id; either the whole fraction is drawn
or nothing is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from meter.engine.periods import prorate
from meter.engine.types import Period

SEAT_MONTH = 1_000_000
"""One seat-month in micro-seat-months."""


@dataclass(frozen=True, slots=True)
class Lot:
    """A portion of an organization's seat-month balance."""

    org_id: str
    lot_id: str
    amount: int
    """Micro-seat-months the lot was created with."""
    remaining: int
    available_from_ms: int
    expires_at_ms: int
    code_id: str = ""
    """The redemption code it came from."""
    installment: int = 0
    """0 for the first (or only) portion of a code, 1..11 for later installments."""

    def usable(self, t_ms: int) -> bool:
        return self.remaining > 0 and self.available_from_ms <= t_ms < self.expires_at_ms

    def frozen(self, t_ms: int) -> bool:
        return t_ms < self.available_from_ms


@dataclass(frozen=True, slots=True)
class BalanceSummary:
    """An organization's balance at an instant, in micro-seat-months."""

    available: int
    frozen: int
    """Installments not returned yet."""
    expired: int
    """Remainders lost to expiry."""
    next_expiry_ms: int | None
    """When the soonest usable lot expires."""


def summarize(lots: Iterable[Lot], t_ms: int) -> BalanceSummary:
    available = frozen = expired = 0
    next_expiry: int | None = None
    for lot in lots:
        if lot.frozen(t_ms):
            frozen += lot.remaining
        elif t_ms >= lot.expires_at_ms:
            expired += lot.remaining
        elif lot.remaining > 0:
            available += lot.remaining
            if next_expiry is None or lot.expires_at_ms < next_expiry:
                next_expiry = lot.expires_at_ms
    return BalanceSummary(available, frozen, expired, next_expiry)


@dataclass(frozen=True, slots=True)
class Draw:
    lot_id: str
    amount: int


def seat_fraction(period: Period, seated_from_ms: int, prorated: bool) -> int:
    """Micro-seat-months a seat taken at `seated_from_ms` costs for `period` (floor)."""
    if not prorated:
        return SEAT_MONTH if seated_from_ms < period.end_ms else 0
    return prorate(SEAT_MONTH, period, seated_from_ms)


def draw(lots: Iterable[Lot], amount: int, t_ms: int) -> tuple[Draw, ...] | None:
    """Draws covering `amount` from the lots usable at `t_ms`, in order; None if they cannot."""
    usable = sorted(
        (lot for lot in lots if lot.usable(t_ms)),
        key=lambda lot: (lot.expires_at_ms, lot.available_from_ms, lot.lot_id),
    )
    if sum(lot.remaining for lot in usable) < amount:
        return None
    draws: list[Draw] = []
    need = amount
    for lot in usable:
        if need == 0:
            break
        take = min(need, lot.remaining)
        draws.append(Draw(lot.lot_id, take))
        need -= take
    return tuple(draws)


def after(lots: Sequence[Lot], draws: Iterable[Draw]) -> list[Lot]:
    """`lots` with `draws` taken off (lots not drawn from are returned unchanged)."""
    taken: dict[str, int] = {}
    for d in draws:
        taken[d.lot_id] = taken.get(d.lot_id, 0) + d.amount
    out = []
    for lot in lots:
        t = taken.get(lot.lot_id, 0)
        if t > lot.remaining:
            raise ValueError(f"lot {lot.lot_id} has {lot.remaining} left, {t} drawn")
        out.append(replace(lot, remaining=lot.remaining - t) if t else lot)
    return out


def expired_lots(lots: Iterable[Lot], period: Period) -> Mapping[str, int]:
    """Remainders of the lots that expired within `period` (`start < expires_at <= end`), by id."""
    return {
        lot.lot_id: lot.remaining
        for lot in lots
        if lot.remaining > 0 and period.start_ms < lot.expires_at_ms <= period.end_ms
    }
