"""Whole runs on a slurm host: the real agent, a real single-node Slurm cluster (munged,
slurmctld, slurmd with two fake GPUs) and the test sshd as its login node.

One cluster serves every test of the session (see ``testbed_slurm``). The node has 2 CPUs:
a run with ``cpus = 2`` holds it, and the next run waits in ``pending``.
"""

from __future__ import annotations

from pathlib import Path

from testbed_slurm import SlurmLogin

from agent import runinfo

from shares import (
    AgentProcess,
    drop,
    info,
    make_project,
    run_once,
    wait_for,
    wait_state,
    write_config,
)

DEADLINE = 120.0
# Slurm counts limits in minutes and looks at them about every 30 s.
TIMEOUT_DEADLINE = 240.0

SHOW_GPUS = """#!/bin/sh
echo "gpus=$CUDA_VISIBLE_DEVICES job=$SLURM_JOB_ID"
echo "args: $*"
mkdir -p output
for i in 1 2 3; do echo "epoch $i"; echo "ckpt $i" > output/ckpt-$i.txt; done
exit ${EXIT_CODE:-0}
"""

# Holds the node until told to stop (or killed); says when the warning signal arrives.
HOLD = """#!/bin/bash
trap 'echo "got USR1"' USR1
echo started
while [ ! -e "$RELEASE" ]; do sleep 0.2; done
echo released
"""


def write_slurm_config(
    root: Path, login: SlurmLogin, *, host_extra: str = "", defaults: str = ""
) -> Path:
    """Write a droprun.toml whose runs go by default to the slurm host ``cluster``."""
    server = login.ssh
    path = write_config(root)
    with path.open("a") as out:
        out.write(
            f'\n[defaults]\nhost = "cluster"\n{defaults}\n'
            "[hosts.cluster]\n"
            'kind = "slurm"\n'
            f'address = "{server.address}"\n'
            f"port = {server.port}\n"
            f'user = "{server.user}"\n'
            f'key = "{server.key}"\n'
            f'known_hosts = "{server.known_hosts}"\n'
            f'remote_root = "{server.remote_root}"\n'
            "max_jobs = 4\n"
            f"{host_extra}\n"
        )
    return path


def states(project: Path, run: int = 0) -> list[str]:
    """Return the states of a run's history, in order."""
    return [h["state"] for h in info(project, run).history]


def jobs_of(login: SlurmLogin, result: runinfo.RunInfo) -> list[tuple[str, str, str]]:
    """Return every job of the run that the controller knows; check each one's name."""
    jobs = login.cluster.jobs(result.run_id or "")
    assert all(name == f"droprun-{result.project}-run_{result.run}" for _, name, _ in jobs)
    return jobs


def test_a_run_succeeds_with_one_of_two_gpus(root: Path, slurm: SlurmLogin) -> None:
    config = write_slurm_config(root, slurm)
    project = make_project(root / "share", "proj", {"run.sh": SHOW_GPUS})
    drop(project, 'name = "first"\nargs = ["--lr", "0.1"]\ngpus = 1\n')
    run_once(config)

    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert states(project) == [
        "accepted",
        "queued",
        "uploading",
        "pending",
        "running",
        "finishing",
        "succeeded",
    ]
    log = (project / "results" / "run_0" / "log.log").read_text()
    assert f"gpus=0 job={result.job_id}\n" in log  # exactly one GPU, the one Slurm gave
    assert "args: --lr 0.1" in log and "epoch 3" in log
    assert sorted(p.name for p in (project / "results" / "run_0" / "output").iterdir()) == [
        "ckpt-1.txt",
        "ckpt-2.txt",
        "ckpt-3.txt",
    ]
    assert result.job_id and result.job_id.isdigit()
    assert (result.partition, result.node) == ("debug", "localhost")
    assert (result.gpus, result.gpu_ids) == (1, ["0"])
    assert result.queued_s is not None and result.queued_s >= 0
    assert result.exit_code == 0
    assert [job[2] for job in jobs_of(slurm, result)] == ["COMPLETED"]


def test_a_failing_script_fails_with_its_exit_code(root: Path, slurm: SlurmLogin) -> None:
    config = write_slurm_config(root, slurm)
    project = make_project(root / "share", "proj", {"run.sh": SHOW_GPUS})
    drop(project, 'env = { EXIT_CODE = "3" }\n')
    run_once(config)

    result = info(project)
    assert result.state == runinfo.FAILED
    assert result.exit_code == 3
    assert result.reason == "the script exited with code 3"
    assert [job[2] for job in jobs_of(slurm, result)] == ["FAILED"]


def test_an_unknown_partition_is_an_error_with_sbatchs_words(root: Path, slurm: SlurmLogin) -> None:
    config = write_slurm_config(root, slurm, host_extra='partition = "nosuchpart"\n')
    project = make_project(root / "share", "proj", {"run.sh": SHOW_GPUS})
    drop(project, "")
    run_once(config)

    result = info(project)
    assert result.state == runinfo.ERROR
    assert "sbatch refused the job" in (result.reason or "")
    assert "invalid partition" in (result.reason or "").lower(), result.reason
    assert jobs_of(slurm, result) == []


def test_a_queued_run_waits_pending_and_its_limit_starts_when_it_starts(
    root: Path, slurm: SlurmLogin
) -> None:
    """run_0 holds both CPUs past its 1 minute limit: Slurm ends it TIMEOUT (after the
    warning signal). run_1 waits pending meanwhile, longer than its own 1 minute limit,
    and then runs to success: its clock started when it did."""
    config = write_slurm_config(root, slurm)
    release = root / "release-never"
    project = make_project(root / "share", "proj", {"run.sh": HOLD, "quick.sh": SHOW_GPUS})
    drop(
        project,
        f'cpus = 2\ntimeout = "1m"\nsignal_before_timeout = "30s"\n'
        f'env = {{ RELEASE = "{release}" }}\n',
        "a.request",
    )
    run_once_in_background = AgentProcess(config, root / "agent.log")
    try:
        wait_state(project, 0, runinfo.RUNNING, deadline=DEADLINE)
        drop(project, 'run_script = "quick.sh"\ntimeout = "1m"\n', "b.request")
        wait_state(project, 1, runinfo.PENDING, deadline=DEADLINE)
        wait_for(
            "the pending reason",
            lambda: (
                "Resources" in (info(project, 1).reason or "")
                or "Priority" in (info(project, 1).reason or "")
            ),
            DEADLINE,
        )
        wait_state(project, 0, runinfo.TIMED_OUT, deadline=TIMEOUT_DEADLINE)
        wait_state(project, 1, runinfo.SUCCEEDED, runinfo.FAILED, deadline=DEADLINE)
    finally:
        run_once_in_background.stop()

    first, second = info(project, 0), info(project, 1)
    assert first.state == runinfo.TIMED_OUT
    assert first.reason == "hit the time limit of 1m"
    log0 = (project / "results" / "run_0" / "log.log").read_text()
    assert "got USR1" in log0 and "released" not in log0
    assert second.state == runinfo.SUCCEEDED, second.reason
    assert "pending" in states(project, 1)
    assert second.queued_s is not None and second.queued_s > 0
    assert second.start_epoch is not None and first.end_epoch is not None
    assert [job[2] for job in jobs_of(slurm, first)] == ["TIMEOUT"]


def hold_and_queue(root: Path, login: SlurmLogin) -> tuple[Path, Path, AgentProcess]:
    """Start an agent with run_0 holding the whole node and run_1 pending behind it;
    return the project, run_0's release file (on the node) and the agent."""
    config = write_slurm_config(root, login)
    release = login.ssh.base / f"release-{root.name}"
    project = make_project(root / "share", "proj", {"run.sh": HOLD, "quick.sh": SHOW_GPUS})
    drop(project, f'cpus = 2\nenv = {{ RELEASE = "{release}" }}\n', "a.request")
    agent = AgentProcess(config, root / "agent.log")
    wait_state(project, 0, runinfo.RUNNING, deadline=DEADLINE)
    drop(project, 'run_script = "quick.sh"\n', "b.request")
    wait_state(project, 1, runinfo.PENDING, deadline=DEADLINE)
    return project, release, agent


def test_cancel_while_pending_and_while_running(root: Path, slurm: SlurmLogin) -> None:
    project, _, agent = hold_and_queue(root, slurm)
    try:
        (project / "results" / "run_1" / "cancel").touch()
        wait_state(project, 1, runinfo.CANCELLED, deadline=DEADLINE)
        assert info(project, 0).state == runinfo.RUNNING
        (project / "results" / "run_0" / "cancel.txt").touch()
        wait_state(project, 0, runinfo.CANCELLED, deadline=DEADLINE)
    finally:
        agent.stop()
    running, pending = info(project, 0), info(project, 1)
    assert "running" not in states(project, 1)
    assert pending.start_epoch is None
    assert running.reason == "cancelled (a cancel file was dropped)"
    assert [job[2] for job in jobs_of(slurm, running)] == ["CANCELLED"]
    assert [job[2] for job in jobs_of(slurm, pending)] == ["CANCELLED"]
    assert "started" in (project / "results" / "run_0" / "log.log").read_text()


def test_agent_killed_while_pending_and_running_reattaches_to_the_same_jobs(
    root: Path, slurm: SlurmLogin
) -> None:
    project, release, agent = hold_and_queue(root, slurm)
    try:
        agent.kill9()
        again = AgentProcess(root / "droprun.toml", root / "agent.log")
        try:
            release.touch()
            wait_state(project, 0, runinfo.SUCCEEDED, runinfo.FAILED, deadline=DEADLINE)
            wait_state(project, 1, runinfo.SUCCEEDED, runinfo.FAILED, deadline=DEADLINE)
        finally:
            again.stop()
    finally:
        agent.stop()
        release.unlink(missing_ok=True)
    for run in (0, 1):
        result = info(project, run)
        assert result.state == runinfo.SUCCEEDED, result.reason
        assert [job[2] for job in jobs_of(slurm, result)] == ["COMPLETED"]  # one job each
        assert states(project, run).count("uploading") == 1
    assert "released" in (project / "results" / "run_0" / "log.log").read_text()
