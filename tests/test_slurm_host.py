"""The slurm host on its own, against the real test cluster: a submission is never made
twice, one squeue serves every run of a poll, and jobs Slurm no longer knows vanish."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed_slurm import SlurmLogin

from agent.hosts.base import LaunchSpec, RunRef
from agent.hosts.kinds import HostEnv, open_host
from agent.hosts.kinds.slurm import SlurmConfig
from agent.hosts.kinds.ssh import SshConfig
from agent.hosts.slurm import SlurmHost
from agent.runinfo import new_run_id

# Never starts while the test looks (the cluster keeps it pending, reason BeginTime).
LATER = ("--begin=now+1hour",)


def slurm_config(login: SlurmLogin, **overrides: object) -> SlurmConfig:
    """Return a slurm host config for the test cluster's login node."""
    ssh = login.ssh.host_config("cluster")
    common = {f.name: getattr(ssh, f.name) for f in dataclasses.fields(SshConfig)}
    return SlurmConfig(**(common | {"kind": "slurm"} | overrides))  # type: ignore[arg-type]


@pytest.fixture
def host(root: Path, slurm: SlurmLogin) -> Iterator[SlurmHost]:
    """A slurm host whose squeue answer lasts an hour: each call is counted exactly."""
    opened = open_host(
        slurm_config(slurm, sbatch_options=LATER),
        HostEnv(root / "state", root.name, poll_every=3600.0),
    )
    assert isinstance(opened, SlurmHost)
    yield opened
    opened.close()


def uploaded(host: SlurmHost, root: Path, run: int) -> RunRef:
    """Upload a tiny bin/ for run ``run`` of project ``p``; return its ref."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "run.sh").write_text("#!/bin/sh\necho hi\n")
    ref = RunRef("p", run, new_run_id())
    host.upload(ref, bin_dir, ())
    return ref


def test_a_submission_is_never_made_twice(host: SlurmHost, root: Path, slurm: SlurmLogin) -> None:
    ref = uploaded(host, root, 0)
    spec = LaunchSpec("run.sh", timeout=60)
    try:
        first = host.launch(ref, spec)
        assert first.start_epoch is None and first.job_id.isdigit()
        assert host.launch(ref, spec) == first  # the recorded job id
        # The answer of sbatch lost (the agent killed mid-call): squeue finds the job.
        job_file = Path(host.remote_dir(ref)) / ".droprun" / "job_id"
        job_file.unlink()
        assert host.launch(ref, spec) == first
        assert job_file.read_text() == f"{first.job_id}\n"
        assert [job[0] for job in slurm.cluster.jobs(ref.run_id)] == [first.job_id]
        status = host.status(ref)
        assert (status.state, status.reason) == ("pending", "BeginTime")
    finally:
        host.kill(ref, 1.0)
    assert [job[2] for job in slurm.cluster.jobs(ref.run_id)] == ["CANCELLED"]


def test_one_squeue_serves_every_run_of_a_poll(host: SlurmHost, root: Path) -> None:
    refs = [uploaded(host, root, n) for n in range(3)]
    try:
        for ref in refs:
            host.launch(ref, LaunchSpec("run.sh", timeout=60))
        for _ in range(5):
            assert [host.status(ref).state for ref in refs] == ["pending"] * 3
        assert host.squeue_calls == 1
    finally:
        for ref in refs:
            host.kill(ref, 1.0)


def test_a_job_slurm_does_not_know_has_vanished(host: SlurmHost, root: Path) -> None:
    ref = uploaded(host, root, 0)
    assert host.status(ref).state == "not_started"  # not submitted at all
    (Path(host.remote_dir(ref)) / ".droprun" / "launched").mkdir()  # submitted, then lost
    host._queue_at = None  # ask squeue again
    status = host.status(ref)
    assert (status.state, status.outcome) == ("vanished", "failed")
    assert status.reason is not None and status.reason.startswith("job vanished")


def test_an_unknown_slurm_state_keeps_the_last_state(host: SlurmHost, root: Path) -> None:
    ref = uploaded(host, root, 0)
    try:
        host.launch(ref, LaunchSpec("run.sh", timeout=60))
        host._queue_at = None
        before = host.status(ref)
        assert before.state == "pending"
        entry = host._queue[ref.run_id]
        host._queue[ref.run_id] = dataclasses.replace(entry, state="SOMETHING_NEW")
        host._queue_at = time.monotonic()
        assert host.status(ref) == before
    finally:
        host.kill(ref, 1.0)
