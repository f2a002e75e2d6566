"""Credits on the wire <-> integer micro-credits, exactly.

Credits are decimals with at most 6 fractional digits; inside the service they are integers of
micro-credits (1 credit = 1_000_000). `parse_credits` turns what a client wrote into micro-credits
and `format_credits` turns micro-credits back into the shortest decimal string.

What `parse_credits` accepts:

- a `str` holding a JSON number literal: ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?``
  (ASCII digits only; no spaces, no ``+`` sign, no leading zeros, no ``.5`` or ``5.``, no ``NaN``,
  ``Infinity``, ``0x..`` or ``1_000``), so a value means the same whether a producer sends it as a
  JSON number or as a JSON string;
- an `int` (what a JSON parser returns for an integer literal); `bool` is refused.

Rules, each with its stable `CreditsError.code`:

- ``not_a_number``: not a literal of the grammar above, or a `bool` or other type;
- ``inexact``: a `float`. A float no longer holds the digits the client wrote: ``0.1`` and
  ``0.1000000000000000055511151231257827`` are the same double, and ``1e-400`` becomes ``0.0``.
  Callers that received a JSON number must hand over its original literal (see
  `schemas.events.decode_event`, which does);
- ``negative``: a value below zero. ``-0`` and ``-0.0`` are zero and accepted;
- ``too_precise``: the value needs more than 6 fractional digits. The test is on the value, not on
  the spelling: ``"0.1000000"`` and ``"1.5e0"`` are accepted (trailing zeros change nothing, and a
  JSON number cannot keep them anyway once parsed), ``"0.0000001"`` and ``"1e-7"`` are refused.
  There is never any rounding;
- ``too_large``: more than `maximum` micro-credits (by default the int64 range of the stores).

Parsing is pure string work and linear in the length of the literal: an exponent is compared by
its number of digits before it is converted, so ``"1e999999999"`` fails at once without building a
huge number, and ``"0e999999999"`` is simply zero.
"""

from __future__ import annotations

import re
from typing import Final

from meter.errors import InvalidInput

MICRO: Final = 1_000_000
SCALE: Final = 6
INT64_MAX: Final = 2**63 - 1

_LITERAL = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_PLAIN = re.compile(r"(0|[1-9][0-9]{0,18})(?:\.([0-9]{1,6}))?").fullmatch
_FRACTION_UNIT = (0, 100_000, 10_000, 1_000, 100, 10, 1)
_MAX_LITERAL_CHARS = 1000


class CreditsError(InvalidInput):
    """A credits value that cannot be taken as is. `code` is one of ``not_a_number``,
    ``inexact``, ``negative``, ``too_precise``, ``too_large``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def parse_credits(value: str | int, *, maximum: int = INT64_MAX) -> int:
    """Exact micro-credits of `value` (a JSON number literal as text, or an int of credits).

    Raises `CreditsError` as described in the module docstring; `maximum` is in micro-credits.
    """
    if type(value) is str:
        plain = _PLAIN(value)
        if plain is None:
            return _parse_literal(value, maximum)
        # The common spelling, at most 6 fractional digits and no exponent: the same result,
        # sooner.
        whole, frac = plain.groups()
        micro = int(whole) * MICRO + (int(frac) * _FRACTION_UNIT[len(frac)] if frac else 0)
        if micro > maximum:
            raise CreditsError("too_large", f"credits must not exceed {format_credits(maximum)}")
        return micro
    if type(value) is int:
        if value < 0:
            raise CreditsError("negative", "credits must not be negative")
        if value > maximum // MICRO:
            raise CreditsError("too_large", f"credits must not exceed {format_credits(maximum)}")
        return value * MICRO
    if isinstance(value, str):
        return _parse_literal(value, maximum)
    if isinstance(value, float):
        raise CreditsError(
            "inexact", "credits arrived as a float, which has lost the digits that were written"
        )
    raise CreditsError("not_a_number", f"credits must be a number, not {type(value).__name__}")


def _parse_literal(text: str, maximum: int) -> int:
    if len(text) > _MAX_LITERAL_CHARS:
        raise CreditsError("not_a_number", "credits literal is too long")
    m = _LITERAL.fullmatch(text)
    if m is None:
        raise CreditsError("not_a_number", f"credits must be a decimal number, got {text[:40]!r}")
    minus, whole, frac, exp_text = m.groups()
    frac = frac or ""
    digits = (whole + frac).lstrip("0")
    if not digits:
        return 0
    # value = int(digits) * 10**-scale; drop trailing zeros so scale is the true precision.
    stripped = digits.rstrip("0")
    scale = len(frac) - (len(digits) - len(stripped))
    digits = stripped
    if minus:
        raise CreditsError("negative", "credits must not be negative")
    if exp_text:
        if len(exp_text.lstrip("+-").lstrip("0")) > 6:
            if exp_text[0] == "-":
                raise CreditsError("too_precise", "credits may have at most 6 fractional digits")
            raise CreditsError("too_large", f"credits must not exceed {format_credits(maximum)}")
        scale -= int(exp_text)
    if scale > SCALE:
        raise CreditsError("too_precise", "credits may have at most 6 fractional digits")
    # len(digits) + SCALE - scale is the number of digits of the result: compare before building it.
    if len(digits) + SCALE - scale > len(str(maximum)):
        raise CreditsError("too_large", f"credits must not exceed {format_credits(maximum)}")
    micro = int(digits + "0" * (SCALE - scale))
    if micro > maximum:
        raise CreditsError("too_large", f"credits must not exceed {format_credits(maximum)}")
    return micro


def format_credits(micro: int) -> str:
    """The shortest plain decimal string of `micro` micro-credits: 1_500_000 -> "1.5",
    1 -> "0.000001", 3_000_000_000 -> "3000". Never an exponent; negatives get a "-"."""
    if type(micro) is not int:
        raise TypeError("micro-credits must be an int")
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")
