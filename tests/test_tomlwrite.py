"""The fast TOML writer: what it writes reads back as the data; what it cannot, it declines."""

from __future__ import annotations

import datetime
import tomllib

from agent import tomlwrite


def test_tables_arrays_and_awkward_strings_read_back() -> None:
    data = {
        "format": 1,
        "name": 'a "quoted"\nline\tand \\ back, é, 💾',
        "flag": False,
        "rate": 0.1,
        "ids": ["0", "1"],
        "empty": [],
        "key with space": "x",
        "effective": {"args": ["--lr", "1e-3"], "env": {}, "sources": {"host": "built-in"}},
        "history": [{"state": "accepted", "at": "2026-01-01T00:00:00+00:00"}],
    }
    text = tomlwrite.dumps(data)
    assert text is not None and text.startswith("format = 1\n")
    assert tomllib.loads(text) == data


def test_values_it_does_not_write_are_declined() -> None:
    assert tomlwrite.dumps({"when": datetime.date(2026, 1, 1)}) is None
    assert tomlwrite.dumps({"bad": "del \x7f"}) is None  # not allowed unescaped in TOML
