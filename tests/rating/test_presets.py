"""The shipped presets' rate cards reproduce the reference documents (or say they are examples)."""

from __future__ import annotations

from meter.plans.presets import preset_rate_cards, presets
from meter.rating.card import card_from_json
from meter.rating.dimensions import Usage
from meter.rating.rate import rate


def _card(plan_id: str) -> object:
    table = preset_rate_cards()[plan_id]
    body = {k: v for k, v in table.items() if k != "note"}
    return card_from_json(body, version=1, plan_id=plan_id, org_id=None, effective_from_ms=0)


def test_every_preset_has_a_card() -> None:
    assert set(preset_rate_cards()) == set(presets())


def test_requests_one_request_is_one_credit() -> None:
    card = _card("requests")
    for model in ["gpt-4o", "claude-sonnet-4-5", "anything"]:
        assert rate(Usage(model, {"requests": 1}), card).credits == 1_000_000  # type: ignore[arg-type]
    assert rate(Usage("x", {"requests": 300}), card).credits == 300_000_000  # type: ignore[arg-type]


def test_teams_is_a_marked_example_card_of_advanced_models() -> None:
    assert "EXAMPLE" in preset_rate_cards()["teams"]["note"]
    card = _card("teams")

    def credits(model: str) -> int:
        return rate(Usage(model, {"requests": 1}), card).credits  # type: ignore[arg-type]

    assert credits("claude-opus-4-1") == 5_000_000
    assert credits("o3") == 3_000_000
    assert credits("o3-mini") == 200_000  # the longer pattern wins
    assert credits("gpt-4o") == 1_000_000  # the default rate
