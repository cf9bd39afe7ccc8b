"""LocalTransport: commands run on the agent's own machine (the built-in ``local`` host)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from agent.hosts.base import HostError
from agent.hosts.transport import CommandResult


class LocalTransport:
    """:class:`agent.hosts.transport.Transport` for this machine: subprocess, plain paths."""

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> CommandResult:
        """Run ``argv`` here; return its result, raise HostError if it cannot run in time."""
        try:
            proc = subprocess.run(
                list(argv),
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{argv[0]} did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise HostError(f"cannot run {argv[0]}: {exc}") from exc
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def rsync_target(self, path: str) -> str:
        """Return ``path``: rsync reaches local paths directly."""
        return path

    def rsync_shell(self) -> Sequence[str] | None:
        """Return None: no remote shell for a local path."""
        return None

    def home(self) -> str:
        """Return the agent user's home directory."""
        return os.path.expanduser("~")

    def close(self) -> None:
        """Nothing to release."""
