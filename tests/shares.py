"""Builders for test shares: an agent config, projects with scripts, and one-shot agent runs."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.share import share_id

# Prints its args and three epochs, writes a checkpoint each, exits with $EXIT_CODE.
TRAIN = """#!/bin/sh
echo "args: $*"
mkdir -p output
i=0
while [ $i -lt 3 ]; do i=$((i+1)); echo "epoch $i"; echo "ckpt $i" > output/ckpt-$i.txt; done
exit ${EXIT_CODE:-0}
"""

# Project folder names that a shell would take for commands, options or patterns.
NASTY_PROJECT_NAMES = [
    "$(touch pwned)",
    "`touch pwned2`",
    "a b; touch pwned3",
    "-rf",
    "*",
    "it's",
    "new\nline",
    "ünïcødé 训练",
]
# Names that match other projects' folders if a server expands them ("alpha" exists).
WILDCARD_PROJECT_NAMES = ["*", "alph?", "[a]lpha", "alpha*"]

# Starts a grandchild, records both pids, and waits: for fail/time-out/cancel tests.
LINGER = """#!/bin/sh
mkdir -p output
sleep 300 &
echo $! > output/child.pid
echo $$ > output/main.pid
echo started
wait
"""


def on_host(remote_root: Path | str, share: Path) -> Path:
    """Return the share's part of a host's ``remote_root``, where its projects go."""
    return Path(remote_root) / share_id(share)


def write_config(
    root: Path,
    *,
    slots: int = 1,
    extra: str = "",
    host_extra: str = "",
    settle: float = 0.1,
    share: Path | None = None,
) -> Path:
    """Write a droprun.toml for a share at ``share`` (default ``root/share``) with a local
    host under ``root``."""
    share = share or root / "share"
    share.mkdir(parents=True, exist_ok=True)
    path = root / "droprun.toml"
    path.write_text(
        f'share = "{share}"\n'
        f'state_dir = "{root / "state"}"\n'
        f"settle = {settle}\nlog_every = 0.2\nkill_grace = 2\n"
        f"{extra}\n"
        "[hosts.local]\n"
        'kind = "local"\n'
        f"slots = {slots}\n"
        f'remote_root = "{root / "server"}"\n'
        f"{host_extra}\n"
    )
    return path


def make_project(
    share: Path, name: str, files: dict[str, str], project_toml: str | None = None
) -> Path:
    """Make ``share/name/bin`` with ``files`` (``*.sh`` made executable); return the project."""
    project = share / name
    for rel, text in files.items():
        path = project / "bin" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.endswith(".sh"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (project / "bin").mkdir(parents=True, exist_ok=True)
    if project_toml is not None:
        (project / "project.toml").write_text(project_toml)
    return project


def drop(project: Path, text: str, name: str = "run.request") -> Path:
    """Drop a request the way a client does: write a temp file, then rename it into place."""
    tmp = project / f".{name}.part"
    tmp.write_text(text)
    os.replace(tmp, project / name)
    return project / name


def run_once(config_path: Path) -> None:
    """Run ``droprun agent --once`` in this process."""
    from agent.service import make_context, serve

    config = load_agent_config(config_path)
    serve(make_context(config, logging.getLogger("droprun.test")), once=True)


def run_once_cancelling(config_path: Path, run_dir: Path, started: Callable[[], object]) -> None:
    """Run ``droprun agent --once`` here, dropping a ``cancel`` file into ``run_dir`` as a
    person would, as soon as ``started()`` is true."""

    def cancel() -> None:
        wait_for("the run to start", started)
        (run_dir / "cancel").write_text("")

    canceller = threading.Thread(target=cancel, daemon=True)
    canceller.start()
    run_once(config_path)
    canceller.join(timeout=AGENT_DEADLINE)


def info(project: Path, run: int = 0) -> runinfo.RunInfo:
    """Return the run.info of ``project``'s run ``run``."""
    return runinfo.load(project / "results" / f"run_{run}" / "run.info")


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


def run_processes(run_id: str) -> list[int]:
    """Return the pids of live processes that carry the run's tag (read as root)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"DROPRUN_RUN_ID={run_id}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [pid for pid in found if pid_alive(pid)]


def write_ssh_config(
    root: Path,
    server: Any,
    *,
    name: str = "gpu",
    slots: int = 1,
    extra: str = "",
    host_extra: str = "",
    port: int | None = None,
    known_hosts: Path | None = None,
    defaults: str = "",
) -> Path:
    """Write a droprun.toml whose requests go by default to ssh host ``name`` on ``server``.

    ``server`` is a ``testbed.SshServer``; ``port`` and ``known_hosts`` replace its own
    (for a server that starts later, or a wrong key); ``defaults`` adds lines to
    ``[defaults]``. The local host stays as well.
    """
    path = write_config(root, extra=extra)
    with path.open("a") as out:
        out.write(
            f'\n[defaults]\nhost = "{name}"\n{defaults}\n'
            f"[hosts.{name}]\n"
            'kind = "ssh"\n'
            f'address = "{server.address}"\n'
            f"port = {port or server.port}\n"
            f'user = "{server.user}"\n'
            f'key = "{server.key}"\n'
            f'known_hosts = "{known_hosts or server.known_hosts}"\n'
            f'remote_root = "{server.remote_root}"\n'
            f"slots = {slots}\n"
            f"{host_extra}\n"
        )
    return path


AGENT_DEADLINE = 60.0
REPO = Path(__file__).resolve().parent.parent


class AgentProcess:
    """``python -m agent agent --config F`` as a real process; its stderr goes to ``log``."""

    def __init__(
        self,
        config: Path,
        log: Path,
        wrapper: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "agent", "agent", "--config", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
            )

    @property
    def pid(self) -> int:
        """The agent's pid."""
        return self.proc.pid

    def text(self) -> str:
        """Everything the agent has logged so far (this and earlier runs into ``log``)."""
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the agent."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = AGENT_DEADLINE) -> int:
        """Wait for the agent to exit; fail (after killing it) if it does not in time."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the agent did not exit within {timeout} s:\n{self.text()}"
            ) from None

    def kill9(self) -> None:
        """``kill -9`` the agent and reap it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=AGENT_DEADLINE)

    def stop(self) -> None:
        """SIGTERM the agent if it still runs and wait for it (for teardown)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            self.wait()


def kill9_while(config: Path, log: Path, project: Path, state: str) -> None:
    """Start the agent, and ``kill -9`` it as soon as run 0 of ``project`` is in ``state``."""
    agent = AgentProcess(config, log)
    try:
        wait_state(project, 0, state)
        agent.kill9()
    finally:
        agent.stop()


def wait_for(what: str, check: Callable[[], Any], deadline: float = AGENT_DEADLINE) -> Any:
    """Poll ``check`` until it returns something true; return it, or fail naming ``what``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {deadline} s waiting for {what}")


def state_of(project: Path, run: int = 0) -> str | None:
    """Return the state in run ``run``'s run.info, or None while there is none (yet)."""
    try:
        return info(project, run).state
    except runinfo.RunInfoError:
        return None


def wait_state(project: Path, run: int, *states: str, deadline: float = AGENT_DEADLINE) -> str:
    """Wait until run ``run`` of ``project`` is in one of ``states``; return that state."""
    found = wait_for(
        f"{project.name}/run_{run} to be {' or '.join(states)}",
        lambda: state_of(project, run) in states and state_of(project, run),
        deadline,
    )
    return str(found)
