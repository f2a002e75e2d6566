"""Provider usage objects -> meter's dimensions: worked examples on real-shaped responses, no
double counting, and the Python client's copy of the mapping gives the same answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import meter_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.rating import providers
from meter.rating.card import card_from_json
from meter.rating.dimensions import Usage, parse_usage
from meter.rating.rate import rate

OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}}],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}
OPENAI_REASONING_CHAT = {
    "object": "chat.completion",
    "model": "o3-mini-2025-01-31",
    "usage": {
        "prompt_tokens": 75,
        "completion_tokens": 1186,
        "total_tokens": 1261,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1024},
    },
}
OPENAI_RESPONSE = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac6",
    "object": "response",
    "model": "o4-mini-2025-04-16",
    "usage": {
        "input_tokens": 2500,
        "input_tokens_details": {"cached_tokens": 2048},
        "output_tokens": 900,
        "output_tokens_details": {"reasoning_tokens": 640},
        "total_tokens": 3400,
    },
}
ANTHROPIC = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "output_tokens": 393,
        "service_tier": "standard",
    },
}
ANTHROPIC_CACHED = {
    "type": "message",
    "model": "claude-sonnet-4-5-20250929",
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 188086,
        "output_tokens": 393,
    },
}
GEMINI = {
    "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"}}],
    "usageMetadata": {
        "promptTokenCount": 12000,
        "cachedContentTokenCount": 8000,
        "candidatesTokenCount": 350,
        "thoughtsTokenCount": 1200,
        "totalTokenCount": 13550,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12000}],
    },
    "modelVersion": "gemini-2.5-pro",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}

EXAMPLES: list[tuple[str, dict[str, Any], Usage, int]] = [
    (
        "openai",
        OPENAI_CHAT,
        Usage("gpt-4o-2024-08-06", {"input_tokens": 93, "cached_input_tokens": 1024,
                                    "output_tokens": 46}),
        1163,
    ),
    (
        "openai",
        OPENAI_REASONING_CHAT,
        Usage("o3-mini-2025-01-31", {"input_tokens": 75, "output_tokens": 162,
                                     "reasoning_tokens": 1024}),
        1261,
    ),
    (
        "openai",
        OPENAI_RESPONSE,
        Usage("o4-mini-2025-04-16", {"input_tokens": 452, "cached_input_tokens": 2048,
                                     "output_tokens": 260, "reasoning_tokens": 640}),
        3400,
    ),
    (
        "anthropic",
        ANTHROPIC,
        Usage("claude-sonnet-4-5-20250929", {"input_tokens": 21, "cache_write_tokens": 188086,
                                             "output_tokens": 393}),
        21 + 188086 + 393,
    ),
    (
        "anthropic",
        ANTHROPIC_CACHED,
        Usage("claude-sonnet-4-5-20250929", {"input_tokens": 50, "cached_input_tokens": 188086,
                                             "output_tokens": 393}),
        50 + 188086 + 393,
    ),
    (
        "gemini",
        GEMINI,
        Usage("gemini-2.5-pro", {"input_tokens": 4000, "cached_input_tokens": 8000,
                                 "output_tokens": 350, "reasoning_tokens": 1200}),
        13550,
    ),
]  # fmt: skip

SERVER: dict[str, Callable[..., Usage]] = {
    "openai": providers.from_openai,
    "anthropic": providers.from_anthropic,
    "gemini": providers.from_gemini,
}
CLIENT: dict[str, Callable[[Any], meter_client.TokenUsage]] = {
    "openai": meter_client.from_openai,
    "anthropic": meter_client.from_anthropic,
    "gemini": meter_client.from_gemini,
}


@pytest.mark.parametrize(("provider", "response", "expected", "total"), EXAMPLES)
def test_worked_examples(
    provider: str, response: dict[str, Any], expected: Usage, total: int
) -> None:
    usage = SERVER[provider](response)
    assert usage == expected
    # No double counting: the disjoint dimensions add up to the provider's total.
    assert sum(usage.quantities.values()) == total
    # Valid as an event's data.usage, and the client's copy agrees.
    assert parse_usage({"model": usage.model, **usage.quantities}) == usage
    assert CLIENT[provider](response).meter_usage() == {"model": usage.model, **usage.quantities}
    # The usage object alone maps the same (model given apart).
    key = "usageMetadata" if provider == "gemini" else "usage"
    assert SERVER[provider](response[key], model=usage.model) == usage


def test_rated_example() -> None:
    """OpenAI chat with a cache hit at list prices (credits = dollars here, an example)."""
    card = card_from_json(
        {
            "models": {
                "gpt-4o*": {
                    "input_tokens": {"micros_per_million": 2_500_000},
                    "cached_input_tokens": {"micros_per_million": 1_250_000},
                    "output_tokens": {"micros_per_million": 10_000_000},
                }
            }
        },
        version=1,
        plan_id="p",
        org_id=None,
        effective_from_ms=0,
    )
    # 93 * 2.5 + 1024 * 1.25 + 46 * 10 = 232.5 + 1280 + 460 = 1972.5 -> 1973 micro-credits.
    assert rate(providers.from_openai(OPENAI_CHAT), card).credits == 1973


counts = st.integers(0, 10**7)


@given(counts, counts, counts, counts)
def test_client_and_server_agree_on_openai(
    prompt: int, cached: int, completion: int, reasoning: int
) -> None:
    chat = {
        "model": "gpt-x",
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }
    usage = providers.from_openai(chat)
    assert meter_client.from_openai(chat).meter_usage() == {"model": "gpt-x", **usage.quantities}
    assert sum(usage.quantities.values()) == prompt + completion


@given(counts, counts, counts, counts)
def test_client_and_server_agree_on_anthropic_and_gemini(a: int, b: int, c: int, d: int) -> None:
    message = {
        "model": "claude-x",
        "usage": {
            "input_tokens": a,
            "cache_read_input_tokens": b,
            "cache_creation_input_tokens": c,
            "output_tokens": d,
        },
    }
    usage = providers.from_anthropic(message)
    assert meter_client.from_anthropic(message).meter_usage() == {
        "model": "claude-x",
        **usage.quantities,
    }
    gemini = {
        "modelVersion": "gemini-x",
        "usageMetadata": {
            "promptTokenCount": a,
            "cachedContentTokenCount": b,
            "candidatesTokenCount": c,
            "thoughtsTokenCount": d,
        },
    }
    usage = providers.from_gemini(gemini)
    assert meter_client.from_gemini(gemini).meter_usage() == {
        "model": "gemini-x",
        **usage.quantities,
    }
    assert sum(usage.quantities.values()) == a + c + d  # cached is part of the prompt
