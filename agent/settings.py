"""Settings files checked against :mod:`agent.schema`, and the cascade of run settings.

Run settings cascade: built-in defaults < agent ``[defaults]`` < ``project.toml`` < request.
Every function here reports all problems of a file at once (``InvalidFile``), each with file,
line and key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.durations import format_duration
from agent.fields import Field
from agent.fsutil import NotPlainFile, read_plain
from agent.problems import InvalidFile, Problem
from agent.schema import (
    AGENT_FIELDS,
    PROJECT_NOTIFY_FIELDS,
    REQUEST_ONLY_FIELDS,
    RUN_FIELDS,
    RunSettings,
)
from agent.tomlsrc import KeyLines, KeyPath, Parsed, describe, key_name, parse_bytes
from agent.valuetypes import DURATION, BadEntries, Context, did_you_mean

MAX_REQUEST_BYTES = 64 * 1024
# A hostile file must not turn into an error report many times its size.
MAX_PROBLEMS = 100
_RUN_NAMES = frozenset(f.name for f in RUN_FIELDS)
_REQUEST_ONLY_NAMES = frozenset(f.name for f in REQUEST_ONLY_FIELDS)


@dataclass(frozen=True)
class Effective:
    """Merged run settings, where each came from ("built-in", "agent", "project", "request"),
    and the request-only ``name`` and ``notes``."""

    settings: RunSettings
    sources: Mapping[str, str]
    name: str | None = None
    notes: str | None = None

    def to_table(self) -> dict[str, Any]:
        """Return every run setting as TOML values, plus a ``sources`` sub-table.

        Durations become strings like ``"1h30m"``, arrays lists, ``env`` a table; an unset
        ``conda_env`` or ``client`` is left out (TOML has no null).
        """
        table: dict[str, Any] = {}
        for spec in RUN_FIELDS:
            value = getattr(self.settings, spec.name)
            if value is None:
                continue
            if spec.type is DURATION:
                value = format_duration(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            table[spec.name] = value
        table["sources"] = dict(self.sources)
        return table


@dataclass(frozen=True)
class Source:
    """One file being checked: its name for messages and where its keys are."""

    file: str
    lines: KeyLines

    def problem(self, path: KeyPath, message: str, at: KeyPath | None = None) -> Problem:
        """Return a problem of key ``path``, on the line of ``at`` (default: of ``path``)."""
        line = self.lines.line_of(path if at is None else at)
        return Problem(self.file, line, key_name(path) or None, message)


def _agent_only_names() -> frozenset[str]:
    """Return the keys that only the agent's droprun.toml may hold (every kind's host keys)."""
    from agent.hosts.kinds import builtin_kinds

    host_keys = {spec.name for kind in builtin_kinds().values() for spec in kind.fields()}
    return frozenset(f.name for f in AGENT_FIELDS) | host_keys | {"defaults", "hosts", "groups"}


def _misplaced(name: str, where: str) -> str | None:
    """Return a hint for a key that is valid in another kind of file, or None."""
    if where == "agent" and name in _RUN_NAMES:
        return "a run setting: put it under [defaults]"
    if where == "agent" and name in _REQUEST_ONLY_NAMES:
        return "only allowed in a .request file"
    if where != "agent" and name in _agent_only_names() and name not in _RUN_NAMES:
        return "only allowed in the agent's droprun.toml"
    if where == "project" and name in _REQUEST_ONLY_NAMES:
        return "only allowed in a .request file"
    return None


def check_table(
    data: Mapping[str, Any],
    fields: Sequence[Field],
    prefix: KeyPath,
    context: Context,
    source: Source,
    where: str,
) -> tuple[dict[str, Any], list[Problem]]:
    """Check the keys of one table; return the converted values and every problem."""
    by_name = {spec.name: spec for spec in fields}
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in data.items():
        path = (*prefix, name)
        spec = by_name.get(name)
        if spec is None:
            unknown = "unknown table" if isinstance(value, dict) else "unknown key"
            hint = _misplaced(name, where) or f"{unknown}{did_you_mean(name, by_name)}"
            problems.append(source.problem(path, hint))
            continue
        try:
            values[name] = spec.convert(value, context)
        except BadEntries as exc:
            problems += [source.problem((*path, entry), text) for entry, text in exc.entries]
        except ValueError as exc:
            problems.append(source.problem(path, str(exc)))
    for spec in fields:
        if spec.required and spec.name not in data:
            problems.append(
                source.problem(
                    (*prefix, spec.name), f"missing; this key is required. {spec.doc}", prefix
                )
            )
    return values, problems


def sorted_problems(problems: list[Problem]) -> list[Problem]:
    """Return ``problems`` in line order, at most MAX_PROBLEMS of them and a last "and N more"."""
    problems = sorted(problems, key=lambda p: p.line or 0)
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    more = Problem(problems[0].file, None, None, f"and {rest} more problems not shown")
    return [*problems[:MAX_PROBLEMS], more]


def check_layer(
    parsed: Parsed, file: str, host_names: Collection[str] | None, where: str
) -> dict[str, Any]:
    """Check a project file or request (``where``: "project" or "request"); raise InvalidFile."""
    if parsed.data is None:
        raise InvalidFile(list(parsed.problems))
    fields = RUN_FIELDS + REQUEST_ONLY_FIELDS if where == "request" else RUN_FIELDS
    source = Source(file, parsed.lines)
    data = dict(parsed.data)
    notify: dict[str, Any] = {}
    problems: list[Problem] = []
    if where == "project" and "notify" in data:  # more notice URLs for this project's runs
        notify, problems = subtable(data, "notify", PROJECT_NOTIFY_FIELDS, Context(), source, where)
        del data["notify"]
    values, more = check_table(data, fields, (), Context(host_names), source, where)
    problems += more
    if notify:
        values["notify"] = notify
    if problems:
        raise InvalidFile(sorted_problems(problems))
    return values


def parse_request(data: bytes, filename: str, host_names: Collection[str] | None) -> dict[str, Any]:
    """Return the validated layer of a request's bytes (keys present only, typed).

    ``host_names`` None skips the host check. Raises InvalidFile listing every problem.
    """
    if len(data) > MAX_REQUEST_BYTES:
        message = f"the file has {len(data)} bytes, a request may have at most {MAX_REQUEST_BYTES}"
        raise InvalidFile([Problem(filename, None, None, message)])
    return check_layer(parse_bytes(data, filename), filename, host_names, "request")


def read_file(path: Path, limit: int | None = None, *, follow: bool = True) -> bytes:
    """Return the bytes of the regular file ``path``.

    A FIFO or device (which would block or never end) is refused unread, and so is a file
    over ``limit`` bytes, and with ``follow`` False a link (a share user's link to a file
    of the agent's must not come back quoted in error messages). Raises InvalidFile.
    """

    def refuse(message: str) -> InvalidFile:
        return InvalidFile([Problem(str(path), None, None, message)])

    try:
        data = read_plain(path, limit, follow=follow)
    except NotPlainFile as exc:
        if exc.what == "a link":
            raise refuse("is a link: put the file itself here") from exc
        raise refuse("not a regular file") from exc
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from exc
    if limit is not None and len(data) > limit:
        size = path.stat(follow_symlinks=follow).st_size
        raise refuse(f"the file has {size} bytes, expected at most {limit}")
    return data


def read_project_layer(path: Path, host_names: Collection[str] | None) -> dict[str, Any]:
    """Return the validated layer of ``project.toml`` ({} if there is none); raises InvalidFile."""
    if not (path.exists() or path.is_symlink()):
        return {}
    data = read_file(path, MAX_REQUEST_BYTES, follow=False)
    return check_layer(parse_bytes(data, str(path)), str(path), host_names, "project")


def subtable(
    data: Mapping[str, Any],
    name: str,
    fields: Sequence[Field],
    context: Context,
    source: Source,
    where: str,
) -> tuple[dict[str, Any], list[Problem]]:
    """Check the table ``[name]`` of ``data`` (absent: empty); return its values and problems."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        return {}, [source.problem((name,), f"found {describe(table)}, expected a table")]
    return check_table(table, fields, (name,), context, source, where)


def merge(
    defaults: Mapping[str, Any], project: Mapping[str, Any], request: Mapping[str, Any]
) -> Effective:
    """Return the merged settings of validated layers: each layer overrides the one below,
    key by key (a table like ``env`` or an array is replaced as a whole)."""
    built_in = RunSettings()
    values = {spec.name: getattr(built_in, spec.name) for spec in RUN_FIELDS}
    sources = dict.fromkeys(values, "built-in")
    for layer_name, layer in (("agent", defaults), ("project", project), ("request", request)):
        for name in values:
            if name in layer:
                values[name], sources[name] = _frozen(layer[name]), layer_name
    return Effective(
        RunSettings(**values), MappingProxyType(sources), request.get("name"), request.get("notes")
    )


def _frozen(value: Any) -> Any:
    """Return ``value`` with lists as tuples and tables read-only (the settings are frozen)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return MappingProxyType(dict(value))
    return value


def settings_from_table(table: Mapping[str, Any], filename: str = "run.info") -> RunSettings:
    """Return the run settings that :meth:`Effective.to_table` wrote (``sources`` is ignored).

    Raises InvalidFile if ``table`` is not a valid set of run settings.
    """
    data = {key: value for key, value in table.items() if key != "sources"}
    source = Source(filename, KeyLines())
    values, problems = check_table(data, RUN_FIELDS, ("effective",), Context(), source, "project")
    if problems:
        raise InvalidFile(problems)
    return merge({}, {}, values).settings
