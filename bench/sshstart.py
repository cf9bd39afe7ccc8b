"""Scenario 4b: acceptance -> the script running on an ssh host, with a warm server cache.

The real agent runs as a subprocess (as in scenario 4) with one ``[hosts.gpu]`` of kind
``ssh`` that logs in to the test bed's sshd on 127.0.0.1. ``bin/`` is scenario 1's tree:
a first, unmeasured run fills the server's cache, then one 1 KiB file changes before each
measured request, so each start pays for a delta upload, not a full one.
"""

from __future__ import annotations

import random
import time
import tomllib
from pathlib import Path

from bench.agentproc import TERMINAL, Agent, run_state
from bench.plan import MIB, Plan
from bench.report import Row
from bench.tools import make_code_tree, median, p95, ssh_server, wait_for, write_random

MARK_SCRIPT = '#!/bin/sh\ndate +%s.%N > "$1.tmp" && mv "$1.tmp" "$1"\n'
HOST = "gpu"
FIRST_DEADLINE = 300.0  # the first run uploads all of bin/ and archives it


def write_ssh_config(root: Path, server: object) -> Path:
    """Write ``root/droprun.toml``: a share at ``root/share``, ``[hosts.gpu]`` on ``server``.

    Returns the config's path.
    """
    (root / "share").mkdir(parents=True, exist_ok=True)
    path = root / "droprun.toml"
    path.write_text(
        f'share = "{root / "share"}"\n'
        f'state_dir = "{root / "state"}"\n\n'
        f"[hosts.{HOST}]\n"
        'kind = "ssh"\n'
        f'address = "{server.address}"\n'  # type: ignore[attr-defined]
        f"port = {server.port}\n"  # type: ignore[attr-defined]
        f'user = "{server.user}"\n'  # type: ignore[attr-defined]
        f'key = "{server.key}"\n'  # type: ignore[attr-defined]
        f'known_hosts = "{server.known_hosts}"\n'  # type: ignore[attr-defined]
        f'remote_root = "{server.remote_root}"\n'  # type: ignore[attr-defined]
    )
    return path


def drop(project: Path, run: int, mark: Path) -> Path:
    """Write a request for ``host = gpu`` that marks ``mark``; return the run's run.info path."""
    with open(project / "run.request", "w") as out:  # written in place, as over SMB
        out.write(f'name = "ssh start {run}"\nhost = "{HOST}"\nargs = ["{mark}"]\n')
    return project / "results" / f"run_{run}" / "run.info"


def finished(agent: Agent, info: Path, deadline: float, what: str) -> dict[str, object]:
    """Wait until ``info`` is terminal; return it parsed.

    Raises RuntimeError if the run did not succeed, TimeoutError after ``deadline`` s.
    """
    wait_for(lambda: run_state(info) in TERMINAL and agent.alive(), deadline, what, poll=0.05)
    data = tomllib.loads(info.read_text())
    if data["state"] != "succeeded":
        raise RuntimeError(f"scenario 4b: {what}: {data['state']}: {data.get('reason', '')}")
    return data


def ssh_start(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 4b: acceptance -> running on an ssh host, and the bytes each start uploads."""
    root = tmp / "s4b"
    project = root / "share" / "sshstart"
    code = make_code_tree(project / "bin", plan.code_bytes, plan.code_files)
    (code / "run.sh").write_text(MARK_SCRIPT)
    marks = root / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # the script runs as the ssh test user
    rng = random.Random(7)
    to_run: list[float] = []
    uploaded: list[int] = []
    with ssh_server() as server:
        config = write_ssh_config(root, server)
        with Agent(config, root / "agent.log") as agent:
            agent.wait_quiet(60)
            finished(agent, drop(project, 0, marks / "0"), FIRST_DEADLINE, "the first run")
            for i in range(1, plan.ssh_requests + 1):
                write_random(code / "config" / "params.txt", 1024, rng)
                time.sleep(rng.uniform(0.0, 1.0))  # drops fall anywhere in the agent's cycle
                mark = marks / str(i)
                info = drop(project, i, mark)
                accepted = wait_for(info.exists, 30, f"request {i} accepted")
                wait_for(mark.exists, 60, f"run {i} started")
                to_run.append(float(mark.read_text()) - accepted)
                data = finished(agent, info, 120, f"run {i}")
                uploaded.append(int(data["bytes_uploaded"]))  # type: ignore[call-overload]
    share = max(uploaded) / plan.code_bytes * 100

    def met(ok: bool) -> bool | None:  # the targets are for the full-size bin
        return ok if plan.full else None

    label = (
        f"4b ssh start ({plan.ssh_requests} req, "
        f"{plan.code_bytes // MIB} MiB, {plan.code_files} files)"
    )
    return [
        Row(label, "accepted->running median", "s", median(to_run), None, "< 2 s",
            met(median(to_run) < 2.0), "cache warm from a first run; 1 KiB changed before each"),
        Row(label, "accepted->running p95", "s", p95(to_run), None, "-", None),
        Row(label, "bytes_uploaded / bin", "%", share, None, "< 1%", met(share < 1.0),
            f"largest of {len(uploaded)} runs: {max(uploaded)} B of {plan.code_bytes} B"),
    ]  # fmt: skip
