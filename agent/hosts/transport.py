"""How commands reach a host: the small interface behind which local and ssh differ.

:class:`agent.hosts.shell.ShellHost` implements the whole host interface on top of a
Transport, so the local host and the ssh host share every line of run logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    """Exit code and output of one command run on a host."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class Stream(Protocol):
    """The stdin and stdout of a command that keeps running on a host (its stderr is
    dropped): what a helper session talks through."""

    def send(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin; raise HostError (transient) if it is gone."""
        ...

    def recv(self, timeout: float) -> bytes:
        """Return the next bytes of its stdout, waiting up to ``timeout`` s; b"" once it
        ended. Raises HostError (transient) if nothing came in time or the link failed."""
        ...

    def close(self) -> None:
        """End the command (closing its stdin, killing it if it does not end at once)."""
        ...


class Transport(Protocol):
    """Runs commands on a host and tells rsync how to reach it."""

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> CommandResult:
        """Run ``argv`` (a list of words, never a shell line) on the host.

        Returns the result whatever the exit code; raises HostError if the command could
        not be run at all or did not finish within ``timeout`` seconds.
        """
        ...

    def start(self, argv: Sequence[str]) -> Stream:
        """Start ``argv`` on the host and return its stdin and stdout; raise HostError if
        it cannot be started."""
        ...

    def rsync_target(self, path: str) -> str:
        """Return how rsync names ``path`` on this host (``path`` or ``user@host:path``)."""
        ...

    def rsync_shell(self) -> Sequence[str] | None:
        """Return the ssh argv rsync must use (``-e``), or None for a local path."""
        ...

    def home(self) -> str:
        """Return the home directory of the user that runs commands on the host."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
