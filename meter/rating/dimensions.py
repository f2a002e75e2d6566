"""The usage dimensions meter rates, as one table, and the usage of one event.

The dimensions are disjoint: a token is counted in exactly one of them, so their sum is the
total the provider processed (`meter.rating.providers` splits provider usage that way).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

DIMENSIONS: Final[dict[str, str]] = {
    "input_tokens": "input tokens read at the full price (no cache read, no cache write)",
    "cached_input_tokens": "input tokens read from the provider's prompt cache",
    "cache_write_tokens": "input tokens written to the provider's prompt cache",
    "output_tokens": "visible output tokens (reasoning tokens excluded)",
    "reasoning_tokens": "hidden reasoning (thinking) tokens",
    "requests": "requests (calls) made",
    "images": "images generated or read",
    "seconds": "seconds of audio, video or compute",
}
"""Known dimension -> what it counts. Adding a dimension is adding a row here."""

MAX_QUANTITY: Final = 2**53 - 1
"""Largest quantity of one dimension in one event."""
MODEL_PATTERN: Final = r"^[A-Za-z0-9._:@/+-]{1,128}$"
"""A model name: 1 to 128 characters of ``A-Z a-z 0-9 . _ : @ / + -``."""
MODEL_NAME = re.compile(MODEL_PATTERN[1:-1]).fullmatch


class Usage(NamedTuple):
    """What one event used: the model, and a non-negative integer per dimension."""

    model: str
    quantities: dict[str, int]


class UsageError(ValueError):
    """A usage object that is not valid; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_known_models: set[str] = set()


def parse_usage(value: object) -> Usage:
    """A JSON usage object (``{"model": ..., "<dimension>": <int>, ...}``) as `Usage`.

    The model is a `MODEL_PATTERN` name; every other key is a dimension of `DIMENSIONS` holding
    an integer in 0..`MAX_QUANTITY` (booleans and floats are refused); at least one is present."""
    if type(value) is not dict:
        raise UsageError("usage must be an object")
    model = value.get("model")
    if type(model) is not str:
        raise UsageError("usage.model must be a string")
    if model not in _known_models:
        if MODEL_NAME(model) is None:
            raise UsageError("usage.model must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ / + -")
        if len(_known_models) >= 4096:
            _known_models.clear()
        _known_models.add(model)
    quantities: dict[str, int] = {}
    for name, quantity in value.items():
        if name == "model":
            continue
        if name not in DIMENSIONS:
            raise UsageError(f"usage: unknown dimension {name[:40]!r}")
        if type(quantity) is not int or not 0 <= quantity <= MAX_QUANTITY:
            raise UsageError(f"usage.{name} must be an integer in 0..{MAX_QUANTITY}")
        quantities[name] = quantity
    if not quantities:
        raise UsageError("usage needs at least one dimension")
    return Usage(model, quantities)
