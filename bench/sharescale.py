"""Scenario 5: the idle agent and ``droprun status`` on a share of many projects and runs.

The archived runs are copies of one real run that the agent itself filed (run.request,
run.info in state ``succeeded``, log, bin.tar.gz, output), renumbered per project.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from agent.status import CACHE_NAME
from bench.agentproc import Agent, make_project, write_config
from bench.plan import Plan
from bench.report import Row
from bench.tools import REPO, cpu_seconds, timed, vm_kib

TEMPLATE = "benchtemplate"
TRAIN = """#!/bin/sh
mkdir -p output
for epoch in 1 2 3; do
    echo "epoch $epoch loss 0.$((9 - epoch))"
    echo "weights after epoch $epoch" > output/ckpt_$epoch.pt
done
"""


def template_run(tmp: Path) -> dict[str, bytes]:
    """File one real run with ``droprun agent --once``; return its folder as {path: bytes}."""
    root = tmp / "s5-template"
    config = write_config(root, slots=1)
    project = make_project(root / "share", TEMPLATE, TRAIN)
    (project / "run.request").write_text('name = "archived"\nnotes = "made by the benchmark"\n')
    argv = [sys.executable, "-m", "agent", "agent", "--once", "--config", str(config)]
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True, timeout=120)
    run_dir = project / "results" / "run_0"
    files = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    if b'state = "succeeded"' not in files["run.info"]:
        raise RuntimeError(f"scenario 5: the template run did not succeed:\n{files['run.info']!r}")
    return files


def add_projects(share: Path, first: int, last: int, runs: int, files: dict[str, bytes]) -> None:
    """Make projects ``first``..``last - 1``, each with ``runs`` archived runs."""
    info = files["run.info"].decode()
    for p in range(first, last):
        name = f"proj{p:04d}"
        project = make_project(share, name, TRAIN)
        results = project / "results"
        results.mkdir()
        for n in range(runs):
            run_dir = results / f"run_{n}"
            for rel, data in files.items():
                path = run_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if rel == "run.info":
                    text = re.sub(r"(?m)^run = 0$", f"run = {n}", info.replace(TEMPLATE, name))
                    text = text.replace("/run_0", f"/run_{n}")
                    data = text.encode()
                path.write_bytes(data)
        (results / ".next_run").write_text(f"{runs}\n")


def idle_figures(agent: Agent, window: float) -> tuple[float, float, float]:
    """Wait for the agent's start-up work, then watch it idle for ``window`` s.

    Returns (start-up seconds, CPU in % of one core while idle, RSS in MB at the end).
    """
    startup = agent.wait_quiet(deadline=900)
    before, start = cpu_seconds(agent.pid), time.monotonic()
    time.sleep(window)
    agent.alive()
    cpu = (cpu_seconds(agent.pid) - before) / (time.monotonic() - start) * 100
    return startup, cpu, vm_kib(agent.pid, "VmRSS") * 1024 / 1e6


def status_seconds(config: Path, runs: int) -> tuple[float, float]:
    """Return the wall times of ``droprun status`` without its cache (the first call, which
    reads every run.info and writes the cache) and with it (the best of two); check that
    each lists every run."""
    (config.parent / "state" / CACHE_NAME).unlink(missing_ok=True)  # write_config's state_dir
    argv = [sys.executable, "-m", "agent", "status", "--config", str(config)]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(argv, cwd=REPO, check=True, capture_output=True).stdout
        times.append(time.perf_counter() - start)
        if len(out.splitlines()) != runs + 1:
            raise RuntimeError(f"droprun status listed {len(out.splitlines()) - 1} of {runs} runs")
    return times[0], min(times[1:])


def read_all_seconds(share: Path) -> float:
    """Return the best of two wall times of reading every run.info (``find -exec cat``)."""
    argv = ["sh", "-c", 'find "$1" -name run.info -exec cat {} + >/dev/null', "sh", str(share)]
    return min(timed(lambda: subprocess.run(argv, check=True)) for _ in range(2))


def share_scale(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 5 at each project count of ``plan`` (the share grows between steps)."""
    files = template_run(tmp)
    root = tmp / "s5"
    config = write_config(root, slots=1)
    share = root / "share"
    rows: list[Row] = []
    made = 0
    for projects in plan.project_steps:
        add_projects(share, made, projects, plan.runs_per_project, files)
        made = projects
        runs = projects * plan.runs_per_project
        with Agent(config, root / "agent.log") as agent:
            startup, cpu, rss = idle_figures(agent, plan.idle_window)
        (cold, status), read_all = status_seconds(config, runs), read_all_seconds(share)
        at_target = projects == 1000
        label = f"5 share ({projects} projects, {runs} runs)"
        rows += [
            Row(label, "idle agent CPU", "%", cpu, None, "< 1% of a core @1000 proj",
                cpu < 1.0 if at_target else None, f"over {plan.idle_window:g} s"),
            Row(label, "idle agent RSS", "MB", rss, None, "< 80 MB @1000 proj",
                rss < 80 if at_target else None),
            Row(label, "agent start-up work", "s", startup, None, "-", None,
                "from start until it idles (python start, resume scan of run.info files)"),
            Row(label, "droprun status", "s", status, read_all, "< 0.3 s @10000 runs",
                status < 0.3 if runs == 10000 else None,
                "best of 2 with its cache; baseline: reading every run.info (find -exec cat)"),
            Row(label, "droprun status, no cache yet", "s", cold, read_all, "-", None,
                "the first call: reads every run.info, writes the cache"),
        ]  # fmt: skip
    return rows


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Run scenario 5; return its rows."""
    return share_scale(tmp, plan)
