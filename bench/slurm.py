"""Scenario 9: a slurm host. The real agent (a subprocess, default settings: log_every 2 s)
and the test bed's single-node Slurm cluster with its login sshd on 127.0.0.1.

9a: acceptance -> the job submitted (its ``job_id`` in run.info), with the server's cache
and the ssh connection warm from a first, unmeasured run.
9b: many runs in flight at once (2 running on the node's 2 CPUs, the rest pending): how
often the agent asks ``squeue``. A wrapper first in the login sessions' PATH logs each
call, so the count is what the controller saw, not what the agent says it did.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.agentproc import TERMINAL, Agent, run_state, states
from bench.plan import Plan
from bench.report import Row
from bench.tools import median, p95, testbed, wait_for

HOST = "cluster"
POLL = 2.0  # the agent's default log_every: one squeue per poll at most is the target
JOB_ID_RE = re.compile(rb'^job_id = "(\d+)"', re.MULTILINE)
COUNTER = """#!/bin/sh
date +%s.%N >>{log}
exec /usr/bin/squeue "$@"
"""
QUICK_SCRIPT = "#!/bin/sh\necho done\n"
HOLD_SCRIPT = "#!/bin/sh\nsleep 600\n"


def write_slurm_config(root: Path, server: object, max_jobs: int) -> Path:
    """Write ``root/droprun.toml``: a share at ``root/share`` and ``[hosts.cluster]``."""
    (root / "share").mkdir(parents=True, exist_ok=True)
    path = root / "droprun.toml"
    path.write_text(
        f'share = "{root / "share"}"\n'
        f'state_dir = "{root / "state"}"\n\n'
        f'[defaults]\nhost = "{HOST}"\n\n'
        f"[hosts.{HOST}]\n"
        'kind = "slurm"\n'
        f'address = "{server.address}"\n'  # type: ignore[attr-defined]
        f"port = {server.port}\n"  # type: ignore[attr-defined]
        f'user = "{server.user}"\n'  # type: ignore[attr-defined]
        f'key = "{server.key}"\n'  # type: ignore[attr-defined]
        f'known_hosts = "{server.known_hosts}"\n'  # type: ignore[attr-defined]
        f'remote_root = "{server.remote_root}"\n'  # type: ignore[attr-defined]
        f"max_jobs = {max_jobs}\n"
    )
    return path


def make_project(share: Path, name: str, scripts: dict[str, str]) -> Path:
    """Make ``share/name/bin`` with executable ``scripts``; return the project."""
    bin_dir = share / name / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for file, text in scripts.items():
        (bin_dir / file).write_text(text)
        (bin_dir / file).chmod(0o755)
    return share / name


def job_id(info: Path) -> bool:
    """True once the run.info at ``info`` records its job id."""
    try:
        return JOB_ID_RE.search(info.read_bytes()) is not None
    except FileNotFoundError:
        return False


def calls_between(log: Path, start: float, end: float) -> int:
    """Return how many squeue calls the wrapper logged between ``start`` and ``end``."""
    stamps = [float(line) for line in log.read_text().split()]
    return sum(1 for stamp in stamps if start <= stamp <= end)


def submit_speed(agent: Agent, project: Path, plan: Plan) -> list[float]:
    """9a: drop requests one at a time; return the seconds from acceptance to job id."""
    first = project / "results" / "run_0" / "run.info"
    (project / "run.request").write_text('run_script = "quick.sh"\n')
    wait_for(lambda: run_state(first) in TERMINAL and agent.alive(), 120, "the first run")
    seconds = []
    for i in range(1, plan.slurm_requests + 1):
        info = project / "results" / f"run_{i}" / "run.info"
        (project / "run.request").write_text('run_script = "quick.sh"\n')
        accepted = wait_for(info.exists, 30, f"request {i} accepted")
        submitted = wait_for(lambda info=info: job_id(info), 60, f"run {i} submitted")
        seconds.append(submitted - accepted)
        wait_for(lambda info=info: run_state(info) in TERMINAL, 120, f"run {i} ended")
    return seconds


def in_flight(agent: Agent, project: Path, plan: Plan, calls: Path) -> tuple[int, float]:
    """9b: put ``slurm_in_flight`` runs in flight; return squeue calls in the window and
    the window's length. Every run is cancelled afterwards."""
    share = project.parent
    for i in range(plan.slurm_in_flight):
        (project / f"hold{i:02d}.request").write_text('run_script = "hold.sh"\n')

    def all_in_flight() -> bool:
        found = states(share)
        flying = [s for s in found if s in (b"pending", b"running")]
        return agent.alive() and len(flying) == plan.slurm_in_flight

    start = wait_for(all_in_flight, 120, "every run in flight", poll=0.05)
    time.sleep(plan.slurm_window)
    end = time.time()
    if not all_in_flight():
        raise RuntimeError("scenario 9: a run left the queue during the window")
    count = calls_between(calls, start, end)
    for run_dir in project.glob("results/run_*"):
        if run_state(run_dir / "run.info") not in TERMINAL:
            (run_dir / "cancel").touch()
    wait_for(lambda: set(states(share)) <= TERMINAL, 300, "every run cancelled", poll=0.2)
    return count, end - start


def slurm_runs(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 9: 9a and 9b on one cluster and one agent."""
    bed = testbed()
    import testbed_slurm  # beside testbed, on the path that testbed() set

    root = tmp / "s9"
    wrappers = root / "bin"
    wrappers.mkdir(parents=True)
    counts = root / "counts"
    counts.mkdir(mode=0o777)
    counts.chmod(0o777)  # the wrapper runs as the login user
    calls = counts / "squeue.calls"
    calls.touch(mode=0o666)
    calls.chmod(0o666)
    (wrappers / "squeue").write_text(COUNTER.format(log=calls))
    (wrappers / "squeue").chmod(0o755)
    project = root / "share" / "slurmbench"
    with testbed_slurm.slurm_login(bed.ensure_test_user(), path_first=wrappers) as login:
        config = write_slurm_config(root, login.ssh, plan.slurm_in_flight)
        make_project(
            root / "share", project.name, {"quick.sh": QUICK_SCRIPT, "hold.sh": HOLD_SCRIPT}
        )
        with Agent(config, root / "agent.log") as agent:
            agent.wait_quiet(60)
            submit = submit_speed(agent, project, plan)
            count, window = in_flight(agent, project, plan, calls)
            errors = agent.errors()
    if errors:
        raise RuntimeError(f"scenario 9: the agent logged errors: {errors[:5]}")
    polls = window / POLL
    label = f"9 slurm host ({plan.slurm_requests} submits, {plan.slurm_in_flight} in flight)"
    return [
        Row(label, "accepted->submitted median", "s", median(submit), None, "< 1 s",
            median(submit) < 1.0, "cache and ssh connection warm from a first run"),
        Row(label, "accepted->submitted p95", "s", p95(submit), None, "-", None),
        Row(label, "squeue calls per poll interval", "x", count / polls,
            float(plan.slurm_in_flight), "<= 1", count <= polls + 1,
            f"{count} calls in {window:.0f} s ({POLL:g} s polls); baseline: one per run"),
    ]  # fmt: skip


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Run scenario 9; return its rows."""
    return slurm_runs(tmp, plan)
