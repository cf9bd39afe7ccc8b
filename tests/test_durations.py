"""Durations: the forms people write, and the messages for the ones they get wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90m", 5400),
        ("12h", 43200),
        ("1d2h", 93600),
        ("45s", 45),
        ("1d2h30m15s", 95415),
        ("1D 2H", 93600),
        ("0h5m", 300),
        (3600, 3600),
        (1, 1),
    ],
)
def test_good_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("soon", 'found "soon" (a string)'),
        ("", 'found "" (a string)'),
        ("1h1d", 'found "1h1d" (a string)'),
        ("1.5h", 'found "1.5h" (a string)'),
        ("-1h", 'found "-1h" (a string)'),
        ("3600", "written without quotes"),
        ("0s", "longer than zero"),
        (0, "found 0 (an integer), expected a duration longer than zero"),
        (-5, "found -5 (an integer)"),
        (True, "found true (a boolean)"),
        (1.5, "found 1.5 (a number with a fraction)"),
        (None, "found"),
        (["1h"], "found an array"),
    ],
)
def test_bad_durations_say_what_was_found_and_expected(value, found):
    with pytest.raises(ValueError, match="found") as info:
        parse_duration(value)
    assert found in str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5400, "1h30m"), (86400, "1d"), (45, "45s"), (93784, "1d2h3m4s"), (0, "0s"), (60, "1m")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_refuses_negative():
    with pytest.raises(ValueError, match="-1"):
        format_duration(-1)


@given(st.integers(min_value=1, max_value=10**9))
def test_format_then_parse_is_the_identity(seconds):
    assert parse_duration(format_duration(seconds)) == seconds
