"""Token usage of an OpenAI, Anthropic or Gemini response, as event attributes and credits.

```python
usage = from_openai(response)            # chat completions or responses API
hold.record(usage.credits(PRICES), attributes=usage.attributes())
```

Meter counts credits; it does not yet rate usage itself, so the price of a token in credits is
the product's own (`Prices`, credits per million tokens). The attributes travel with the event
for reporting. Both providers are normalised to the same counts:

- `input_tokens`: input read at the full price (OpenAI's `prompt_tokens` / `input_tokens` minus
  its cached part; Anthropic's `input_tokens`, which already excludes the cache);
- `cached_input_tokens`: input read from the provider's prompt cache (OpenAI's
  `*_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`);
- `cache_write_tokens`: input written to the cache (Anthropic's `cache_creation_input_tokens`);
- `output_tokens`: everything generated, reasoning included (`completion_tokens` /
  `output_tokens`); `reasoning_tokens` is the reasoning part, for information.

Gemini's `usageMetadata` maps the same way: `promptTokenCount` includes
`cachedContentTokenCount`; `candidatesTokenCount` excludes `thoughtsTokenCount`, so its output
here is the two added.

`TokenUsage.meter_usage()` gives the usage in meter's own, disjoint dimensions (the event's
`data.usage`, rated by the organization's rate card): `output_tokens` there excludes reasoning.
It is the mapping of `meter.rating.providers`, kept here so the client needs nothing else; a test
holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from meter_client.events import AttributeValue
from meter_client.types import CreditsIn, credits_text

_MICRO = Decimal("0.000001")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Prices:
    """Credits per million tokens of each kind (the product's prices, exact decimals).
    Cached input and cache writes cost the input price unless given."""

    input: CreditsIn
    output: CreditsIn
    cached_input: CreditsIn | None = None
    cache_write: CreditsIn | None = None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one model response, normalised across providers."""

    provider: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    model: str | None = None

    @property
    def total_tokens(self) -> int:
        """Every input and output token."""
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_tokens
            + self.output_tokens
        )

    def attributes(self) -> dict[str, AttributeValue]:
        """Event attributes (`data.attributes`): the counts, the provider and the model."""
        out: dict[str, AttributeValue] = {
            "provider": self.provider,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
        if self.model:
            out["model"] = self.model[:256]
        return out

    def meter_usage(self) -> dict[str, Any]:
        """The usage in meter's dimensions, each token in exactly one of them (zero counts left
        out): `data.usage` of an event, or a check's estimate."""
        reasoning = max(0, min(self.reasoning_tokens, self.output_tokens))
        counts = {
            "input_tokens": max(0, self.input_tokens),
            "cached_input_tokens": max(0, self.cached_input_tokens),
            "cache_write_tokens": max(0, self.cache_write_tokens),
            "output_tokens": max(0, self.output_tokens) - reasoning,
            "reasoning_tokens": reasoning,
        }
        return {"model": self.model or "unknown", **{k: n for k, n in counts.items() if n}}

    def credits(self, prices: Prices) -> Decimal:
        """The usage priced at `prices`, rounded up to the micro-credit (exact arithmetic)."""
        price = {
            "input": Decimal(credits_text(prices.input)),
            "output": Decimal(credits_text(prices.output)),
        }
        cached = prices.cached_input if prices.cached_input is not None else prices.input
        written = prices.cache_write if prices.cache_write is not None else prices.input
        with localcontext() as ctx:
            ctx.prec = 60
            total = (
                self.input_tokens * price["input"]
                + self.cached_input_tokens * Decimal(credits_text(cached))
                + self.cache_write_tokens * Decimal(credits_text(written))
                + self.output_tokens * price["output"]
            ) / _MILLION
            return total.quantize(_MICRO, rounding=ROUND_CEILING)


def _mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    if hasattr(value, "__dict__"):
        attributes: dict[str, Any] = vars(value)
        return attributes
    raise TypeError(f"expected a response or its usage, not {type(value).__name__}")


def _usage(response: Any) -> tuple[Mapping[str, Any], str | None]:
    """The usage mapping of a response (or of a usage object itself), and the model."""
    doc = _mapping(response)
    usage = doc.get("usage")
    model = doc.get("model") if isinstance(doc.get("model"), str) else None
    return (_mapping(usage), model) if usage is not None else (doc, model)


def _int(doc: Mapping[str, Any] | None, key: str) -> int:
    value = doc.get(key) if doc is not None else None
    return max(0, int(value)) if isinstance(value, int) and not isinstance(value, bool) else 0


def _details(doc: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = doc.get(key)
    return None if value is None else _mapping(value)


def from_openai(response: Any) -> TokenUsage:
    """Usage of an OpenAI chat completion or Responses API response (the object, its dict, or
    its `usage`)."""
    usage, model = _usage(response)
    if "prompt_tokens" in usage:  # chat completions
        prompt, output = _int(usage, "prompt_tokens"), _int(usage, "completion_tokens")
        cached = _int(_details(usage, "prompt_tokens_details"), "cached_tokens")
        reasoning = _int(_details(usage, "completion_tokens_details"), "reasoning_tokens")
    else:  # responses
        prompt, output = _int(usage, "input_tokens"), _int(usage, "output_tokens")
        cached = _int(_details(usage, "input_tokens_details"), "cached_tokens")
        reasoning = _int(_details(usage, "output_tokens_details"), "reasoning_tokens")
    cached = min(cached, prompt)
    return TokenUsage(
        provider="openai",
        input_tokens=prompt - cached,
        output_tokens=output,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
        model=model,
    )


def from_anthropic(response: Any) -> TokenUsage:
    """Usage of an Anthropic Messages API response (the object, its dict, or its `usage`)."""
    usage, model = _usage(response)
    return TokenUsage(
        provider="anthropic",
        input_tokens=_int(usage, "input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        cached_input_tokens=_int(usage, "cache_read_input_tokens"),
        cache_write_tokens=_int(usage, "cache_creation_input_tokens"),
        model=model,
    )


def from_gemini(response: Any) -> TokenUsage:
    """Usage of a Google Gemini `generateContent` response (the object, its dict, or its
    `usageMetadata`)."""
    doc = _mapping(response)
    meta = doc.get("usageMetadata", doc.get("usage_metadata"))
    usage = _mapping(meta) if meta is not None else doc
    model = doc.get("modelVersion", doc.get("model_version"))
    prompt = _int(usage, "promptTokenCount")
    cached = min(_int(usage, "cachedContentTokenCount"), prompt)
    thoughts = _int(usage, "thoughtsTokenCount")
    return TokenUsage(
        provider="gemini",
        input_tokens=prompt - cached,
        output_tokens=_int(usage, "candidatesTokenCount") + thoughts,
        cached_input_tokens=cached,
        reasoning_tokens=thoughts,
        model=model if isinstance(model, str) else None,
    )
