"""The fast TOML writer: what it writes reads back as the data; what it cannot, it declines."""

from __future__ import annotations

import datetime
import math
import tomllib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent import tomlwrite

# What run.info holds: text (any, control characters and DEL included), bools, 64-bit
# ints, floats (NaN aside: it equals nothing), lists of those, tables, arrays of tables.
_scalars = (
    st.text()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
_values = st.recursive(
    _scalars | st.lists(_scalars, max_size=4),
    lambda inner: (
        st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.lists(st.dictionaries(st.text(max_size=8), inner, max_size=3), min_size=1, max_size=3)
    ),
    max_leaves=12,
)
_documents = st.dictionaries(st.text(max_size=8), _values, max_size=6)


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


@given(_documents)
def test_whatever_it_writes_reads_back_as_the_data(data: dict[str, Any]) -> None:
    text = tomlwrite.dumps(data)
    assert text is not None
    assert tomllib.loads(text) == data


def test_del_is_escaped_and_infinities_are_written() -> None:
    data = {"bad": "del \x7f", "k\x7f": math.inf, "low": -math.inf}
    text = tomlwrite.dumps(data)
    assert text is not None and "\x7f" not in text
    assert tomllib.loads(text) == data


def test_values_it_does_not_write_are_declined() -> None:
    assert tomlwrite.dumps({"when": datetime.date(2026, 1, 1)}) is None
    assert tomlwrite.dumps({"mixed": [{"a": 1}, 2]}) is None
