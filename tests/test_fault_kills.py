"""The agent is killed (-9) at random moments while it works through a batch of runs.

Every run must end terminal exactly once, and every script must have been launched exactly
once: the scripts count their own launches in files outside the share.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent import runinfo

from shares import AgentProcess, drop, info, make_project, state_of, wait_for, write_config

# Counts its launch, writes a few checkpoints and log lines over about a second.
SCRIPT = """#!/bin/sh
echo launched >> "$COUNTS/$1"
mkdir -p output
i=0
while [ $i -lt 8 ]; do
    i=$((i+1)); echo "step $i of $1"; echo "$1 $i" > output/ckpt-$i.txt; sleep 0.12
done
"""
PROJECTS = ("alpha", "beta", "gamma")
RUNS_PER_PROJECT = 3
KILLS = 22


def test_runs_survive_the_agent_being_killed_at_random_moments(tmp_path: Path) -> None:
    config = write_config(tmp_path, slots=2, extra="rescan = 1")
    counts = tmp_path / "counts"
    counts.mkdir()
    share = tmp_path / "share"
    runs: list[tuple[Path, int, str]] = []
    for name in PROJECTS:
        project = make_project(share, name, {"run.sh": SCRIPT})
        for n in range(RUNS_PER_PROJECT):
            tag = f"{name}-{n}"
            drop(project, f'args = ["{tag}"]\n[env]\nCOUNTS = "{counts}"\n', f"{tag}.request")
            runs.append((project, n, tag))

    rng = random.Random(5)  # fixed: a failure can be replayed
    log = tmp_path / "agent.log"
    kills = 0
    seen: set[str | None] = set()  # the states runs were in at the kills
    while kills < KILLS:
        proc = AgentProcess(config, log)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.kill9()
        kills += 1
        seen.update(state_of(p, n) for p, n, _ in runs)
    proc = AgentProcess(config, log)
    try:
        for project, _, _ in runs:
            for n in range(RUNS_PER_PROJECT):
                wait_for(
                    f"{project.name}/run_{n} to end",
                    lambda p=project, n=n: (state_of(p, n) or "") in runinfo.TERMINAL,
                    deadline=120,
                )
    finally:
        proc.stop()

    tags_seen = set()
    for project in (share / name for name in PROJECTS):
        numbers = sorted(
            int(p.name.removeprefix("run_")) for p in (project / "results").glob("run_*")
        )
        assert numbers == list(range(RUNS_PER_PROJECT)), "run numbers must be gapless"
        for n in numbers:
            result = info(project, n)
            states = [h["state"] for h in result.history]
            assert result.state == runinfo.SUCCEEDED, (project.name, n, result.reason, states)
            assert sum(s in runinfo.TERMINAL for s in states) == 1, states
            tag = result.effective["args"][0]
            tags_seen.add(tag)
            assert (counts / tag).read_text() == "launched\n", f"{tag} launched more than once"
            out = project / "results" / f"run_{n}" / "output"
            assert sorted(p.name for p in out.iterdir()) == [f"ckpt-{i}.txt" for i in range(1, 9)]
            assert all((out / f"ckpt-{i}.txt").read_text() == f"{tag} {i}\n" for i in range(1, 9))
            log_text = (project / "results" / f"run_{n}" / "log.log").read_text()
            assert [x for x in log_text.splitlines() if x.startswith("step")] == [
                f"step {i} of {tag}" for i in range(1, 9)
            ]
    assert tags_seen == {tag for _, _, tag in runs}
    assert not list(share.glob("*/*.request"))  # every request was taken
    assert kills >= 20
    # The kills landed in the middle of the work, not only before or after it.
    assert {runinfo.QUEUED, runinfo.RUNNING} <= seen, seen
