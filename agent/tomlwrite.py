"""A fast TOML writer for plain data (run.info is written at every state change).

tomlkit takes milliseconds for one run.info, all of it holding the agent's interpreter
lock; this writes the same data in a tenth of that. Only str, bool, int, float, lists of
those, tables and arrays of tables are written; anything else returns None (the caller
then uses tomlkit). That what it writes reads back as the data is a property test
(``tests/test_tomlwrite.py``), not a parse of every text it writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")


class _Unsupported(Exception):
    """A value this writer does not write."""


def _string(text: str) -> str:
    """Return ``text`` as a TOML basic string: JSON's escapes are TOML's too, and DEL,
    which JSON leaves as it is and TOML forbids, is escaped as well."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(name: str) -> str:
    return name if _BARE.fullmatch(name) else _string(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value)
            if math.isfinite(value)
            else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise _Unsupported(type(value).__name__)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(data: Mapping[str, Any], path: str, out: list[str]) -> None:
    later = []
    for name, value in data.items():
        if isinstance(value, dict) or _is_table_array(value):
            later.append((name, value))
        else:
            out.append(f"{_key(name)} = {_value(value)}\n")
    for name, value in later:
        full = f"{path}.{_key(name)}" if path else _key(name)
        if isinstance(value, dict):
            out.append(f"\n[{full}]\n")
            _table(value, full, out)
        else:
            for entry in value:
                out.append(f"\n[[{full}]]\n")
                _table(entry, full, out)


def dumps(data: Mapping[str, Any]) -> str | None:
    """Return ``data`` as TOML text, or None if it holds a value not written here (pure)."""
    out: list[str] = []
    try:
        _table(data, "", out)
    except _Unsupported:
        return None
    return "".join(out)
