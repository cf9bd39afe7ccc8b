"""The agent's own configuration (``droprun.toml``): share, hosts, defaults, tuning.

Loading and validation live in :mod:`agent.settings`, driven by :mod:`agent.schema`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class HostConfig:
    """One ``[hosts.NAME]`` table, validated. Durations are in seconds."""

    name: str
    kind: Literal["local", "ssh"] = "local"
    address: str | None = None
    port: int = 22
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    slots: int = 1
    gpus: tuple[str, ...] = ()
    remote_root: str = "~/droprun"
    conda_sh: str | None = None
    wake_mac: str | None = None
    wake_broadcast: str = "255.255.255.255"
    wake_port: int = 9
    wake_timeout: int = 300
    shutdown_after: int | None = None
    cancel_shutdown_command: str = "sudo -n /sbin/shutdown -c"
    shutdown_command: str = "sudo -n /sbin/shutdown -P now"
    rate_per_gpu_hour: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """The agent's ``[notify]`` table, validated. ``stalled_after`` is in seconds."""

    urls: tuple[str, ...] = ()
    on: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled", "error", "stalled")
    stalled_after: int = 1800


@dataclass(frozen=True)
class AgentConfig:
    """The whole ``droprun.toml``, validated. ``defaults`` is a validated settings layer."""

    path: Path
    share: Path
    state_dir: Path
    hosts: Mapping[str, HostConfig]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    settle: float = 1.0
    rescan: float = 30.0
    watch: Literal["inotify", "poll"] = "inotify"
    log_every: float = 2.0
    kill_grace: float = 10.0
    notify: NotifyConfig = NotifyConfig()
