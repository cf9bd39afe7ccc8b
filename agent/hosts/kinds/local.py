"""Kind ``local``: the agent's own machine (the built-in host ``local``), no extra keys."""

from __future__ import annotations

from agent.hosts.base import Host
from agent.hosts.kinds import HostEnv, HostKind
from agent.schema import HostConfig


def open_local(config: HostConfig, env: HostEnv) -> Host:
    """Return a ShellHost that runs commands here with subprocess."""
    from agent.hosts.local import LocalTransport
    from agent.hosts.shell import ShellHost

    return ShellHost(config, LocalTransport(), share_id=env.share_id, local_rsync=env.local_rsync)


KIND = HostKind(
    name="local",
    a_host="the local host",
    doc="this machine",
    config=HostConfig,
    open=open_local,
    example="local",
)
