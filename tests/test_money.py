"""Credits <-> micro-credits: exact both ways, every refusal with its code."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter.errors import InvalidInput
from meter.money import INT64_MAX, MICRO, CreditsError, format_credits, parse_credits


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("0.1", 100_000),
        ("1e-6", 1),
        ("1E-6", 1),
        ("123456.000001", 123_456_000_001),
        ("3000", 3_000_000_000),
        (3000, 3_000_000_000),
        ("0", 0),
        (0, 0),
        ("0.000001", 1),
        ("1.5", 1_500_000),
        ("12.5e-1", 1_250_000),
        ("1e+3", 1_000_000_000),
        ("0.0000015e1", 15),
        ("0e999999999", 0),
        ("-0", 0),
        ("-0.0", 0),
        ("9223372036854.775807", INT64_MAX),
    ],
)
def test_exact_values(value: str | int, micro: int) -> None:
    assert parse_credits(value) == micro


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("0.1000000", 100_000),
        ("1.50000000000", 1_500_000),
        ("1.5e0", 1_500_000),
        ("15e-1", 1_500_000),
        ("0.0000010", 1),
        ("0.00000100000e0", 1),
    ],
)
def test_trailing_zeros_beyond_six_digits_are_accepted(value: str, micro: int) -> None:
    # They do not change the value, and a JSON number cannot keep them once parsed anyway.
    assert parse_credits(value) == micro


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("0.0000001", "too_precise"),
        ("1.0000001", "too_precise"),
        ("123456.0000001", "too_precise"),
        ("1e-7", "too_precise"),
        ("0.00000015e1", "too_precise"),
        ("1e-999999999", "too_precise"),
        ("-1", "negative"),
        (-1, "negative"),
        ("-0.5", "negative"),
        ("-1e-9", "negative"),
        ("NaN", "not_a_number"),
        ("nan", "not_a_number"),
        ("Infinity", "not_a_number"),
        ("-Infinity", "not_a_number"),
        ("inf", "not_a_number"),
        ("", "not_a_number"),
        (" 1", "not_a_number"),
        ("1 ", "not_a_number"),
        ("+1", "not_a_number"),
        ("01", "not_a_number"),
        (".5", "not_a_number"),
        ("5.", "not_a_number"),
        ("1e", "not_a_number"),
        ("0x10", "not_a_number"),
        ("1_000", "not_a_number"),
        ("١", "not_a_number"),
        ("1" * 1001, "not_a_number"),
        (True, "not_a_number"),
        (False, "not_a_number"),
        (None, "not_a_number"),
        ([1], "not_a_number"),
        (0.5, "inexact"),
        (1.0, "inexact"),
        ("9223372036854.775808", "too_large"),
        ("1e999999999", "too_large"),
        ("9" * 900 + "e999999", "too_large"),
        (10**30, "too_large"),
    ],
)
def test_refusals(value: object, code: str) -> None:
    with pytest.raises(CreditsError) as info:
        parse_credits(value)  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.message


def test_credits_error_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_credits("-1")


def test_maximum() -> None:
    assert parse_credits("1000000", maximum=10**12) == 10**12
    assert parse_credits(1_000_000, maximum=10**12) == 10**12
    for over in ("1000000.000001", "1e7", 1_000_001):
        with pytest.raises(CreditsError) as info:
            parse_credits(over, maximum=10**12)
        assert info.value.code == "too_large"


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (1_500_000, "1.5"),
        (1, "0.000001"),
        (3_000_000_000, "3000"),
        (0, "0"),
        (123_456_000_001, "123456.000001"),
        (100_000, "0.1"),
        (-1_500_000, "-1.5"),
        (-1, "-0.000001"),
    ],
)
def test_format(micro: int, text: str) -> None:
    assert format_credits(micro) == text


def test_format_refuses_non_int() -> None:
    with pytest.raises(TypeError):
        format_credits(1.5)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_format_then_parse_round_trips(micro: int) -> None:
    text = format_credits(micro)
    assert "e" not in text
    assert parse_credits(text) == micro


_literals = st.builds(
    lambda minus, whole, frac, exp: f"{minus}{whole}{frac}{exp}",
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.integers(1, 10**20).map(str)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(lambda f: "." + f)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, sign, n: f"{e}{sign}{n}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 30),
        ),
    ),
)


@given(_literals, st.sampled_from([INT64_MAX, 10**12, 10**6]))
def test_agrees_with_decimal_arithmetic(text: str, maximum: int) -> None:
    with localcontext() as ctx:
        ctx.prec = 200
        value = Decimal(text)
        scaled = value * MICRO
        if value < 0:
            expected: int | str = "negative"
        elif scaled != scaled.to_integral_value():
            expected = "too_precise"
        elif scaled > maximum:
            expected = "too_large"
        else:
            expected = int(scaled)
    try:
        got: int | str = parse_credits(text, maximum=maximum)
    except CreditsError as exc:
        got = exc.code
    assert got == expected
