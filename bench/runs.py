"""Scenarios 4 and 6: how fast the real agent reacts to one request, and works off a burst.

Scenario 4b (the same start, on an ssh host) lives in :mod:`bench.sshstart`.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

from bench.agentproc import TERMINAL, Agent, make_project, run_state, states, write_config
from bench.plan import Plan
from bench.report import Row
from bench.sshstart import ssh_start
from bench.tools import median, p95, timed, vm_kib, wait_for

MARK_SCRIPT = '#!/bin/sh\ndate +%s.%N > "$1.tmp" && mv "$1.tmp" "$1"\n'
SETTLE = 1.0  # the agent's default settle time: a request must be still this long


def reaction(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 4: request close -> ``accepted``, and acceptance -> the script running.

    Requests are dropped one at a time into an idle agent (the previous run has ended),
    after a random pause so that drops fall anywhere in the agent's cycle.
    """
    root = tmp / "s4"
    config = write_config(root, slots=1)
    project = make_project(root / "share", "react", MARK_SCRIPT)
    marks = root / "marks"
    marks.mkdir()
    rng = random.Random(5)
    to_accept, to_run = [], []
    with Agent(config, root / "agent.log") as agent:
        agent.wait_quiet(60)
        for i in range(plan.requests):
            time.sleep(rng.uniform(0.0, 1.0))
            mark = marks / str(i)
            with open(project / "run.request", "w") as out:  # written in place, as over SMB
                out.write(f'name = "reaction {i}"\nargs = ["{mark}"]\n')
            closed = time.time()
            info = project / "results" / f"run_{i}" / "run.info"
            accepted = wait_for(info.exists, 30, f"request {i} accepted")
            wait_for(mark.exists, 30, f"run {i} started")
            to_accept.append(accepted - closed)
            to_run.append(float(mark.read_text()) - accepted)
            ended = lambda info=info: run_state(info) in TERMINAL and agent.alive()  # noqa: E731
            wait_for(ended, 60, f"run {i} ended")
    label = f"4 reaction ({plan.requests} requests)"
    settle_note = f"baseline: the settle time ({SETTLE:g} s), the floor that the design sets"
    return [
        Row(label, "close->accepted median", "s", median(to_accept), SETTLE, "< 1.5 s",
            median(to_accept) < 1.5, settle_note),
        Row(label, "close->accepted p95", "s", p95(to_accept), SETTLE, "-", None),
        Row(label, "accepted->running median", "s", median(to_run), None, "< 2 s",
            median(to_run) < 2.0),
        Row(label, "accepted->running p95", "s", p95(to_run), None, "-", None),
    ]  # fmt: skip


def burst(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 6: many requests at once on a local host with 4 slots; scripts exit at once.

    The baseline is the original scripts' way on this machine: copy ``bin/`` to a fresh
    folder and run the script, one run after another.
    """
    root = tmp / "s6"
    config = write_config(root, slots=4)
    share = root / "share"
    script = "#!/bin/sh\necho done\n"
    projects = [make_project(share, f"p{j:02d}", script) for j in range(plan.burst_projects)]
    with Agent(config, root / "agent.log") as agent:
        agent.wait_quiet(60)
        start = time.time()
        for i in range(plan.burst_requests):
            (projects[i % len(projects)] / f"r{i:03d}.request").write_text(f'name = "burst {i}"\n')

        def all_done() -> bool:
            found = states(share)
            return agent.alive() and len(found) == plan.burst_requests and set(found) <= TERMINAL

        ended = wait_for(all_done, 60 + 5.0 * plan.burst_requests, "the burst", poll=0.25)
        peak = vm_kib(agent.pid, "VmHWM") * 1024 / 1e6
        errors = agent.errors()
    outcomes = states(share)
    if outcomes.count(b"succeeded") != plan.burst_requests or errors:
        raise RuntimeError(f"scenario 6: not every run succeeded: {outcomes} {errors[:5]}")
    work = root / "baseline"
    work.mkdir()
    loop = (
        'i=0; while [ $i -lt "$1" ]; do'
        ' cp -r "$2" "$3/run_$i" && (cd "$3/run_$i" && sh run.sh >log 2>&1) || exit 1;'
        " i=$((i+1)); done"
    )
    argv = ["sh", "-c", loop, "sh", str(plan.burst_requests), str(projects[0] / "bin"), str(work)]
    base = timed(lambda: subprocess.run(argv, check=True))
    label = f"6 burst ({plan.burst_requests} req, {plan.burst_projects} projects, 4 slots)"
    target = "< 6 s" if plan.full else "-"  # issue 11: under 0.1 s of fixed cost per run
    return [
        Row(label, "time to all terminal", "s", ended - start, base, target,
            ended - start < 6.0 if plan.full else None,
            "baseline: cp -r bin + sh run.sh per run, one after another, no agent"),
        Row(label, "agent peak memory", "MB", peak, None, "-", None, "VmHWM of the agent"),
    ]  # fmt: skip


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Run scenarios 4, 4b (on an ssh host, see :mod:`bench.sshstart`) and 6; return their rows."""
    return reaction(tmp, plan) + ssh_start(tmp, plan) + burst(tmp, plan)
