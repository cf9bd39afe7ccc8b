"""Settings files checked against :mod:`agent.schema`, and the cascade of run settings.

Run settings cascade: built-in defaults < agent ``[defaults]`` < ``project.toml`` < request.
Every function here reports all problems of a file at once (``InvalidFile``), each with file,
line and key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.config import AgentConfig, HostConfig, NotifyConfig
from agent.durations import format_duration
from agent.fsutil import NotPlainFile, read_plain
from agent.names import request_kind
from agent.problems import InvalidFile, Problem
from agent.schema import (
    AGENT_FIELDS,
    AGENT_TABLES,
    HOST_FIELDS,
    NOTIFY_FIELDS,
    PROJECT_NOTIFY_FIELDS,
    REQUEST_ONLY_FIELDS,
    RUN_FIELDS,
    Field,
)
from agent.tomlsrc import KeyLines, KeyPath, Parsed, describe, key_name, parse_bytes
from agent.valuetypes import DURATION, HOST_NAME_RE, MAX_NAME, BadEntries, Context, did_you_mean

MAX_REQUEST_BYTES = 64 * 1024
# A hostile file must not turn into an error report many times its size.
MAX_PROBLEMS = 100
LOCAL_HOST = "local"
_SSH_ONLY = ("address", "user", "port", "key", "known_hosts")
_RUN_NAMES = frozenset(f.name for f in RUN_FIELDS)
_REQUEST_ONLY_NAMES = frozenset(f.name for f in REQUEST_ONLY_FIELDS)
_AGENT_ONLY_NAMES = frozenset(f.name for f in AGENT_FIELDS + HOST_FIELDS) | {"defaults", "hosts"}


def _empty_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RunSettings:
    """The merged, typed run settings of one run. Durations are in seconds."""

    host: str = "local"
    run_script: str = "run.sh"
    args: tuple[str, ...] = ()
    timeout: int = 86400
    backup_every: int = 600
    output_dir: str = "output"
    conda_env: str | None = None
    setup: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=_empty_env)
    exclude: tuple[str, ...] = (".git/", "__pycache__/", "*.pyc")
    code_from: str | None = None
    resume_from: str | None = None
    client: str | None = None


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
class _Source:
    """One file being checked: its name for messages and where its keys are."""

    file: str
    lines: KeyLines

    def problem(self, path: KeyPath, message: str, at: KeyPath | None = None) -> Problem:
        """Return a problem of key ``path``, on the line of ``at`` (default: of ``path``)."""
        line = self.lines.line_of(path if at is None else at)
        return Problem(self.file, line, key_name(path) or None, message)


def _misplaced(name: str, where: str) -> str | None:
    """Return a hint for a key that is valid in another kind of file, or None."""
    if where == "agent" and name in _RUN_NAMES:
        return "a run setting: put it under [defaults]"
    if where == "agent" and name in _REQUEST_ONLY_NAMES:
        return "only allowed in a .request file"
    if where != "agent" and name in _AGENT_ONLY_NAMES and name not in _RUN_NAMES:
        return "only allowed in the agent's droprun.toml"
    if where == "project" and name in _REQUEST_ONLY_NAMES:
        return "only allowed in a .request file"
    return None


def _check_table(
    data: Mapping[str, Any],
    fields: Sequence[Field],
    prefix: KeyPath,
    context: Context,
    source: _Source,
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


def _sorted(problems: list[Problem]) -> list[Problem]:
    """Return ``problems`` in line order, at most MAX_PROBLEMS of them and a last "and N more"."""
    problems = sorted(problems, key=lambda p: p.line or 0)
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    more = Problem(problems[0].file, None, None, f"and {rest} more problems not shown")
    return [*problems[:MAX_PROBLEMS], more]


def _layer(
    parsed: Parsed, file: str, host_names: Collection[str] | None, where: str
) -> dict[str, Any]:
    """Check a project file or request (``where``: "project" or "request"); raise InvalidFile."""
    if parsed.data is None:
        raise InvalidFile(list(parsed.problems))
    fields = RUN_FIELDS + REQUEST_ONLY_FIELDS if where == "request" else RUN_FIELDS
    source = _Source(file, parsed.lines)
    data = dict(parsed.data)
    notify: dict[str, Any] = {}
    problems: list[Problem] = []
    if where == "project" and "notify" in data:  # more notice URLs for this project's runs
        notify, problems = _subtable(
            data, "notify", PROJECT_NOTIFY_FIELDS, Context(), source, where
        )
        del data["notify"]
    values, more = _check_table(data, fields, (), Context(host_names), source, where)
    problems += more
    if notify:
        values["notify"] = notify
    if problems:
        raise InvalidFile(_sorted(problems))
    return values


def parse_request(data: bytes, filename: str, host_names: Collection[str] | None) -> dict[str, Any]:
    """Return the validated layer of a request's bytes (keys present only, typed).

    ``host_names`` None skips the host check. Raises InvalidFile listing every problem.
    """
    if len(data) > MAX_REQUEST_BYTES:
        message = f"the file has {len(data)} bytes, a request may have at most {MAX_REQUEST_BYTES}"
        raise InvalidFile([Problem(filename, None, None, message)])
    return _layer(parse_bytes(data, filename), filename, host_names, "request")


def _read(path: Path, limit: int | None = None, *, follow: bool = True) -> bytes:
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
    data = _read(path, MAX_REQUEST_BYTES, follow=False)
    return _layer(parse_bytes(data, str(path)), str(path), host_names, "project")


def _host(
    name: str, data: object, base: Context, source: _Source
) -> tuple[HostConfig | None, list[Problem]]:
    """Check one ``[hosts.NAME]`` table; return the host (None if broken) and its problems."""
    path = ("hosts", name)
    if not HOST_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        expected = "a host name of letters, digits, _ . - (not starting with . - _)"
        return None, [source.problem(path, f"found {describe(name)}, expected {expected}")]
    if not isinstance(data, dict):
        return None, [source.problem(path, f"found {describe(data)}, expected a table")]
    values, problems = _check_table(data, HOST_FIELDS, path, base, source, "agent")
    kind = values.get("kind", "ssh" if "address" in data else "local")
    if "kind" not in data and "address" in data:
        problems.append(
            source.problem((*path, "kind"), 'missing: a host with an address needs kind = "ssh"')
        )
    elif kind == "ssh":
        for needed in ("address", "user"):
            if needed not in data:
                message = f"missing: an ssh host needs {needed}"
                problems.append(source.problem((*path, needed), message, path))
    elif kind == "local":
        problems += [
            source.problem((*path, key), 'only used by ssh hosts: set kind = "ssh" or remove it')
            for key in _SSH_ONLY
            if key in values
        ]
    gpus, slots = values.get("gpus", ()), values.get("slots", 1)
    if 0 < len(gpus) < slots:
        message = f"found {len(gpus)} GPU ids for {slots} slots, expected one for each slot"
        problems.append(source.problem((*path, "gpus"), message))
    if problems:
        return None, problems
    defaults = {s.name: s.convert(s.default, base) for s in HOST_FIELDS if s.default is not None}
    return HostConfig(name=name, **(defaults | values)), []


def _agent(
    parsed: Parsed, path: Path
) -> tuple[AgentConfig | None, list[Problem], frozenset[str] | None]:
    """Check a parsed agent file; return the config (None if any problem), every problem, and
    the host names it defines (None if unknown)."""
    if parsed.data is None:
        return None, list(parsed.problems), None
    data, source = parsed.data, _Source(str(path), parsed.lines)
    base = Context(base_dir=path.absolute().parent)
    tables = {table.name: table for table in AGENT_TABLES}
    top = {k: v for k, v in data.items() if k not in tables}
    values, problems = _check_table(top, AGENT_FIELDS, (), base, source, "agent")
    hosts_data = data.get("hosts", {})
    hosts: dict[str, HostConfig] = {}
    if not isinstance(hosts_data, dict):
        problems.append(
            source.problem(("hosts",), f"found {describe(hosts_data)}, expected a table")
        )
        hosts_data = {}
    for name, host_data in hosts_data.items():
        host, host_problems = _host(name, host_data, base, source)
        problems += host_problems
        if host is not None:
            hosts[name] = host
    host_names = frozenset(hosts_data) | {LOCAL_HOST}
    hosts.setdefault(LOCAL_HOST, HostConfig(name=LOCAL_HOST, kind="local"))
    context = Context(host_names, base.base_dir)
    defaults, more = _subtable(data, "defaults", RUN_FIELDS, context, source, "defaults")
    notify, more_notify = _subtable(data, "notify", NOTIFY_FIELDS, base, source, "agent")
    problems += more + more_notify
    if problems:
        return None, _sorted(problems), host_names
    tuning = {s.name: s.convert(s.default, base) for s in AGENT_FIELDS if s.default is not None}
    config = AgentConfig(
        path=path,
        hosts=MappingProxyType(hosts),
        defaults=MappingProxyType(defaults),
        notify=NotifyConfig(**notify),
        **(tuning | values),
    )
    return config, [], host_names


def _subtable(
    data: Mapping[str, Any],
    name: str,
    fields: Sequence[Field],
    context: Context,
    source: _Source,
    where: str,
) -> tuple[dict[str, Any], list[Problem]]:
    """Check the table ``[name]`` of ``data`` (absent: empty); return its values and problems."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        return {}, [source.problem((name,), f"found {describe(table)}, expected a table")]
    return _check_table(table, fields, (name,), context, source, where)


def load_agent_config(path: Path) -> AgentConfig:
    """Return the validated agent config of ``droprun.toml`` at ``path``.

    Relative local paths resolve against the file's folder; the host "local" is added unless
    the file defines it. Raises InvalidFile listing every problem.
    """
    config, problems, _ = _agent(parse_bytes(_read(path), str(path)), path)
    if config is None:
        raise InvalidFile(problems)
    return config


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
                values[name], sources[name] = layer[name], layer_name
    values["env"] = MappingProxyType(dict(values["env"]))
    for name in ("args", "setup", "exclude"):
        values[name] = tuple(values[name])
    return Effective(
        RunSettings(**values), MappingProxyType(sources), request.get("name"), request.get("notes")
    )


def settings_from_table(table: Mapping[str, Any], filename: str = "run.info") -> RunSettings:
    """Return the run settings that :meth:`Effective.to_table` wrote (``sources`` is ignored).

    Raises InvalidFile if ``table`` is not a valid set of run settings.
    """
    data = {key: value for key, value in table.items() if key != "sources"}
    source = _Source(filename, KeyLines())
    values, problems = _check_table(data, RUN_FIELDS, ("effective",), Context(), source, "project")
    if problems:
        raise InvalidFile(problems)
    return merge({}, {}, values).settings


def _kind_of(path: Path) -> str | None:
    """Return "request", "project" or "agent" by the file's name, or None.

    A ``.template`` or ``.example`` suffix is ignored (``droprun init`` writes such files).
    """
    name = path.name.removesuffix(".template").removesuffix(".example")
    if request_kind(name) == "plain":
        return "request"
    if name == "project.toml":
        return "project"
    return "agent" if name.endswith(".toml") else None


def validate_paths(paths: Sequence[Path], config: AgentConfig | None) -> list[Problem]:
    """Return every problem of every file in ``paths`` (for ``droprun validate``).

    The kind of a file comes from its name. Host names come from ``config``, else from the
    first agent file among ``paths``; if neither, the host check is skipped.
    """
    host_names: frozenset[str] | None = frozenset(config.hosts) if config else None
    found: dict[Path, list[Problem]] = {}
    for path in paths:
        if _kind_of(path) == "agent":
            try:
                _, found[path], names = _agent(parse_bytes(_read(path), str(path)), path)
            except InvalidFile as exc:
                found[path], names = exc.problems, None
            host_names = names if host_names is None else host_names
    problems: list[Problem] = []
    for path in paths:
        kind = _kind_of(path)
        try:
            if kind == "agent":
                problems += found[path]
            elif kind == "project":
                _layer(
                    parse_bytes(_read(path, MAX_REQUEST_BYTES), str(path)),
                    str(path),
                    host_names,
                    "project",
                )
            elif kind == "request":
                parse_request(_read(path, MAX_REQUEST_BYTES), str(path), host_names)
            else:
                expected = "a *.request file, a project.toml or an agent file ending in .toml"
                problems.append(
                    Problem(str(path), None, None, f"not a droprun file: expected {expected}")
                )
        except InvalidFile as exc:
            problems += exc.problems
    return problems
