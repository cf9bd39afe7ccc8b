"""LocalTransport: commands run on the agent's own machine (the built-in ``local`` host)."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
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

    def start(self, argv: Sequence[str]) -> LocalStream:
        """Start ``argv`` here with pipes for stdin and stdout; raise HostError if it cannot."""
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # so that its children can be ended with it
            )
        except OSError as exc:
            raise HostError(f"cannot run {argv[0]}: {exc}") from exc
        return LocalStream(proc)

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


class LocalStream:
    """:class:`agent.hosts.transport.Stream` of a local process (stopped by its pid)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._stdin = proc.stdin
        self._out = proc.stdout.fileno()
        self._selector = selectors.DefaultSelector()  # one for every answer read, not one each
        self._selector.register(self._out, selectors.EVENT_READ)

    def send(self, data: bytes) -> None:
        """Write ``data`` to the process; raise HostError (transient) if it is gone."""
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise HostError(f"the helper session ended: {exc}", transient=True) from exc

    def recv(self, timeout: float) -> bytes:
        """Return what the process wrote next (b"" at its end), waiting up to ``timeout`` s."""
        if not self._selector.select(timeout):
            raise HostError(f"no answer within {timeout:g} s", transient=True)
        return os.read(self._out, 1 << 16)

    def close(self) -> None:
        """Close its stdin (it ends at EOF); if it has not ended a moment later (a verb
        still running), kill it and what it started in its session."""
        with contextlib.suppress(BrokenPipeError):  # gone already: nothing unsent matters
            self._stdin.close()
        try:
            self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._selector.close()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
