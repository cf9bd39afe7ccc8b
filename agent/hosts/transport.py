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
