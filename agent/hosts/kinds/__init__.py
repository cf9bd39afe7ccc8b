"""The registry of host kinds: each module of this package that defines ``KIND`` is one.

A kind declares its config (a :class:`agent.schema.HostConfig` subclass whose fields are
its keys), its extra rules and how to open a host of it. Validation, ``droprun init``'s
template and :func:`open_host` all read the registry, so a new kind is one new module.
Code that needs other kinds (a test, a plug-in) passes its own mapping as ``kinds``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from agent.fields import Field, schema_fields
from agent.hosts.base import Host
from agent.schema import HostConfig

if TYPE_CHECKING:
    from agent.hosts.sync import LocalRsync


@dataclass(frozen=True)
class HostEnv:
    """What opening a host needs from the agent: its state folder, the share's id, the
    agent's own rsync (shared by all hosts; a new one if None), and how often each run
    is polled (``log_every``; a cluster's queue is asked at most that often)."""

    state_dir: Path
    share_id: str = ""
    local_rsync: LocalRsync | None = None
    poll_every: float = 2.0


def _no_rules(config: Any) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class HostKind:
    """One kind of host. ``a_host`` names one in messages ("an ssh host"); ``rules``
    returns (key, message) problems of a whole config beyond each key's own check;
    ``example`` is the host name the ``droprun init`` template shows."""

    name: str
    a_host: str
    doc: str
    config: type[HostConfig]
    open: Callable[[Any, HostEnv], Host]
    rules: Callable[[Any], list[tuple[str, str]]] = _no_rules
    example: str = "gpu1"

    def fields(self) -> tuple[Field, ...]:
        """Return every key of this kind's hosts (the common ones first)."""
        return schema_fields(self.config)

    def own_fields(self) -> tuple[Field, ...]:
        """Return the keys only hosts of this kind have."""
        common = {spec.name for spec in schema_fields(HostConfig)}
        return tuple(spec for spec in self.fields() if spec.name not in common)


Kinds = Mapping[str, HostKind]


@functools.cache
def builtin_kinds() -> Kinds:
    """Return droprun's own kinds: every module of this package that defines ``KIND``."""
    found: dict[str, HostKind] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, HostKind):
            found[kind.name] = kind
    return MappingProxyType(found)


def open_host(config: HostConfig, env: HostEnv, kinds: Kinds | None = None) -> Host:
    """Return the Host for ``config``. Raises ValueError for a kind ``kinds`` lacks."""
    kind = (kinds or builtin_kinds()).get(config.kind)
    if kind is None:
        raise ValueError(f"host {config.name}: unknown kind {config.kind!r}")
    return kind.open(config, env)
