"""The system ssh command lines: pure builders of argv, destinations and remote commands.

rsync runs the system ssh client (not paramiko), so its options are built here, from the
same :class:`agent.hosts.kinds.ssh.SshConfig` that :class:`agent.hosts.ssh.SshTransport` connects
with: the same key, the same known_hosts, strict host key checking, and a control master
so that repeated rsyncs skip the key exchange.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent.hosts.kinds.ssh import SshConfig

CONNECT_TIMEOUT = 10.0
CONTROL_PERSIST = 60
# sun_path holds 107 bytes plus NUL. ssh binds "<ControlPath>.<16 random chars>" first, and
# %C expands to 40 hex digits, so the socket name adds "/cm-" + 40 + 17 to the directory.
MAX_SOCKET_PATH = 107
CONTROL_NAME = "cm-%C"
CONTROL_NAME_LEN = len("/cm-") + 40 + 17
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
_GLOB_TRIGGER = re.compile(r"[*?\[]")
_GLOB_SPECIAL = re.compile(r"[\\*?\[\]]")


def make_control_dir(state_dir: Path, uid: int) -> Path:
    """Return where the ssh control sockets live: ``state_dir/ssh`` if short enough.

    Otherwise a short per-user directory under /tmp named after ``state_dir``.
    """
    preferred = state_dir / "ssh"
    if len(os.fsencode(preferred)) + CONTROL_NAME_LEN <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    return Path(f"/tmp/droprun-{uid}-{digest}")


def _ssh_config_path(path: Path, tokens: str = "") -> str:
    """Return ``path`` + ``tokens`` as an ssh_config value: ``%`` escaped, quoted if needed.

    ``tokens`` is appended unescaped (e.g. ``/cm-%C``). Raises ValueError for a path that
    ssh_config cannot express (a double quote).
    """
    text = str(path).replace("%", "%%") + tokens
    if '"' in text:
        raise ValueError(f"ssh cannot use a path with a double quote: {path}")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def with_ssh_defaults(config: SshConfig, home: Path) -> SshConfig:
    """Return ``config`` with ssh's defaults filled in from the agent user's ``home``.

    ``known_hosts`` unset: ``home/.ssh/known_hosts``. ``key`` unset: the first of
    ``home/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa`` that exists (else still unset).
    paramiko and the system ssh then use exactly the same key and known_hosts.
    """
    ssh_dir = home / ".ssh"
    key = config.key
    if key is None:
        key = next((ssh_dir / n for n in DEFAULT_KEYS if (ssh_dir / n).is_file()), None)
    return replace(config, key=key, known_hosts=config.known_hosts or ssh_dir / "known_hosts")


def make_ssh_argv(config: SshConfig, control_dir: Path) -> list[str]:
    """Return the system ssh argv (no destination) that rsync uses for ``config``.

    Batch mode, only the configured key and known_hosts, strict host key checking, and a
    control master in ``control_dir`` so that repeated rsyncs skip the key exchange.
    Without ``known_hosts`` every connection fails host key checking (SshTransport
    fills in ssh's default file first, see :func:`with_ssh_defaults`).
    """
    known_hosts = _ssh_config_path(config.known_hosts) if config.known_hosts else "/dev/null"
    argv = ["ssh", "-p", str(config.port)]
    if config.key is not None:
        # Not "-i": ssh checks that file before expanding %%, so a key path with % is
        # dropped with only a warning. IdentityFile is read like the other options.
        argv += ["-o", f"IdentityFile={_ssh_config_path(config.key)}"]
    options = [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={known_hosts}",
        "GlobalKnownHostsFile=/dev/null",
        f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
        "ServerAliveInterval=5",
        "ServerAliveCountMax=3",
        "ControlMaster=auto",
        f"ControlPath={_ssh_config_path(control_dir, '/' + CONTROL_NAME)}",
        f"ControlPersist={CONTROL_PERSIST}",
    ]
    for option in options:
        argv += ["-o", option]
    return argv


def _address(config: SshConfig) -> str:
    """Return the host's address; raise ValueError if it has none."""
    if not config.address:
        raise ValueError(f"host {config.name} has no address")
    return config.address


def make_destination(config: SshConfig) -> str:
    """Return ``user@address`` (or ``address``) for the system ssh client.

    Raises ValueError if the host has no address.
    """
    address = _address(config)
    return f"{config.user}@{address}" if config.user else address


def make_rsync_target(config: SshConfig, path: str) -> str:
    """Return rsync's name for ``path`` on the host: ``user@address:path``, IPv6 bracketed.

    droprun's rsync runs with ``--protect-args``: the path reaches the server's rsync
    without a shell, but that rsync still expands wildcards in it, one path component at
    a time, and only in components holding ``*``, ``?`` or ``[`` (where a backslash
    escapes the next character; elsewhere a backslash is an ordinary character). A
    project folder named ``*`` would otherwise reach every other project's files. So in
    exactly those components a backslash goes before each of ``*?[]`` and backslash.
    Raises ValueError if the host has no address.
    """
    path = "/".join(_escape_wildcards(part) for part in path.split("/"))
    address = _address(config)
    with contextlib.suppress(ValueError):  # not an IP literal: a host name, used as is
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
    return f"{config.user}@{address}:{path}" if config.user else f"{address}:{path}"


def _escape_wildcards(part: str) -> str:
    """Return one path component as the remote rsync's wildcard expansion must see it."""
    if not _GLOB_TRIGGER.search(part):
        return part
    return _GLOB_SPECIAL.sub(r"\\\g<0>", part)


def make_remote_command(argv: Sequence[str]) -> str:
    """Return the shell line that runs ``argv`` word for word on the server.

    Raises ValueError for an empty argv or a word with a NUL byte (no shell can pass it).
    """
    if not argv:
        raise ValueError("empty command")
    if any("\0" in word for word in argv):
        raise ValueError("a command word contains a NUL byte")
    return shlex.join(argv)
