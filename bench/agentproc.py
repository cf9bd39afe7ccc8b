"""The real agent as a subprocess (``python -m agent agent --config F``), and its share.

The agent runs with the defaults a user gets (settle 1 s, log_every 2 s); only the local
host's ``slots`` and folders are set. It is started and stopped by its pid.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.tools import REPO, cpu_seconds, wait_for

STATE_RE = re.compile(rb'^state = "(\w+)"', re.MULTILINE)
TERMINAL = frozenset({b"succeeded", b"failed", b"timed_out", b"cancelled", b"error"})
START_DEADLINE = 30.0


def write_config(root: Path, slots: int) -> Path:
    """Write ``root/droprun.toml`` for a share at ``root/share`` and a local host; return it."""
    (root / "share").mkdir(parents=True, exist_ok=True)
    path = root / "droprun.toml"
    path.write_text(
        f'share = "{root / "share"}"\n'
        f'state_dir = "{root / "state"}"\n\n'
        "[hosts.local]\n"
        'kind = "local"\n'
        f"slots = {slots}\n"
        f'remote_root = "{root / "server"}"\n'
    )
    return path


def make_project(share: Path, name: str, script: str) -> Path:
    """Make ``share/name/bin/run.sh`` (executable) with ``script``; return the project."""
    bin_dir = share / name / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "run.sh").write_text(script)
    (bin_dir / "run.sh").chmod(0o755)
    return share / name


def run_state(info: Path) -> bytes | None:
    """Return the ``state`` of a run.info without parsing all of it, or None if absent."""
    try:
        match = STATE_RE.search(info.read_bytes())
    except FileNotFoundError:
        return None
    return match.group(1) if match else None


def states(share: Path) -> list[bytes | None]:
    """Return the state of every run on ``share``."""
    return [run_state(p) for p in share.glob("*/results/run_*/run.info")]


class Agent:
    """``python -m agent agent --config CONFIG`` running in its own session until stopped."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.share = config.parent / "share"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> Agent:
        self.started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(self.config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        lock = self.share / ".droprun" / "agent.lock"
        wait_for(
            lambda: self.alive() and lock.exists() and lock.read_text().strip() == str(self.pid),
            START_DEADLINE,
            "the agent taking its share lock",
            poll=0.02,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The agent's pid."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the agent runs; raise RuntimeError with its log if it has died."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the agent exited with {self.proc.returncode}:\n{tail}")
        return True

    def wait_quiet(self, deadline: float, busy: float = 0.25, step: float = 0.5) -> float:
        """Wait until the agent uses less than ``busy`` of a core over ``step`` s.

        Returns the seconds from its start to the first quiet step (its start-up work, to
        within ``step``). Raises TimeoutError after ``deadline`` s.
        """
        while True:
            self.alive()
            before = cpu_seconds(self.pid)
            time.sleep(step)
            if cpu_seconds(self.pid) - before < busy * step:
                return time.monotonic() - step - self.started
            if time.monotonic() - self.started > deadline:
                raise TimeoutError(f"the agent stayed busy for {deadline:g} s")

    def stop(self) -> None:
        """TERM the agent by pid, KILL it after 60 s, and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def errors(self) -> list[str]:
        """Return the ERROR and traceback lines of the agent's log."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
