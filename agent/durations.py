"""Durations as people write them: ``"90m"``, ``"12h"``, ``"1d2h"``, or seconds."""

from __future__ import annotations

import re

from agent.tomlsrc import describe

# Units in the order they must appear; each at most once.
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
# ASCII digits only: re's \d and int() would also take Arabic-Indic or full-width digits.
_DURATION_RE = re.compile(r"(?:(\d{1,9})d)?(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?", re.ASCII)
_EXPECTED = 'a duration like "90m", "12h", "1d2h" or "45s", or a whole number of seconds'


def parse_duration(value: object) -> int:
    """Return the number of seconds (> 0) that ``value`` stands for.

    ``value`` is a string of units ``d``, ``h``, ``m``, ``s`` in that order (``"1d2h30m15s"``,
    case-insensitive, blanks ignored) or an int of seconds (a bool is not an int here).
    Raises ValueError saying what was found and what was expected.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"found {describe(value)}, expected {_EXPECTED}")
    if isinstance(value, int):
        seconds = value
    else:
        text = "".join(value.split()).lower()
        match = _DURATION_RE.fullmatch(text)
        if not text or match is None:
            quoted_number = text.isascii() and text.isdigit()
            hint = " (a number of seconds is written without quotes)" if quoted_number else ""
            raise ValueError(f"found {describe(value)}, expected {_EXPECTED}{hint}")
        seconds = sum(
            int(part or 0) * unit for part, (_, unit) in zip(match.groups(), _UNITS, strict=True)
        )
    if seconds <= 0:
        raise ValueError(f"found {describe(value)}, expected a duration longer than zero")
    return seconds


def format_duration(seconds: int) -> str:
    """Return ``seconds`` (>= 0) written as units, largest first: 5400 -> ``"1h30m"``.

    Raises ValueError for a negative number.
    """
    if seconds < 0:
        raise ValueError(f"found {seconds}, expected a number of seconds >= 0")
    if seconds == 0:
        return "0s"
    parts = []
    rest = seconds
    for suffix, unit in _UNITS:
        count, rest = divmod(rest, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)
