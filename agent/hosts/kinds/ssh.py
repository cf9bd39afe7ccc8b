"""Kind ``ssh``: a server reached over ssh (paramiko for commands, the system ssh for rsync)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.fields import setting
from agent.hosts.base import Host
from agent.hosts.kinds import HostEnv, HostKind
from agent.schema import HostConfig
from agent.valuetypes import ADDRESS, INTEGER, SSH_FILE, USER, between


@dataclass(frozen=True, kw_only=True)
class SshConfig(HostConfig):
    """An ``[hosts.NAME]`` table of kind ssh: where and as whom to log in."""

    address: str = setting(
        ADDRESS,
        None,
        "Host name or IP address of the server.",
        example="192.168.1.50",
        required=True,
    )
    port: int = setting(INTEGER, 22, "ssh port.", check=between(1, 65535, "a port number"))
    user: str = setting(USER, None, "Login name on the server.", example="train", required=True)
    key: Path | None = setting(
        SSH_FILE,
        None,
        "Private key file for ssh (unset: ssh's default).",
        example="~/.ssh/id_ed25519",
    )
    known_hosts: Path | None = setting(
        SSH_FILE,
        None,
        "known_hosts file with the server's key (unset: ssh's default).",
        example="~/.ssh/known_hosts",
    )


def open_ssh(config: SshConfig, env: HostEnv) -> Host:
    """Return a ShellHost over ssh; nothing connects until the first command."""
    from agent.hosts.shell import ShellHost
    from agent.hosts.ssh import SshTransport

    transport = SshTransport(config, env.state_dir)
    return ShellHost(config, transport, share_id=env.share_id, local_rsync=env.local_rsync)


KIND = HostKind(
    name="ssh",
    a_host="an ssh host",
    doc="a server reached over ssh",
    config=SshConfig,
    open=open_ssh,
)
