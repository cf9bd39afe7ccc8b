"""Commands over ssh: a reused paramiko connection for control, the system ssh for rsync.

Host keys come only from the host's configured ``known_hosts``; an unknown or changed key
raises :class:`HostKeyError` and is never retried or accepted. Every command has our own
deadline, because paramiko's keepalive never notices a peer that silently went away.
The system ssh command lines (for rsync) are built in :mod:`agent.hosts.sshargs`.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import paramiko

from agent.hosts.base import HostError, HostKeyError
from agent.hosts.kinds.ssh import SshConfig
from agent.hosts.sshargs import (
    CONNECT_TIMEOUT,
    make_control_dir,
    make_destination,
    make_remote_command,
    make_rsync_target,
    make_ssh_argv,
    with_ssh_defaults,
)
from agent.hosts.transport import CommandResult

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and check that it is ours and private.

    Raises HostError if it is a symlink, not a directory, or owned by someone else.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise HostError(f"{path} must be a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


class _UnknownHostKey(paramiko.SSHException):
    """The server's key is not in known_hosts (RejectPolicy's case, told apart by type)."""


class _RejectUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy that raises a distinct exception, so the cause is known exactly."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> NoReturn:
        """Raise _UnknownHostKey naming the host and the key it offered."""
        raise _UnknownHostKey(f"{hostname} offered {key.get_name()} {key.fingerprint}")


class SshTransport:
    """:class:`agent.hosts.transport.Transport` over ssh for one configured host.

    ``state_dir`` is the agent's state directory (the ssh control sockets live below it).
    Nothing connects until the first command. Safe to use from several threads.
    """

    def __init__(
        self, config: SshConfig, state_dir: Path, *, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        if not config.address:
            raise ValueError(f"host {config.name} has no address")
        self.config = with_ssh_defaults(config, Path("~").expanduser())
        self._state_dir = state_dir
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._home: str | None = None
        self._control_dir: Path | None = None

    @property
    def _label(self) -> str:
        return f"host {self.config.name} ({make_destination(self.config)}:{self.config.port})"

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> CommandResult:
        """Run ``argv`` on the host; return its exit code and output whatever they are.

        A command killed by a signal has exit code -1 (ssh reports no status for it).
        Raises HostKeyError, HostError (permanent: auth, config) or a transient HostError
        (network, timeout: the connection is then dropped and the next call reconnects).
        """
        try:
            command = make_remote_command(argv)
        except ValueError as e:
            raise HostError(f"{self._label}: cannot send this command: {e}") from e
        deadline = time.monotonic() + timeout
        client, channel = self._open_channel(deadline)
        try:
            try:
                channel.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as e:
                self._drop(client)
                raise HostError(
                    f"{self._label}: cannot start {argv[0]}: {e}", transient=True
                ) from e
            return self._collect(client, channel, stdin, deadline, timeout, argv)
        finally:
            channel.close()

    def start(self, argv: Sequence[str]) -> SshStream:
        """Start ``argv`` on the host in a channel of the shared connection; return its
        stdin and stdout. Raises HostKeyError or HostError like :meth:`run`."""
        try:
            command = make_remote_command(argv)
        except ValueError as e:
            raise HostError(f"{self._label}: cannot send this command: {e}") from e
        client, channel = self._open_channel(time.monotonic() + self._connect_timeout)
        try:
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            channel.close()
            self._drop(client)
            raise HostError(f"{self._label}: cannot start {argv[0]}: {e}", transient=True) from e
        return SshStream(channel, self._label)

    def rsync_target(self, path: str) -> str:
        """Return ``user@address:path`` for rsync (IPv6 addresses bracketed)."""
        return make_rsync_target(self.config, path)

    def rsync_shell(self) -> list[str]:
        """Return the system ssh argv for rsync's ``-e`` (creates the control socket dir)."""
        return make_ssh_argv(self.config, self._ensure_control_dir())

    def home(self) -> str:
        """Return the login user's home directory on the host (asked once, then cached)."""
        if self._home is None:
            result = self.run(["sh", "-c", 'printf "%s" "$HOME"'], timeout=30.0)
            if result.exit_code != 0 or not result.stdout.startswith(b"/"):
                raise HostError(
                    f"{self._label}: cannot read $HOME: {result.stderr.decode(errors='replace')}"
                )
            self._home = result.stdout.decode()
        return self._home

    def close(self) -> None:
        """Close the paramiko connection and ask the rsync control master to exit."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._control_dir is not None and any(self._control_dir.iterdir()):
            argv = [
                *make_ssh_argv(self.config, self._control_dir),
                "-O",
                "exit",
                make_destination(self.config),
            ]
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            if done.returncode != 0:  # no master running (expired or never started)
                log.debug("%s: ssh -O exit: %s", self._label, done.stderr.decode(errors="replace"))

    def _ensure_control_dir(self) -> Path:
        if self._control_dir is None:
            self._control_dir = ensure_private_dir(make_control_dir(self._state_dir, os.geteuid()))
        return self._control_dir

    def _open_channel(self, deadline: float) -> tuple[paramiko.SSHClient, paramiko.Channel]:
        """Return a connected client and a new session channel on it.

        A reused connection that fails to open a channel has died since its last use: it
        is dropped and one fresh connection is tried (nothing has run yet, so it is safe).
        """
        while True:
            client, fresh = self._connected(deadline)
            transport = client.get_transport()
            try:
                if transport is None:
                    raise paramiko.SSHException("connection closed")
                return client, transport.open_session(timeout=_remaining(deadline))
            except (paramiko.SSHException, EOFError, OSError) as e:
                self._drop(client)
                if fresh:
                    raise HostError(
                        f"{self._label}: cannot open a session: {e}", transient=True
                    ) from e
                log.info("%s: connection went away, reconnecting: %s", self._label, e)

    def _connected(self, deadline: float) -> tuple[paramiko.SSHClient, bool]:
        """Return the live client (and whether it is new), connecting if needed."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self._client, False
                self._client.close()
                self._client = None
            self._client = self._connect(min(self._connect_timeout, _remaining(deadline)))
            return self._client, True

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        """Open a new authenticated connection; raise HostKeyError or HostError."""
        config = self.config
        if timeout <= 0:
            raise HostError(f"{self._label}: no time left to connect", transient=True)
        pkey = self._load_key()
        client = paramiko.SSHClient()
        try:
            if config.known_hosts is not None:
                try:
                    client.load_host_keys(str(config.known_hosts))
                except OSError as e:
                    raise HostKeyError(f"{self._label}: cannot read known_hosts: {e}") from e
            client.set_missing_host_key_policy(_RejectUnknownHost())
            client.connect(
                hostname=config.address or "",
                port=config.port,
                username=config.user,
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except _UnknownHostKey as e:
            client.close()
            source = config.known_hosts or "(no known_hosts configured)"
            raise HostKeyError(
                f"{self._label}: UNKNOWN host key, not in {source}: {e}. "
                "Check the key out of band and add it to known_hosts."
            ) from e
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyError(
                f"{self._label}: host key CHANGED: known_hosts {config.known_hosts} has "
                f"{e.expected_key.get_name()} {e.expected_key.fingerprint}, the server offered "
                f"{e.key.get_name()} {e.key.fingerprint}. Someone may be intercepting the "
                "connection, or the server was reinstalled."
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise HostError(
                f"{self._label}: login as {config.user} with key {config.key} refused: {e}"
            ) from e
        except (paramiko.SSHException, EOFError, OSError) as e:
            client.close()
            raise HostError(f"{self._label}: cannot connect: {e}", transient=True) from e
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)  # keeps NAT state; our deadlines detect dead peers
        return client

    def _load_key(self) -> paramiko.PKey | None:
        """Load the configured private key; a missing or bad key is a permanent HostError."""
        if self.config.key is None:
            return None
        try:
            return paramiko.PKey.from_path(self.config.key)
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise HostError(f"{self._label}: cannot use key {self.config.key}: {e}") from e

    def _drop(self, client: paramiko.SSHClient) -> None:
        """Close ``client`` and forget it if it is still the current connection."""
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def _collect(
        self,
        client: paramiko.SSHClient,
        channel: paramiko.Channel,
        stdin: bytes | None,
        deadline: float,
        timeout: float,
        argv: Sequence[str],
    ) -> CommandResult:
        """Feed stdin, read stdout and stderr together until exit or the deadline."""
        writer_errors: list[Exception] = []
        writer = threading.Thread(
            target=_feed, args=(channel, stdin or b"", writer_errors), daemon=True
        )
        writer.start()  # a thread, so a command that talks back while reading cannot deadlock
        out, err = bytearray(), bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ)
            while True:
                while channel.recv_ready():
                    out += channel.recv(READ_SIZE)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(READ_SIZE)
                left = _remaining(deadline)
                if channel.eof_received or channel.closed:
                    if channel.recv_ready() or channel.recv_stderr_ready():
                        continue
                    if channel.status_event.wait(left):
                        break
                elif left > 0:
                    selector.select(left)
                    continue
                self._drop(client)
                writer.join(timeout=5)
                raise HostError(
                    f"{self._label}: {shlex.join(argv)[:200]} did not finish within {timeout:g} s",
                    transient=True,
                )
        writer.join(timeout=max(_remaining(deadline), 1.0))
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            self._drop(client)
            why = f" (sending stdin: {writer_errors[0]})" if writer_errors else ""
            raise HostError(f"{self._label}: connection lost during a command{why}", transient=True)
        # A writer error with the connection alive means the command exited without reading
        # all its stdin (like EPIPE locally): its exit status says what happened.
        return CommandResult(channel.recv_exit_status(), bytes(out), bytes(err))


class SshStream:
    """:class:`agent.hosts.transport.Stream` of a command in one ssh channel (its stderr,
    which paramiko buffers, is dropped as it comes)."""

    def __init__(self, channel: paramiko.Channel, label: str) -> None:
        self._channel = channel
        self._label = label

    def send(self, data: bytes) -> None:
        """Write ``data`` to the command; raise HostError (transient) if the channel failed."""
        try:
            self._channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostError(f"{self._label}: the helper session ended: {e}", transient=True) from e

    def recv(self, timeout: float) -> bytes:
        """Return the command's next output (b"" at its end), waiting up to ``timeout`` s."""
        channel = self._channel
        while channel.recv_stderr_ready():
            channel.recv_stderr(READ_SIZE)
        channel.settimeout(timeout)
        try:
            return channel.recv(READ_SIZE)
        except TimeoutError as e:
            raise HostError(f"{self._label}: no answer within {timeout:g} s", transient=True) from e
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostError(f"{self._label}: the helper session failed: {e}", transient=True) from e

    def close(self) -> None:
        """Close the channel: the server ends the command (its stdin and session go)."""
        self._channel.close()


def _feed(channel: paramiko.Channel, data: bytes, errors: list[Exception]) -> None:
    """Send ``data`` to the command's stdin, then EOF; record a failure in ``errors``."""
    try:
        if data:
            channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as e:
        errors.append(e)


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (never negative)."""
    return max(deadline - time.monotonic(), 0.0)
