"""Slurm's side as pure functions: the sbatch line, squeue's lines, the meaning of each job
state; and the slurm kind's settings (validation, templates, groups)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.agentfile import load_agent_config
from agent.hosts.base import LaunchSpec, ProcStatus, RunRef
from agent.hosts.kinds.slurm import SlurmConfig
from agent.hosts.slurmcmd import (
    ENDED_STATES,
    PENDING_STATES,
    RUNNING_STATES,
    batch_script,
    ended_status,
    exit_code_of,
    gpu_count,
    job_name,
    make_queue_argv,
    make_sbatch_argv,
    parse_files,
    parse_job_details,
    parse_queue,
    time_limit,
)
from agent.plan import plan_runs
from agent.problems import InvalidFile
from agent.runner import outcome_of
from agent.scheduler import gpus_needed
from agent.settings import parse_request
from agent.templates import agent_template

REF = RunRef("mnist", 3, "0123abcd")


def test_the_sbatch_line_carries_every_setting_as_its_own_word() -> None:
    spec = LaunchSpec(
        "run.sh", timeout=3601, gpus=2, cpus=8, mem="32G", signal_before=120, run_id="x"
    )
    argv = make_sbatch_argv(
        REF,
        spec,
        "/shared/dr/s1/mnist/run_3",
        partition="gpu",
        account="lab",
        options=("--qos=normal",),
    )
    assert argv == [
        "sbatch",
        "--parsable",
        "--job-name=droprun-mnist-run_3",
        "--comment=0123abcd",
        "--output=/shared/dr/s1/mnist/run_3/.droprun/log",
        "--open-mode=append",
        "--chdir=/shared/dr/s1/mnist/run_3",
        "--no-requeue",
        "--time=61",
        "--partition=gpu",
        "--account=lab",
        "--gres=gpu:2",
        "--cpus-per-task=8",
        "--mem=32G",
        "--signal=B:USR1@120",
        "--qos=normal",
        "/shared/dr/s1/mnist/run_3/.droprun/job.sh",
    ]


def test_the_sbatch_line_leaves_out_what_is_unset_and_escapes_output_patterns() -> None:
    argv = make_sbatch_argv(REF, LaunchSpec("run.sh", timeout=60, gpus=0), "/d/100%/run_3")
    assert "--output=/d/100%%/run_3/.droprun/log" in argv
    assert "--chdir=/d/100%/run_3" in argv
    assert not [a for a in argv if a.startswith(("--gres", "--partition", "--mem", "--signal"))]


@pytest.mark.parametrize(("seconds", "minutes"), [(1, 1), (60, 1), (61, 2), (86400, 1440)])
def test_time_limits_round_up_to_whole_minutes(seconds: int, minutes: int) -> None:
    assert time_limit(seconds) == minutes


def test_job_names_keep_only_plain_characters() -> None:
    assert job_name(RunRef("a b|c\nd", 0, "i")) == "droprun-a_b_c_d-run_0"
    assert job_name(RunRef("ünï", 12, "i")) == "droprun-_n_-run_12"


def test_the_batch_script_records_the_job_and_becomes_the_launcher(tmp_path: Path) -> None:
    (tmp_path / ".droprun").mkdir()
    (tmp_path / ".droprun" / "launch.sh").write_text('echo "launcher $DROPRUN_RUN_ID $$"\n')
    (tmp_path / ".droprun" / "job.sh").write_text(batch_script("run'id"))
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "1,3"}
    done = subprocess.run(
        ["sh", ".droprun/job.sh"], cwd=tmp_path, env=env, capture_output=True, check=True
    )
    assert done.stdout.decode().startswith("launcher run'id ")
    assert (tmp_path / ".droprun" / "job_id").read_text() == "42\n"
    assert (tmp_path / ".droprun" / "job_gpus").read_text() == "1,3\n"


def test_squeue_is_asked_for_all_of_the_users_jobs_with_epochs() -> None:
    argv = make_queue_argv("trainer")
    assert argv[:2] == ["env", "SLURM_TIME_FORMAT=%s"]
    assert "--user=trainer" in argv and "--states=all" in argv
    assert "--jobs=7" in make_queue_argv("trainer", "7")


def test_squeue_lines_are_read_by_comment() -> None:
    out = (
        b"7|droprun-p-run_0|RUNNING|1700000000|1700003600|node1|gpu|gres:gpu:2|abc|None\n"
        b"8|droprun-p-run_1|PENDING|N/A|N/A||gpu|N/A|def|Priority\n"
        b"9|somebody's|odd|job|COMPLETED|0|0|n|p|x|y|ghi|z\n"
        b"10|theirs|RUNNING|1|2|n|p|N/A|abc|None\n"
        b"11|droprun-p-run_2|RUNNING|1|2|n|p|N/A\n"
    )
    jobs = parse_queue(out)
    assert set(jobs) == {"abc", "def"}
    running, pending = jobs["abc"], jobs["def"]
    assert (running.job_id, running.state, running.start, running.node) == (
        "7",
        "RUNNING",
        1700000000,
        "node1",
    )
    assert gpu_count(running.gres) == 2
    assert (pending.start, pending.node, pending.reason, pending.gres) == (
        None,
        None,
        "Priority",
        None,
    )


@pytest.mark.parametrize(
    ("gres", "count"),
    [(None, 0), ("gres:gpu:1", 1), ("gres/gpu:a100:2", 2), ("gpu:4,gres:shard:3", 4)],
)
def test_gpu_counts_of_squeue(gres: str | None, count: int) -> None:
    assert gpu_count(gres) == count


def entry(state: str) -> object:
    line = f"5|droprun-p-run_0|{state}|100|200|n1|debug|N/A|rid|None\n".encode()
    return parse_queue(line)["rid"]


EXITED = ProcStatus("exited", exit_code=0, end_epoch=150, start_epoch=101)
NOTHING = ProcStatus("vanished")


@pytest.mark.parametrize(
    ("state", "files", "slurm_code", "outcome", "reason"),
    [
        ("COMPLETED", EXITED, None, "succeeded", None),
        ("FAILED", ProcStatus("exited", exit_code=3), None, "failed", "exited with code 3"),
        ("FAILED", NOTHING, 1, "failed", "before the script recorded an exit"),
        ("CANCELLED", EXITED, None, "cancelled", "scancel"),
        ("NODE_FAIL", NOTHING, None, "failed", "NODE_FAIL"),
        ("BOOT_FAIL", NOTHING, None, "failed", "BOOT_FAIL"),
        ("PREEMPTED", EXITED, None, "failed", "PREEMPTED"),
        ("OUT_OF_MEMORY", ProcStatus("exited", exit_code=137), None, "failed", "OUT_OF_MEMORY"),
    ],
)
def test_each_ended_slurm_state_has_its_outcome(
    state: str, files: ProcStatus, slurm_code: int | None, outcome: str, reason: str | None
) -> None:
    status = ended_status(entry(state), files, slurm_code)  # type: ignore[arg-type]
    assert outcome_of(status)[0] == outcome
    if reason is None:
        assert outcome_of(status)[1] is None
    else:
        assert reason in (outcome_of(status)[1] or "")


def test_timeout_is_timed_out_and_times_come_from_the_records_or_slurm() -> None:
    status = ended_status(entry("TIMEOUT"), ProcStatus("exited", exit_code=143), None)  # type: ignore[arg-type]
    assert status.timed_out and status.exit_code == 143
    status = ended_status(entry("COMPLETED"), EXITED, None)  # type: ignore[arg-type]
    assert (status.start_epoch, status.end_epoch) == (101, 150)
    status = ended_status(entry("FAILED"), NOTHING, 2)  # type: ignore[arg-type]
    assert (status.start_epoch, status.end_epoch, status.exit_code) == (100, 200, 2)


def test_every_state_slurm_documents_is_placed_once() -> None:
    groups = [PENDING_STATES, RUNNING_STATES, ENDED_STATES]
    assert sum(len(g) for g in groups) == len(set().union(*groups))


def test_scontrol_exit_codes() -> None:
    details = parse_job_details("JobId=5 JobState=FAILED ExitCode=2:0 Reason=None")
    assert exit_code_of(details) == 2
    assert exit_code_of(parse_job_details("ExitCode=0:9")) == 137
    assert exit_code_of({}) is None


def test_the_files_verb_output() -> None:
    status, gpus = parse_files(b"exited - 0 0 20 10\n=0,1\n")
    assert (status.state, status.exit_code, gpus) == ("exited", 0, ("0", "1"))
    assert parse_files(b"vanished - - 0 - 10\n-\n")[1] is None
    assert parse_files(b"exited - 0 0 20 10\n=\n")[1] == ()


# -- the kind's settings --------------------------------------------------------------------


def agent_file(tmp_path: Path, host: str, defaults: str = "") -> Path:
    (tmp_path / "share").mkdir(exist_ok=True)
    path = tmp_path / "droprun.toml"
    path.write_text(
        f'share = "{tmp_path / "share"}"\n[defaults]\n{defaults}\n'
        f'[hosts.cluster]\nkind = "slurm"\naddress = "login"\nuser = "t"\n{host}'
    )
    return path


def test_a_slurm_host_is_read_with_its_own_keys(tmp_path: Path) -> None:
    config = load_agent_config(
        agent_file(
            tmp_path,
            'partition = "gpu,gpu-long"\naccount = "lab"\nmax_jobs = 8\n'
            'sbatch_options = ["--qos=normal", "--constraint=a100", "--exclude=n[01-04]"]\n',
        )
    )
    host = config.hosts["cluster"]
    assert isinstance(host, SlurmConfig)
    assert (host.partition, host.account, host.max_jobs) == ("gpu,gpu-long", "lab", 8)
    assert host.sbatch_options == ("--qos=normal", "--constraint=a100", "--exclude=n[01-04]")
    assert host.assigns_gpus and gpus_needed(host, 4) == 0


@pytest.mark.parametrize(
    "options",
    [
        '["--qos=normal && reboot"]',
        '["--qos=`id`"]',
        '["--mail-user=$USER"]',
        '["-q normal"]',
        '["--qos=a b"]',
        "[\"--comment='x'\"]",
        '["--output=/tmp/elsewhere"]',
        '["--wrap=reboot"]',
    ],
)
def test_sbatch_options_that_could_inject_or_break_a_run_are_refused(
    tmp_path: Path, options: str
) -> None:
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(agent_file(tmp_path, f"sbatch_options = {options}\n"))
    (problem,) = bad.value.problems
    assert (problem.key, problem.line) == ("hosts.cluster.sbatch_options", 8)


def test_a_request_may_ask_a_cluster_for_more_gpus_than_any_host_lists(tmp_path: Path) -> None:
    config = load_agent_config(agent_file(tmp_path, "", 'host = "cluster"'))
    project = tmp_path / "share" / "p"
    (project / "bin").mkdir(parents=True)
    (project / "bin" / "run.sh").write_text("")
    data = b'gpus = 8\ncpus = 16\nmem = "64G"\nsignal_before_timeout = "2m"\n'
    layer = parse_request(data, "run.request", config.targets)
    (plan,) = plan_runs(config, project, "run.request", data, {}, layer)
    settings = plan.effective.settings
    assert (settings.gpus, settings.cpus, settings.mem) == (8, 16, "64G")
    assert settings.signal_before_timeout == 120


def test_a_signal_before_timeout_not_below_the_timeout_is_refused(tmp_path: Path) -> None:
    config = load_agent_config(agent_file(tmp_path, "", 'host = "cluster"'))
    project = tmp_path / "share" / "p"
    (project / "bin").mkdir(parents=True)
    data = b'timeout = "1h"\nsignal_before_timeout = "1h"\n'
    layer = parse_request(data, "run.request", config.targets)
    with pytest.raises(InvalidFile) as bad:
        plan_runs(config, project, "run.request", data, {}, layer)
    (problem,) = bad.value.problems
    assert (problem.key, problem.line) == ("signal_before_timeout", 2)
    assert "expected less than the timeout (1h)" in problem.message


@pytest.mark.parametrize("text", ['mem = "32 G"', 'mem = "-1G"', 'mem = "32GB"', "cpus = 0"])
def test_bad_cpus_and_mem_are_refused(text: str) -> None:
    with pytest.raises(InvalidFile) as bad:
        parse_request(text.encode(), "run.request", None)
    assert bad.value.problems[0].line == 1


def test_the_slurm_example_of_the_template_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = agent_template(tmp_path)
    head = text.split("# [hosts.gpu1]\n")[0]
    example = text.split("# [hosts.cluster]\n")[1]
    keys = [line[2:] for line in example.splitlines() if line.startswith("# ") and " = " in line]
    path = tmp_path / "droprun.toml"
    path.write_text(head + "[hosts.cluster]\n" + "\n".join(keys) + "\n")
    host = load_agent_config(path).hosts["cluster"]
    assert isinstance(host, SlurmConfig) and host.partition == "gpu"
