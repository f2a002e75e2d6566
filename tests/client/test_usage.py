"""Token usage of OpenAI and Anthropic responses, as event attributes and exact credits."""

from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace

import pytest
from meter_client import MeterClient, MeterError, Prices, from_anthropic, from_openai

from client.support import MeterRun, make_tenant, wait_totals

CHAT_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0},
    },
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "model": "o4-mini",
    "usage": {
        "input_tokens": 500,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 80,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 580,
    },
}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "model": "claude-sonnet-4-5",
    "usage": {
        "input_tokens": 40,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 6000,
        "output_tokens": 512,
    },
}
PRICES = Prices(input="2.5", output="10", cached_input="1.25", cache_write="3.125")


def test_openai_chat_completion() -> None:
    usage = from_openai(CHAT_COMPLETION)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (200, 1000, 300)
    assert usage.reasoning_tokens == 120 and usage.total_tokens == 1500
    assert usage.model == "gpt-4o-2024-08-06"
    # 200 * 2.5 + 1000 * 1.25 + 300 * 10 = 4750 credits per million tokens.
    assert usage.credits(PRICES) == Decimal("0.00475")
    assert from_openai(CHAT_COMPLETION["usage"]).credits(PRICES) == Decimal("0.00475")


def test_openai_responses_api_object() -> None:
    response = SimpleNamespace(
        model="o4-mini",
        usage=SimpleNamespace(
            input_tokens=500,
            input_tokens_details=SimpleNamespace(cached_tokens=0),
            output_tokens=80,
            output_tokens_details=SimpleNamespace(reasoning_tokens=64),
            total_tokens=580,
        ),
    )
    usage = from_openai(response)
    assert usage == from_openai(RESPONSE)
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (500, 80, 64)
    # 500 * 2.5 + 80 * 10 = 2050 per million.
    assert usage.credits(PRICES) == Decimal("0.00205")


def test_anthropic_message() -> None:
    usage = from_anthropic(MESSAGE)
    assert usage.input_tokens == 40 and usage.output_tokens == 512
    assert usage.cached_input_tokens == 6000 and usage.cache_write_tokens == 2000
    assert usage.total_tokens == 8552
    # 40 * 2.5 + 6000 * 1.25 + 2000 * 3.125 + 512 * 10 = 18970 per million.
    assert usage.credits(PRICES) == Decimal("0.01897")
    # Below a micro-credit, the price rounds up: usage is never free by rounding.
    one = from_anthropic({"input_tokens": 1, "output_tokens": 0})
    assert one.credits(Prices(input="0.1", output="0")) == Decimal("0.000001")


def test_usage_is_recorded_as_an_event(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        for response, read in ((MESSAGE, from_anthropic), (CHAT_COMPLETION, from_openai)):
            usage = read(response)
            with client.hold(tenant.org_id, "ada", "1") as hold:
                hold.record(usage.credits(PRICES), attributes=usage.attributes())
    settled = wait_totals(meter, tenant.org_id, events=2)
    assert settled["events"] == 2 and settled["credits"] == "0.02372", settled


def test_usage_is_rated_by_meter(meter: MeterRun) -> None:
    # A card of the organization's own prices the model; the client sends usage, meter rates it.
    tenant = make_tenant(meter)
    per_million = {
        "input_tokens": 2_500_000,
        "cached_input_tokens": 1_250_000,
        "output_tokens": 10_000_000,
        "reasoning_tokens": 10_000_000,
    }
    card = {
        "org_id": tenant.org_id,
        "effective_from": "2020-01-01T00:00:00Z",
        "models": {"gpt-test": {d: {"micros_per_million": n} for d, n in per_million.items()}},
    }
    with meter.admin() as admin:
        r = admin.post("/v1/plans/teams/rate-cards", json=card)
        assert r.status_code == 201, r.text
    usage = from_openai({**CHAT_COMPLETION, "model": "gpt-test"}).meter_usage()
    assert usage == {
        "model": "gpt-test",
        "input_tokens": 200,
        "cached_input_tokens": 1000,
        "output_tokens": 180,
        "reasoning_tokens": 120,
    }
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        deadline = time.monotonic() + 10
        while True:  # the API reloads its cards within a second
            try:
                decision = client.check(tenant.org_id, tenant.member_id, usage)
                break
            except MeterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert decision.allowed and decision.decided_by == "meter"
        with pytest.raises(ValueError, match="non-negative"):
            client.check(tenant.org_id, tenant.member_id, {"model": "gpt-test", "input_tokens": -1})
        client.record(tenant.org_id, tenant.member_id, usage, event_id="rated-1")
    settled = wait_totals(meter, tenant.org_id, 1)
    # 200 * 2.5 + 1000 * 1.25 + 180 * 10 + 120 * 10 credits per million tokens: as the
    # client's own pricing of the same response.
    assert settled["credits"] == "0.00475"
    assert from_openai(CHAT_COMPLETION).credits(PRICES) == Decimal("0.00475")
