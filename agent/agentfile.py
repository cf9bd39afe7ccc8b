"""The agent's ``droprun.toml`` checked against the schema and the registry of host kinds,
and ``droprun validate`` over any mix of agent files, project files and requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.hosts.kinds import HostKind, Kinds, builtin_kinds
from agent.names import request_kind
from agent.problems import InvalidFile, Problem
from agent.schema import (
    AGENT_FIELDS,
    AGENT_TABLES,
    NOTIFY_FIELDS,
    RUN_FIELDS,
    AgentConfig,
    HostConfig,
    NotifyConfig,
)
from agent.settings import (
    MAX_REQUEST_BYTES,
    Source,
    check_layer,
    check_table,
    parse_request,
    read_file,
    sorted_problems,
    subtable,
)
from agent.tomlsrc import Parsed, describe, key_name, parse_bytes
from agent.valuetypes import HOST_NAME_RE, MAX_NAME, Context, ValueType, choice

LOCAL_HOST = "local"


def _kind_of_host(
    data: Mapping[str, Any], kinds: Kinds, path: tuple[str, ...], base: Context, source: Source
) -> tuple[HostKind | None, list[Problem]]:
    """Return the kind a host table names (``local`` if it names none and has no key of
    another kind), or None and the problem."""
    if "kind" not in data:
        owners = {k: [s.name for s in k.own_fields() if s.name in data] for k in kinds.values()}
        owners = {k: owned for k, owned in owners.items() if owned}
        if owners:
            # The kind that owns the most of its keys, the simplest of those (a slurm host
            # has an ssh host's keys too: an address alone means ssh).
            kind = min(owners, key=lambda k: (-len(owners[k]), len(k.own_fields())))
            message = f'missing: a host with {owners[kind][0]} needs kind = "{kind.name}"'
            return None, [source.problem((*path, "kind"), message)]
        return kinds[LOCAL_HOST], []
    names = ValueType("string", choice(*kinds))
    try:
        return kinds[names.convert(data["kind"], base)], []
    except ValueError as exc:
        return None, [source.problem((*path, "kind"), str(exc))]


def _host(
    name: str, data: object, base: Context, source: Source, kinds: Kinds
) -> tuple[HostConfig | None, list[Problem]]:
    """Check one ``[hosts.NAME]`` table; return the host (None if broken) and its problems."""
    path = ("hosts", name)
    if not HOST_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        expected = "a host name of letters, digits, _ . - (not starting with . - _)"
        return None, [source.problem(path, f"found {describe(name)}, expected {expected}")]
    if not isinstance(data, dict):
        return None, [source.problem(path, f"found {describe(data)}, expected a table")]
    kind, problems = _kind_of_host(data, kinds, path, base, source)
    if kind is None:
        return None, problems
    fields = {spec.name: spec for spec in kind.fields()}
    elsewhere = {spec.name: other for other in kinds.values() for spec in other.own_fields()}
    for key in data:
        if key not in fields and key in elsewhere:
            other = elsewhere[key].name
            message = f'only used by {other} hosts: set kind = "{other}" or remove it'
            problems.append(source.problem((*path, key), message))
    mine = {key: value for key, value in data.items() if key in fields or key not in elsewhere}
    values, more = check_table(mine, tuple(fields.values()), path, base, source, "agent")
    problems += more
    for spec in fields.values():
        if spec.required and spec.name not in data:  # said as "an ssh host needs user"
            problems = [p for p in problems if p.key != key_name((*path, spec.name))]
            message = f"missing: {kind.a_host} needs {spec.name}"
            problems.append(source.problem((*path, spec.name), message, path))
    if problems:
        return None, problems
    config = kind.config(name=name, **(values | {"kind": kind.name}))
    problems += [source.problem((*path, key), text) for key, text in _rules(config, kind)]
    return (None, problems) if problems else (config, [])


def _rules(config: HostConfig, kind: HostKind) -> list[tuple[str, str]]:
    """Return the (key, message) problems of a whole host config: the common rules first."""
    found = []
    if 0 < len(config.gpus) < config.slots:
        gpus, slots = len(config.gpus), config.slots
        message = f"found {gpus} GPU ids for {slots} slots, expected one for each slot"
        found.append(("gpus", message))
    return found + kind.rules(config)


def _groups(
    data: object, hosts: frozenset[str], source: Source
) -> tuple[dict[str, tuple[str, ...]], list[Problem]]:
    """Check ``[groups]``: each a non-empty list of defined hosts, named unlike any host."""
    if not isinstance(data, dict):
        return {}, [source.problem(("groups",), f"found {describe(data)}, expected a table")]
    groups: dict[str, tuple[str, ...]] = {}
    problems = []
    for name, members in data.items():
        path = ("groups", name)
        if not HOST_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
            expected = "a group name of letters, digits, _ . - (not starting with . - _)"
            problems.append(source.problem(path, f"found {describe(name)}, expected {expected}"))
        elif name in hosts:
            problems.append(source.problem(path, f"a host is named {name!r} too: rename one"))
        elif not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            expected = 'an array of host names like ["gpu1", "gpu2"]'
            problems.append(source.problem(path, f"found {describe(members)}, expected {expected}"))
        elif not members:
            problems.append(source.problem(path, "an empty group: name at least one host"))
        else:
            unknown = [m for m in members if m not in hosts]
            if unknown:
                known = ", ".join(f'"{h}"' for h in sorted(hosts))
                message = f'"{unknown[0]}" is not a host of [hosts] (hosts: {known})'
                problems.append(source.problem(path, message))
            else:
                groups[name] = tuple(dict.fromkeys(members))
    return groups, problems


def _agent(
    parsed: Parsed, path: Path, kinds: Kinds
) -> tuple[AgentConfig | None, list[Problem], frozenset[str] | None]:
    """Check a parsed agent file; return the config (None if any problem), every problem, and
    the names a run's ``host`` may give: hosts and groups (None if unknown)."""
    if parsed.data is None:
        return None, list(parsed.problems), None
    data, source = parsed.data, Source(str(path), parsed.lines)
    base = Context(base_dir=path.absolute().parent)
    tables = {table.name for table in AGENT_TABLES} | {"groups"}
    top = {k: v for k, v in data.items() if k not in tables}
    values, problems = check_table(top, AGENT_FIELDS, (), base, source, "agent")
    hosts_data = data.get("hosts", {})
    hosts: dict[str, HostConfig] = {}
    if not isinstance(hosts_data, dict):
        problems.append(
            source.problem(("hosts",), f"found {describe(hosts_data)}, expected a table")
        )
        hosts_data = {}
    for name, host_data in hosts_data.items():
        host, host_problems = _host(name, host_data, base, source, kinds)
        problems += host_problems
        if host is not None:
            hosts[name] = host
    host_names = frozenset(hosts_data) | {LOCAL_HOST}
    hosts.setdefault(LOCAL_HOST, HostConfig(name=LOCAL_HOST))
    groups_data = data.get("groups", {})
    groups, more = _groups(groups_data, host_names, source)
    problems += more
    targets = host_names | frozenset(groups_data if isinstance(groups_data, dict) else ())
    context = Context(targets, base.base_dir)
    defaults, more = subtable(data, "defaults", RUN_FIELDS, context, source, "defaults")
    notify, more_notify = subtable(data, "notify", NOTIFY_FIELDS, base, source, "agent")
    problems += more + more_notify
    if problems:
        return None, sorted_problems(problems), targets
    config = AgentConfig(
        path=path,
        hosts=MappingProxyType(hosts),
        groups=MappingProxyType(groups),
        defaults=MappingProxyType(defaults),
        notify=NotifyConfig(**notify),
        **values,
    )
    return config, [], targets


def load_agent_config(path: Path, kinds: Kinds | None = None) -> AgentConfig:
    """Return the validated agent config of ``droprun.toml`` at ``path``.

    Relative local paths resolve against the file's folder; the host "local" is added unless
    the file defines it. ``kinds`` replaces the registry of host kinds (for tests and
    plug-ins). Raises InvalidFile listing every problem.
    """
    parsed = parse_bytes(read_file(path), str(path))
    config, problems, _ = _agent(parsed, path, kinds or builtin_kinds())
    if config is None:
        raise InvalidFile(problems)
    return config


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
    targets: frozenset[str] | None = None
    if config is not None:
        targets = config.targets
    found: dict[Path, list[Problem]] = {}
    for path in paths:
        if _kind_of(path) == "agent":
            try:
                parsed = parse_bytes(read_file(path), str(path))
                _, found[path], names = _agent(parsed, path, builtin_kinds())
            except InvalidFile as exc:
                found[path], names = exc.problems, None
            targets = names if targets is None else targets
    problems: list[Problem] = []
    for path in paths:
        kind = _kind_of(path)
        try:
            if kind == "agent":
                problems += found[path]
            elif kind == "project":
                data = read_file(path, MAX_REQUEST_BYTES)
                check_layer(parse_bytes(data, str(path)), str(path), targets, "project")
            elif kind == "request":
                parse_request(read_file(path, MAX_REQUEST_BYTES), str(path), targets)
            else:
                expected = "a *.request file, a project.toml or an agent file ending in .toml"
                problems.append(
                    Problem(str(path), None, None, f"not a droprun file: expected {expected}")
                )
        except InvalidFile as exc:
            problems += exc.problems
    return problems
