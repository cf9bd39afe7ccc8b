"""What an accepted request becomes: the effective settings of one run, or of one run per
combination of its ``[sweep]``, after the checks that only the merged settings allow.

Each layer (agent defaults, ``project.toml``, the request) is valid on its own by then;
what is checked here spans them: ``code_from`` / ``resume_from`` must name a usable run of
the project, and a sweep key must not be in the run's ``args`` or ``env`` already. Every
problem names the file and line that set the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.durations import format_duration
from agent.problems import InvalidFile, Problem
from agent.rerun import reference_problems
from agent.schema import AgentConfig, RunSettings
from agent.settings import MAX_REQUEST_BYTES, Effective, merge, read_file
from agent.sweep import Scalar, Sweep, clashes, run_layer
from agent.tomlsrc import scan_keys


@dataclass(frozen=True)
class Plan:
    """One run to claim: its effective settings and, in a sweep, its values."""

    effective: Effective
    sweep: dict[str, Scalar] | None = None


def _text_of(path: Path, follow: bool) -> str:
    """Return the text of a settings file, for line numbers only ("" if unreadable)."""
    try:
        return read_file(path, MAX_REQUEST_BYTES, follow=follow).decode("utf-8", "replace")
    except InvalidFile:
        return ""


def _locator(
    config: AgentConfig, project: Path, request_name: str, data: bytes, effective: Effective
) -> Callable[[str], tuple[str, int | None]]:
    """Return ``where(key)``: the file and line that set run setting ``key``."""

    def where(key: str) -> tuple[str, int | None]:
        source = effective.sources.get(key, "request")
        path: tuple[str, ...]
        if source == "agent":
            text, file, path = _text_of(config.path, True), str(config.path), ("defaults", key)
        elif source == "project":
            toml = project / "project.toml"
            text, file, path = _text_of(toml, False), str(toml), (key,)
        else:
            text, file, path = data.decode("utf-8", "replace"), request_name, (key,)
        return file, scan_keys(text).line_of(path)

    return where


def gpu_problems(
    config: AgentConfig,
    target: str,
    gpus: int | None,
    where: Callable[[str], tuple[str, int | None]],
) -> list[Problem]:
    """Return the problem of a ``gpus`` that no host the run may go to can ever give."""
    members = [config.hosts[m] for m in config.groups.get(target, (target,)) if m in config.hosts]
    if gpus is None or any(host.assigns_gpus for host in members):
        return []  # a cluster's scheduler tells for itself
    most = max((len(host.gpus) for host in members), default=0)
    if gpus <= most:
        return []
    file, line = where("gpus")
    if target in config.groups:
        what = f"group {target}'s hosts list at most {most}"
    else:
        what = f"host {target} lists {most} in its gpus"
    return [Problem(file, line, "gpus", f"found {gpus} GPUs, expected at most {most}: {what}")]


def signal_problems(
    settings: RunSettings, where: Callable[[str], tuple[str, int | None]]
) -> list[Problem]:
    """Return the problem of a ``signal_before_timeout`` that comes before the run starts."""
    before = settings.signal_before_timeout
    if before is None or before < settings.timeout:
        return []
    file, line = where("signal_before_timeout")
    limit = format_duration(settings.timeout)
    message = f"found {format_duration(before)}, expected less than the timeout ({limit})"
    return [Problem(file, line, "signal_before_timeout", message)]


def plan_runs(
    config: AgentConfig,
    project: Path,
    request_name: str,
    data: bytes,
    layer_project: Mapping[str, Any],
    layer_request: Mapping[str, Any],
) -> list[Plan]:
    """Return the runs that the request ``data`` (valid layers) makes, in order.

    Raises InvalidFile listing every problem of the merged settings.
    """
    effective = merge(config.defaults, layer_project, layer_request)
    where = _locator(config, project, request_name, data, effective)
    problems = reference_problems(project, effective, where)
    problems += gpu_problems(config, effective.settings.host, effective.settings.gpus, where)
    problems += signal_problems(effective.settings, where)
    sweep: Sweep | None = layer_request.get("sweep")
    if sweep is not None:
        lines = scan_keys(data.decode("utf-8", "replace"))
        problems += [
            Problem(request_name, lines.line_of(("sweep", key)), f"sweep.{key}", message)
            for key, message in clashes(sweep, effective.settings.args, effective.settings.env)
        ]
    if problems:
        raise InvalidFile(problems)
    if sweep is None:
        return [Plan(effective)]
    plans = []
    for values in sweep.combinations():
        layer = run_layer(layer_request, effective.settings.args, effective.settings.env, values)
        merged = merge(config.defaults, layer_project, layer)
        sources = MappingProxyType({**merged.sources, "args": "sweep", "env": "sweep"})
        plans.append(Plan(dataclasses.replace(merged, sources=sources), values))
    return plans
