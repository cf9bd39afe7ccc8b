"""Commented settings files for ``droprun init``, generated from :mod:`agent.schema`.

Every key appears with its doc line as a comment and its default (or, if it has none, an
example) commented out, so a template is valid as written and documents every key.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomlkit

from agent.fields import Field
from agent.hosts.kinds import Kinds, builtin_kinds
from agent.schema import (
    AGENT_FIELDS,
    NOTIFY_FIELDS,
    PROJECT_NOTIFY_FIELDS,
    REQUEST_ONLY_FIELDS,
    RUN_FIELDS,
)

_HOW_TO = '# Every key is shown commented out with its default; remove the "#" to set it.'


def _toml(value: Any) -> str:
    """Return ``value`` written as a TOML value (tables inline)."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    text: str = tomlkit.item(value).as_string()
    return text


def _field_lines(spec: Field, *, value: Any = None, active: bool = False) -> list[str]:
    """Return the comment lines of one key: its doc, then ``key = value`` (commented out
    unless ``active``). ``value`` defaults to the key's default, else its example."""
    doc = spec.doc
    shown = value if value is not None else spec.default
    if shown is None:
        shown = spec.example
    elif spec.example is not None and spec.example != shown and value is None:
        doc += f" Example: {_toml(spec.example)}"
    line = f"{spec.name} = {_toml(shown)}"
    comments = textwrap.wrap(doc, width=86, break_long_words=False, break_on_hyphens=False)
    return [*(f"# {text}" for text in comments), line if active else f"# {line}"]


def _fields(fields: Sequence[Field]) -> list[str]:
    lines: list[str] = []
    for spec in fields:
        lines += [*_field_lines(spec), ""]
    return lines


def agent_template(share: Path, kinds: Kinds | None = None) -> str:
    """Return a valid ``droprun.toml`` for ``share``, with a commented ``[hosts.NAME]``
    example for every kind of host but ``local`` (the first with every key)."""
    lines = [
        "# droprun agent configuration. Check it with: droprun validate droprun.toml",
        _HOW_TO,
        "",
    ]
    for spec in AGENT_FIELDS:
        if spec.required:
            lines += [*_field_lines(spec, value=str(share), active=True), ""]
        else:
            lines += [*_field_lines(spec), ""]
    lines += [
        "# Run settings for every project; a project.toml and each request override them.",
        "[defaults]",
        "",
        *_fields(RUN_FIELDS),
        "# Notices when runs end or stall (Apprise URLs: e-mail, ntfy, Slack, Teams, ...).",
        "[notify]",
        "",
        *_fields(NOTIFY_FIELDS),
        "# Servers that runs can go to, one [hosts.NAME] table each; runs name them with",
        '# host = "NAME". The host "local" (this machine) always exists unless defined here.',
        "# A run's host may also name a group of hosts, a [groups] entry such as",
        '# fast = ["gpu1", "gpu2"]: the run goes to the first member with a free slot.',
    ]
    shown_common = False
    # The simplest kind first: its example shows every key that all hosts have.
    for kind in sorted((kinds or builtin_kinds()).values(), key=lambda k: len(k.own_fields())):
        if kind.name == "local":
            continue
        lines += ["#", f"# {kind.a_host[0].upper()}{kind.a_host[1:]} ({kind.doc}):", "#"]
        lines += [f"# [hosts.{kind.example}]"]
        own = kind.own_fields()
        common = [spec for spec in kind.fields() if spec not in own]
        for spec in [common[0], *own, *([] if shown_common else common[1:])]:
            value = kind.name if spec.name == "kind" else spec.example
            lines += _field_lines(spec, value=value if value is not None else spec.default)
        if shown_common:
            lines += ["# ...and the other keys of the first example that apply to it."]
        shown_common = True
    return "\n".join(lines) + "\n"


def project_template() -> str:
    """Return a ``project.toml`` that documents every run setting and sets none."""
    lines = [
        "# droprun project settings: they apply to every run of this project; a request",
        "# overrides them, and they override the agent's [defaults].",
        _HOW_TO,
        "",
        *_fields(RUN_FIELDS),
        "# Notices for this project's runs, besides the agent's (uncomment [notify] too).",
        "# [notify]",
        *_fields(PROJECT_NOTIFY_FIELDS),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def request_template() -> str:
    """Return a ``run.request`` that documents every key and sets none (a valid request)."""
    lines = [
        "# A droprun request: put this file into a project folder (the one with bin/) to start",
        "# a run. Results appear in results/run_N/ next to it. An empty request is fine: it runs",
        "# bin/run.sh with the project's settings.",
        _HOW_TO,
        "",
        *_fields(REQUEST_ONLY_FIELDS),
        *_fields(RUN_FIELDS),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
