"""A rate card version: what each model costs per dimension, as exact integers.

A rate is integer micro-credits per unit (``micros_per_unit``) or per million units
(``micros_per_million``); both are held as pico-credits per unit (10**-12 credits), in which
every rate is an integer. Model rules are exact names or patterns (``*`` any run of characters,
``?`` one character); see `RateCard.rule_for` for which rule wins.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from meter.errors import InvalidInput
from meter.rating.dimensions import DIMENSIONS

PICOS_PER_MICRO: Final = 1_000_000
MAX_RATE_MICROS: Final = 10**15
"""Largest rate, in micro-credits per unit or per million units."""
MAX_RULES: Final = 1000
RULE_PATTERN: Final = r"^[A-Za-z0-9._:@/+*?-]{1,128}$"
"""A model rule: a model name, or a pattern with ``*`` and ``?``."""
_RULE = re.compile(RULE_PATTERN[1:-1]).fullmatch

UnknownModel = Literal["error", "default"]


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_rate_card")


@dataclass(frozen=True, slots=True)
class Rate:
    """`micros` micro-credits per unit (`per` = "unit") or per million units ("million")."""

    micros: int
    per: Literal["unit", "million"]
    picos: int = field(init=False, compare=False)
    """Pico-credits per unit: exact for both forms."""

    def __post_init__(self) -> None:
        picos = self.micros * PICOS_PER_MICRO if self.per == "unit" else self.micros
        object.__setattr__(self, "picos", picos)

    def to_json(self) -> dict[str, int]:
        return {"micros_per_unit" if self.per == "unit" else "micros_per_million": self.micros}

    @classmethod
    def from_json(cls, value: object, where: str) -> Rate:
        if type(value) is not dict or len(value) != 1:
            raise _invalid(
                f"{where}: a rate is {{micros_per_unit: n}} or {{micros_per_million: n}}"
            )
        ((key, micros),) = value.items()
        if key not in ("micros_per_unit", "micros_per_million"):
            raise _invalid(f"{where}: a rate is micros_per_unit or micros_per_million")
        if type(micros) is not int or not 0 <= micros <= MAX_RATE_MICROS:
            raise _invalid(f"{where}: {key} must be an integer in 0..{MAX_RATE_MICROS}")
        return cls(micros, "unit" if key == "micros_per_unit" else "million")


Rates = Mapping[str, Rate]
"""Dimension -> rate."""


def parse_rates(value: object, where: str) -> dict[str, Rate]:
    if type(value) is not dict:
        raise _invalid(f"{where} must be an object of dimension -> rate")
    rates: dict[str, Rate] = {}
    for dimension, rate in value.items():
        if dimension not in DIMENSIONS:
            raise _invalid(f"{where}: unknown dimension {str(dimension)[:40]!r}")
        rates[dimension] = Rate.from_json(rate, f"{where}.{dimension}")
    return rates


def is_pattern(rule: str) -> bool:
    return "*" in rule or "?" in rule


@dataclass(frozen=True, slots=True)
class RateCard:
    """One immutable version of a card, attached to a plan (or to one organization on it)."""

    version: int
    plan_id: str
    org_id: str | None
    effective_from_ms: int
    unknown_model: UnknownModel
    models: Mapping[str, Rates]
    """Rule (exact model name or pattern) -> rates."""
    default: Rates | None = None
    """Rates of a model no rule matches, when `unknown_model` is "default"."""
    note: str = ""
    _patterns: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _matched: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.unknown_model not in ("error", "default"):
            raise _invalid('unknown_model must be "error" or "default"')
        if (self.unknown_model == "default") != (self.default is not None):
            raise _invalid('default rates are given exactly when unknown_model is "default"')
        if len(self.models) > MAX_RULES:
            raise _invalid(f"at most {MAX_RULES} model rules")
        for rule in self.models:
            if _RULE(rule) is None:
                raise _invalid(f"model rule {rule[:40]!r} is not 1 to 128 name characters, * or ?")
        patterns = sorted((r for r in self.models if is_pattern(r)), key=lambda r: (-len(r), r))
        object.__setattr__(self, "_patterns", tuple(patterns))

    def rule_for(self, model: str) -> str | None:
        """The rule pricing `model`: its exact name if a rule has it; otherwise the longest
        matching pattern (ties: the first in code-point order); None when nothing matches."""
        try:
            return self._matched[model]
        except KeyError:
            pass
        found: str | None = model if model in self.models else None
        if found is None:
            for pattern in self._patterns:
                if fnmatch.fnmatchcase(model, pattern):
                    found = pattern
                    break
        if len(self._matched) >= 4096:
            self._matched.clear()
        self._matched[model] = found
        return found

    def body(self) -> dict[str, Any]:
        """The card's content as JSON (what a version is created from)."""
        out: dict[str, Any] = {
            "unknown_model": self.unknown_model,
            "models": {
                rule: {d: r.to_json() for d, r in rates.items()}
                for rule, rates in self.models.items()
            },
        }
        if self.default is not None:
            out["default"] = {d: r.to_json() for d, r in self.default.items()}
        return out


def card_from_json(
    body: Mapping[str, Any],
    *,
    version: int,
    plan_id: str,
    org_id: str | None,
    effective_from_ms: int,
    note: str = "",
) -> RateCard:
    """A card from its JSON content (`RateCard.body`); `InvalidInput` (`invalid_rate_card`)."""
    models = body.get("models")
    if type(models) is not dict:
        raise _invalid("models must be an object of model rule -> rates")
    default = body.get("default")
    return RateCard(
        version=version,
        plan_id=plan_id,
        org_id=org_id,
        effective_from_ms=effective_from_ms,
        unknown_model=body.get("unknown_model", "error"),
        models={rule: parse_rates(rates, f"models.{rule}") for rule, rates in models.items()},
        default=None if default is None else parse_rates(default, "default"),
        note=note,
    )
