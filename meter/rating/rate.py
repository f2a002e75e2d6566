"""Rating as a pure function: `rate(usage, card)` gives the credits of one event, exactly.

The one rounding rule: per dimension, quantity x rate is exact in pico-credits (every rate is an
integer number of pico-credits per unit); the event's pico-credits are summed, then rounded once
to the micro-credit, half up. Nothing is rounded per dimension, so the order of dimensions and
the split of a quantity across them change nothing beyond that one rounding.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from meter.rating.card import PICOS_PER_MICRO, RateCard
from meter.rating.dimensions import Usage

UNRATED: Final = "unrated"
"""Dead-letter reason of usage no card prices."""


class Unrated(Exception):
    """Usage the card cannot price: the model matches no rule (and the card has no default), or
    a dimension with a quantity has no rate."""

    code = UNRATED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RatedLine(NamedTuple):
    dimension: str
    quantity: int
    picos_per_unit: int
    picos: int
    """quantity x picos_per_unit: exact."""


_rate_texts: dict[int, str] = {}
"""Rates (pico-credits per unit) seen, as credits per million units."""


class Rating(NamedTuple):
    """The credits of one event and how they came about."""

    credits: int
    """Micro-credits: the lines' pico-credits summed, rounded half up once."""
    version: int
    model: str
    rule: str | None
    """The model rule that priced it; None for the card's default rates."""
    lines: tuple[RatedLine, ...]

    def to_json(self) -> dict[str, Any]:
        """What a settlement records (column `rating`): exact decimals as strings."""
        doc: dict[str, Any] = orjson.loads(self.json_text())
        return doc

    def json_text(self) -> str:
        """`to_json` as JSON text, written directly (the consumer makes one per usage event).
        Model names and rules hold no character JSON escapes (`MODEL_PATTERN`, `RULE_PATTERN`)."""
        rule = "null" if self.rule is None else f'"{self.rule}"'
        texts = _rate_texts
        parts = []
        for d, q, r, p in self.lines:
            rate_text = texts.get(r)
            if rate_text is None:
                if len(texts) >= 4096:
                    texts.clear()
                rate_text = texts[r] = format_picos(r * 1_000_000)
            parts.append(
                f'{{"dimension":"{d}","quantity":{q},"rate_per_million":"{rate_text}",'
                f'"credits":"{format_picos(p)}"}}'
            )
        lines = ",".join(parts)
        return (
            f'{{"card_version":{self.version},"model":"{self.model}","rule":{rule},'
            f'"credits":"{format_micros(self.credits)}","lines":[{lines}]}}'
        )


_HALF = PICOS_PER_MICRO // 2


def round_picos(picos: int) -> int:
    """Pico-credits to micro-credits, half up (picos are never negative)."""
    return (picos + PICOS_PER_MICRO // 2) // PICOS_PER_MICRO


def format_micros(micros: int) -> str:
    """Micro-credits as an exact decimal number of credits: 1_500_000 -> "1.5"."""
    whole, frac = divmod(micros, PICOS_PER_MICRO)
    return f"{whole}.{frac:06d}".rstrip("0") if frac else str(whole)


def format_picos(picos: int) -> str:
    """Pico-credits as an exact decimal number of credits: 1_500_000_000_000 -> "1.5"."""
    whole, frac = divmod(picos, 10**12)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:012d}".rstrip("0")


def rate(usage: Usage, card: RateCard) -> Rating:
    """The credits of `usage` under `card`; `Unrated` when the card cannot price it."""
    rule = card.rule_for(usage.model)
    if rule is not None:
        rates = card.models[rule]
    elif card.default is not None:
        rates = card.default
    else:
        raise Unrated(f"model {usage.model!r} has no rate in card version {card.version}")
    lines: list[RatedLine] = []
    total = 0
    for dimension, quantity in usage.quantities.items():
        r = rates.get(dimension)
        if r is None:
            if quantity:
                raise Unrated(
                    f"card version {card.version} has no {dimension} rate for {usage.model!r}"
                )
            continue
        per_unit = r.picos
        picos = quantity * per_unit
        total += picos
        lines.append(RatedLine(dimension, quantity, per_unit, picos))
    if len(lines) > 1:
        lines.sort()
    return Rating((total + _HALF) // PICOS_PER_MICRO, card.version, usage.model, rule, tuple(lines))
