"""``droprun submit``: write a valid request from KEY=VALUE pairs, never over an existing file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit

from agent.fsutil import create_temp
from agent.problems import UserError
from agent.schema import AgentConfig
from agent.settings import parse_request


def parse_value(text: str) -> Any:
    """Return ``text`` as a TOML value (``["a", "b"]``, ``3``, ``"2h"``), else as a plain string."""
    try:
        return tomlkit.parse(f"v = {text}")["v"]
    except Exception:  # not TOML: take it literally, the way a person meant it
        return text


def pairs_to_toml(pairs: Sequence[str], base: Mapping[str, Any] | None = None) -> str:
    """Return request TOML for ``KEY=VALUE`` pairs (``env.NAME=V`` sets one env variable,
    ``sweep.NAME=[...]`` one sweep key).

    ``base``: settings the pairs override key by key (``KEY=`` with nothing after the
    ``=`` removes a key of ``base``). Raises UserError for a pair without ``=``.
    """
    values: dict[str, Any] = dict(base or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{pair!r}: expected KEY=VALUE")
        table, dot, name = key.partition(".")
        if dot and table in ("env", "sweep") and name:
            entries = dict(values.get(table) or {})
            entries[name] = value if table == "env" else parse_value(value)
            values[table] = entries
        elif not value and key in values:
            del values[key]
        else:
            values[key] = parse_value(value)
    doc = tomlkit.document()
    for key, value in values.items():  # plain values first: a table takes the rest
        if not isinstance(value, dict):
            doc.add(key, value)
    for key, value in values.items():
        if isinstance(value, dict) and value:
            doc.add(key, value)
    return tomlkit.dumps(doc)


def write_request(
    config: AgentConfig, project: str, pairs: Sequence[str], base: Mapping[str, Any] | None = None
) -> Path:
    """Validate the request and write it into ``<share>/<project>/``; return its path.

    ``base``: settings that ``pairs`` override (see pairs_to_toml). The file appears whole
    (written to a temp file, then hard-linked to its name) and never replaces an existing
    request. Raises UserError or InvalidFile.
    """
    folder = config.share / project
    if "/" in project or not (folder / "bin").is_dir():
        raise UserError(f"{folder}: not a project folder (it needs a bin/ folder)")
    text = pairs_to_toml(pairs, base)
    parse_request(text.encode(), "run.request", config.targets)
    fd, tmp = create_temp(folder, ".submit-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        for i in range(1000):
            path = folder / ("run.request" if i == 0 else f"run-{i}.request")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise UserError(f"{folder}: too many requests waiting")
    finally:
        os.unlink(tmp)
