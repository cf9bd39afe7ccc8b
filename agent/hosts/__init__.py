"""Where runs execute. Every kind of host implements :class:`agent.hosts.base.Host`."""

from __future__ import annotations

from pathlib import Path

from agent.config import HostConfig
from agent.hosts.base import Host


def open_host(config: HostConfig, state_dir: Path) -> Host:
    """Return the Host for ``config``; ``state_dir`` holds per-host state (ssh sockets).

    Raises ValueError for a kind of host this version does not know.
    """
    # Imported here: agent.sync and agent.launcher import agent.hosts.base, which runs
    # this package's __init__ first; a top-level import would be circular.
    from agent.hosts.shell import ShellHost

    if config.kind == "local":
        from agent.hosts.local import LocalTransport

        return ShellHost(config, LocalTransport())
    if config.kind == "ssh":
        from agent.hosts.ssh import SshTransport

        return ShellHost(config, SshTransport(config, state_dir))
    raise ValueError(f"host {config.name}: unknown kind {config.kind!r}")
