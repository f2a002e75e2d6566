"""Provider usage objects mapped to meter's dimensions, with no token counted twice.

meter's dimensions are disjoint (`meter.rating.dimensions`): `input_tokens` excludes cache reads
and writes, `output_tokens` excludes reasoning. Each provider reports differently:

- OpenAI chat completions: `prompt_tokens` includes `prompt_tokens_details.cached_tokens`;
  `completion_tokens` includes `completion_tokens_details.reasoning_tokens`. So input =
  prompt - cached, output = completion - reasoning.
- OpenAI Responses: the same with `input_tokens` / `input_tokens_details.cached_tokens` and
  `output_tokens` / `output_tokens_details.reasoning_tokens`.
- Anthropic Messages: `input_tokens` already excludes `cache_read_input_tokens` and
  `cache_creation_input_tokens`, which are added as they are; `output_tokens` includes any
  thinking, which Anthropic does not report apart, so it all counts as output.
- Google Gemini (`usageMetadata`): `promptTokenCount` includes `cachedContentTokenCount`;
  `candidatesTokenCount` excludes `thoughtsTokenCount`, which is reported apart.

Every function takes the response as a dict (or just its usage object) and returns `Usage`
(dimensions with a zero count left out; `requests` is the product's to add, as its card asks);
a count that is missing, negative or not an integer counts as 0, and a difference never goes
below 0. The model is the response's `model` (Gemini: `modelVersion`) unless given. The Python
client (`meter_client.usage`) carries the same mapping; a test holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meter.rating.dimensions import Usage


def _int(doc: Any, key: str) -> int:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if type(value) is int and value > 0 else 0


def _usage(response: Mapping[str, Any], key: str) -> tuple[Mapping[str, Any], str]:
    usage = response.get(key)
    model = response.get("model") or response.get("modelVersion")
    doc = usage if isinstance(usage, Mapping) else response
    return doc, model if isinstance(model, str) else "unknown"


def _dimensions(**counts: int) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


def from_openai(response: Mapping[str, Any], model: str | None = None) -> Usage:
    """An OpenAI chat completion or Responses API response (or its `usage`)."""
    usage, named = _usage(response, "usage")
    if "prompt_tokens" in usage:
        prompt, output = _int(usage, "prompt_tokens"), _int(usage, "completion_tokens")
        cached = _int(usage.get("prompt_tokens_details"), "cached_tokens")
        reasoning = _int(usage.get("completion_tokens_details"), "reasoning_tokens")
    else:
        prompt, output = _int(usage, "input_tokens"), _int(usage, "output_tokens")
        cached = _int(usage.get("input_tokens_details"), "cached_tokens")
        reasoning = _int(usage.get("output_tokens_details"), "reasoning_tokens")
    cached, reasoning = min(cached, prompt), min(reasoning, output)
    return Usage(
        model or named,
        _dimensions(
            input_tokens=prompt - cached,
            cached_input_tokens=cached,
            output_tokens=output - reasoning,
            reasoning_tokens=reasoning,
        ),
    )


def from_anthropic(response: Mapping[str, Any], model: str | None = None) -> Usage:
    """An Anthropic Messages API response (or its `usage`)."""
    usage, named = _usage(response, "usage")
    return Usage(
        model or named,
        _dimensions(
            input_tokens=_int(usage, "input_tokens"),
            cached_input_tokens=_int(usage, "cache_read_input_tokens"),
            cache_write_tokens=_int(usage, "cache_creation_input_tokens"),
            output_tokens=_int(usage, "output_tokens"),
        ),
    )


def from_gemini(response: Mapping[str, Any], model: str | None = None) -> Usage:
    """A Google Gemini `generateContent` response (or its `usageMetadata`)."""
    usage, named = _usage(response, "usageMetadata")
    prompt = _int(usage, "promptTokenCount")
    cached = min(_int(usage, "cachedContentTokenCount"), prompt)
    return Usage(
        model or named,
        _dimensions(
            input_tokens=prompt - cached,
            cached_input_tokens=cached,
            output_tokens=_int(usage, "candidatesTokenCount"),
            reasoning_tokens=_int(usage, "thoughtsTokenCount"),
        ),
    )
