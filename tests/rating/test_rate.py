"""Rating: exact, order-independent, one rounding; model rules; the card's unknown-model policy."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.errors import InvalidInput
from meter.rating.book import CardBook
from meter.rating.card import Rate, RateCard, card_from_json
from meter.rating.dimensions import DIMENSIONS, Usage, UsageError, parse_usage
from meter.rating.rate import Unrated, format_picos, rate

DIMS = sorted(DIMENSIONS)

rates = st.builds(Rate, st.integers(0, 10**12), st.sampled_from(["unit", "million"]))
quantities = st.dictionaries(st.sampled_from(DIMS), st.integers(0, 2**53 - 1), min_size=1)


def _card(models: dict[str, dict[str, Rate]], default: dict[str, Rate] | None = None) -> RateCard:
    return RateCard(
        version=7,
        plan_id="p",
        org_id=None,
        effective_from_ms=0,
        unknown_model="default" if default is not None else "error",
        models=models,
        default=default,
    )


@given(quantities, st.data())
def test_rating_is_exact_and_rounds_once(q: dict[str, int], data: st.DataObject) -> None:
    priced = {d: data.draw(rates) for d in q}
    card = _card({"m": priced})
    rating = rate(Usage("m", q), card)
    exact = sum(
        Fraction(q[d] * r.micros, 1 if r.per == "unit" else 1_000_000) for d, r in priced.items()
    )
    # One rounding, half up, of the exact sum in micro-credits.
    assert rating.credits == math.floor(exact + Fraction(1, 2))
    assert abs(Fraction(rating.credits) - exact) <= Fraction(1, 2)
    assert sum(line.picos for line in rating.lines) == exact * 1_000_000


@given(quantities, st.data(), st.randoms())
def test_rating_ignores_order(q: dict[str, int], data: st.DataObject, rnd: random.Random) -> None:
    priced = {d: data.draw(rates) for d in q}
    items = list(q.items())
    rnd.shuffle(items)
    shuffled_rates = list(priced.items())
    rnd.shuffle(shuffled_rates)
    a = rate(Usage("m", q), _card({"m": priced}))
    b = rate(Usage("m", dict(items)), _card({"m": dict(shuffled_rates)}))
    assert a == b


@given(st.lists(st.tuples(st.sampled_from(DIMS), st.integers(0, 10**9)), min_size=2, max_size=6))
def test_rating_is_additive_before_rounding(parts: list[tuple[str, int]]) -> None:
    """Per-million rates: the exact picos of a total are the sums of the parts' picos."""
    r = {d: Rate(1_234_567, "million") for d in DIMS}
    card = _card({"m": r})
    whole: dict[str, int] = {}
    picos = 0
    for d, n in parts:
        whole[d] = whole.get(d, 0) + n
        picos += sum(line.picos for line in rate(Usage("m", {d: n}), card).lines)
    assert sum(line.picos for line in rate(Usage("m", whole), card).lines) == picos


def test_worked_example_rounds_half_up_once() -> None:
    # 3 tokens at 0.5 micro-credit each, in two dimensions: 1.5 + 0.5 = 2.0 exactly.
    card = _card(
        {"m": {"input_tokens": Rate(500_000, "million"), "output_tokens": Rate(500_000, "million")}}
    )
    assert rate(Usage("m", {"input_tokens": 3, "output_tokens": 1}), card).credits == 2
    # Rounding per dimension would give 2 + 1 = 3 (half up) or 1 + 0 (half down): not so.
    assert rate(Usage("m", {"input_tokens": 3}), card).credits == 2  # 1.5 -> 2
    assert rate(Usage("m", {"input_tokens": 1}), card).credits == 1  # 0.5 -> 1
    assert rate(Usage("m", {"input_tokens": 1, "output_tokens": 0}), card).credits == 1


def test_exact_beats_pattern_and_longest_pattern_wins() -> None:
    one = {"requests": Rate(1, "unit")}
    two = {"requests": Rate(2, "unit")}
    three = {"requests": Rate(3, "unit")}
    card = _card({"gpt-4o*": one, "gpt-4o-mini*": two, "gpt-4o": three, "*": {}})
    assert card.rule_for("gpt-4o") == "gpt-4o"
    assert card.rule_for("gpt-4o-2024-08-06") == "gpt-4o*"
    assert card.rule_for("gpt-4o-mini-2024-07-18") == "gpt-4o-mini*"
    assert card.rule_for("claude-3") == "*"
    u = Usage("gpt-4o-mini-x", {"requests": 10})
    assert rate(u, card).credits == 20
    assert rate(u, card).rule == "gpt-4o-mini*"


def test_unknown_model_policy() -> None:
    priced = {"m": {"requests": Rate(1_000_000, "unit")}}
    with pytest.raises(Unrated):
        rate(Usage("other", {"requests": 1}), _card(priced))
    fallback = _card(priced, default={"requests": Rate(5, "unit")})
    rated = rate(Usage("other", {"requests": 2}), fallback)
    assert (rated.credits, rated.rule) == (10, None)


def test_a_dimension_without_rate_is_unrated_unless_zero() -> None:
    card = _card({"m": {"requests": Rate(1, "unit")}})
    with pytest.raises(Unrated):
        rate(Usage("m", {"requests": 1, "images": 2}), card)
    assert rate(Usage("m", {"requests": 1, "images": 0}), card).credits == 1


def test_rating_json_is_exact() -> None:
    card = _card({"m": {"input_tokens": Rate(2_500_000, "million")}})
    doc = rate(Usage("m", {"input_tokens": 1001}), card).to_json()
    assert doc == {
        "card_version": 7,
        "model": "m",
        "rule": "m",
        "credits": "0.002503",
        "lines": [
            {
                "dimension": "input_tokens",
                "quantity": 1001,
                "rate_per_million": "2.5",
                "credits": "0.0025025",
            }
        ],
    }
    assert format_picos(0) == "0"


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"input_tokens": 1},
        {"model": "m"},
        {"model": "m", "tokens": 1},
        {"model": "m", "input_tokens": -1},
        {"model": "m", "input_tokens": 1.0},
        {"model": "m", "input_tokens": True},
        {"model": "m", "input_tokens": 2**53},
        {"model": "bad model", "input_tokens": 1},
        {"model": "", "input_tokens": 1},
    ],
)
def test_bad_usage(value: object) -> None:
    with pytest.raises(UsageError):
        parse_usage(value)


@pytest.mark.parametrize(
    "body",
    [
        {"models": {"m": {"requests": {"micros_per_unit": -1}}}},
        {"models": {"m": {"requests": {"micros_per_unit": 1.5}}}},
        {"models": {"m": {"tokens": {"micros_per_unit": 1}}}},
        {"models": {"m": {"requests": {"credits": 1}}}},
        {"models": {"a b": {}}},
        {"models": {}, "unknown_model": "default"},
        {"models": {}, "unknown_model": "error", "default": {}},
        {"models": {}, "unknown_model": "free"},
        {"models": []},
    ],
)
def test_bad_cards(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as exc:
        card_from_json(body, version=1, plan_id="p", org_id=None, effective_from_ms=0)
    assert exc.value.code == "invalid_rate_card"


def test_book_picks_override_then_plan_by_effective_from() -> None:
    def card(version: int, org: str | None, start: int) -> RateCard:
        return RateCard(version, "p", org, start, "error", {})

    book = CardBook([card(1, None, 0), card(2, None, 100), card(3, "o", 50), card(4, None, 100)])
    assert book.card_for("p", "x", 99).version == 1  # type: ignore[union-attr]
    assert book.card_for("p", "x", 100).version == 4  # type: ignore[union-attr]
    assert book.card_for("p", "o", 49).version == 1  # type: ignore[union-attr]
    assert book.card_for("p", "o", 500).version == 3  # type: ignore[union-attr]
    assert book.card_for("p", "x", -1) is None
    assert book.card_for("q", "x", 500) is None
