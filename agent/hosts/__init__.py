"""Where runs execute. Every kind of host implements :class:`agent.hosts.base.Host`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import HostConfig
from agent.hosts.base import Host

if TYPE_CHECKING:
    from agent.sync import LocalRsync


def open_host(
    config: HostConfig,
    state_dir: Path,
    share_id: str = "",
    local_rsync: LocalRsync | None = None,
) -> Host:
    """Return the Host for ``config``; ``state_dir`` holds per-host state (ssh sockets),
    ``share_id`` names this share's part of the host's ``remote_root``.

    ``local_rsync`` is the agent's rsync, shared by all hosts (a new one if None).
    Raises ValueError for a kind of host this version does not know.
    """
    # Imported here: agent.sync and agent.launcher import agent.hosts.base, which runs
    # this package's __init__ first; a top-level import would be circular.
    from agent.hosts.shell import ShellHost

    if config.kind == "local":
        from agent.hosts.local import LocalTransport

        return ShellHost(config, LocalTransport(), share_id=share_id, local_rsync=local_rsync)
    if config.kind == "ssh":
        from agent.hosts.ssh import SshTransport

        transport = SshTransport(config, state_dir)
        return ShellHost(config, transport, share_id=share_id, local_rsync=local_rsync)
    raise ValueError(f"host {config.name}: unknown kind {config.kind!r}")
