"""Scenario 7: the status pages on a share of many runs: the agent's CPU for one state change.

The share is scenario 5's (copies of one real run, filed by the agent itself). The agent's
publisher is run in this process, as the agent runs it (same class, same calls), so its CPU
can be read from its own thread clock: after it has read the share, one run.info changes
(a run goes back to ``running``, then ends again) and the publisher is told, as a driver
tells it; what it costs to read that run again, make its page, its project's page and
``droprun.html`` again and write those that changed (and, for the end, the month's billing
file) is the figure.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.context import RunContext
from agent.publish import Publisher
from bench.agentproc import write_config
from bench.plan import Plan
from bench.report import Row
from bench.sharescale import add_projects, template_run

CHANGES = 10


def change_cost(publisher: Publisher, run_dir: Path, state: str) -> float:
    """Put run_dir's run.info in ``state``, tell the publisher; return its CPU seconds."""
    path = run_dir / "run.info"
    info = runinfo.load(path)
    info.state = state
    runinfo.save(path, info)
    start = time.thread_time()
    publisher.note(run_dir)
    publisher.write_pages()
    return time.thread_time() - start


def pages_scale(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 7 at the largest share of ``plan``."""
    files = template_run(tmp)
    root = tmp / "s7"
    config_path = write_config(root, slots=1)
    share = root / "share"
    projects = plan.project_steps[-1]
    add_projects(share, 0, projects, plan.runs_per_project, files)
    runs = projects * plan.runs_per_project
    config = load_agent_config(config_path)
    publisher = Publisher(RunContext(config=config, hosts={}, log=logging.getLogger("bench")))
    start = time.thread_time()
    publisher.load()
    publisher.write_pages()
    startup = time.thread_time() - start
    costs = []
    for i in range(CHANGES):
        run_dir = share / f"proj{i * projects // CHANGES:04d}" / "results" / "run_0"
        costs.append(change_cost(publisher, run_dir, runinfo.RUNNING))
        costs.append(change_cost(publisher, run_dir, runinfo.SUCCEEDED))
    page = (share / "droprun.html").stat().st_size
    label = f"7 pages ({runs} runs)"
    at_target = runs == 10000
    worst = max(costs)
    return [
        Row(label, "one state change: pages rewritten, CPU (max)", "s", worst, None,
            "< 0.5 s @10000 runs", worst < 0.5 if at_target else None,
            f"median {statistics.median(costs):.3f} s of {len(costs)} changes (to running and "
            "back to succeeded, with the billing file)"),
        Row(label, "publisher start-up (read every run, check every page)", "s", startup,
            None, "-", None, f"droprun.html {page / 1e6:.1f} MB"),
    ]  # fmt: skip


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Run scenario 7; return its rows."""
    return pages_scale(tmp, plan)
