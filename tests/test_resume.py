"""``resume_from``: a run starts with an earlier run's output already in its output_dir.

Real runs on the local host and on a real sshd; each script checks on its first lines
that its checkpoints are there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent import runinfo

from shares import drop, info, make_project, run_once, write_config, write_ssh_config
from testbed import SshServer

# One epoch per run, continuing from the checkpoints in output/; with HANG it then waits
# (to be timed out). A resumed run checks first that its checkpoints are already there.
RESUMABLE = """#!/bin/sh
if [ -n "$DROPRUN_RESUME_FROM" ]; then
    [ "$DROPRUN_RESUME_FROM" -ef ckpt ] || { echo "DROPRUN_RESUME_FROM is not output_dir"; exit 8; }
    [ -f ckpt/ckpt-1.txt ] || { echo "no checkpoint before the start"; exit 7; }
    stat -c %h ckpt/ckpt-1.txt > ckpt/links.txt
fi
mkdir -p ckpt
n=$(ls ckpt | grep -c '^ckpt-')
n=$((n + 1))
echo "epoch $n"
echo "weights $n" > ckpt/ckpt-$n.txt
[ -z "$HANG" ] || exec sleep 300
"""
PROJECT = 'output_dir = "ckpt"\n'


def timed_out_run(project: Path, config: Path) -> None:
    drop(project, 'timeout = "2s"\nenv = { HANG = "1" }\n')
    run_once(config)
    first = info(project, 0)
    assert first.state == runinfo.TIMED_OUT, first.reason
    assert (project / "results" / "run_0" / "output" / "ckpt-1.txt").exists()


def outputs(project: Path, run: int) -> dict[str, str]:
    out = project / "results" / f"run_{run}" / "output"
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


def test_a_timed_out_run_continues_from_a_two_line_request(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": RESUMABLE}, PROJECT)
    timed_out_run(project, config)
    drop(project, 'resume_from = "run_0"\ntimeout = "1h"\n')
    run_once(config)
    resumed = info(project, 1)
    log = (project / "results" / "run_1" / "log.log").read_text()
    assert resumed.state == runinfo.SUCCEEDED, log
    assert resumed.resume_from == "run_0"
    assert resumed.bytes_resumed and resumed.bytes_resumed > 0
    assert "epoch 2" in log
    assert outputs(project, 1) == {
        "ckpt-1.txt": "weights 1\n",
        "ckpt-2.txt": "weights 2\n",
        "links.txt": "1\n",  # uploaded from the share: a file of its own
    }
    assert outputs(project, 0) == {"ckpt-1.txt": "weights 1\n"}  # run 0 is left as it was


def test_output_still_on_the_host_is_linked_there_not_sent(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": RESUMABLE}, PROJECT)
    timed_out_run(project, config)
    # Run 0's files are still on the host (as when its clean-up could not finish).
    remote = info(project, 0).remote_dir
    assert remote is not None
    kept = Path(remote) / "ckpt"
    shutil.copytree(project / "results" / "run_0" / "output", kept)
    big = kept / "ckpt-1.txt"
    big.write_text("weights 1\n" * 100_000)  # 1 MB, as it is on the share too
    shutil.copy2(big, project / "results" / "run_0" / "output" / "ckpt-1.txt")
    drop(project, 'resume_from = "run_0"\n')
    run_once(config)
    resumed = info(project, 1)
    assert resumed.state == runinfo.SUCCEEDED, resumed.reason
    assert outputs(project, 1)["links.txt"] == "2\n"  # a hard link to run 0's file
    assert resumed.bytes_resumed is not None and resumed.bytes_resumed < 100_000


def test_resume_over_ssh_uploads_the_output_from_the_share(
    root: Path, sshd_server: SshServer
) -> None:
    config = write_ssh_config(root, sshd_server)
    project = make_project(root / "share", "proj", {"run.sh": RESUMABLE}, PROJECT)
    timed_out_run(project, config)
    (project / "project.toml").write_text(PROJECT + 'resume_from = "run_0"\n')
    drop(project, "")
    run_once(config)
    resumed = info(project, 1)
    assert resumed.state == runinfo.SUCCEEDED, (project / "results/run_1/log.log").read_text()
    assert resumed.resume_from == "run_0"
    assert resumed.effective["sources"]["resume_from"] == "project"
    assert outputs(project, 1)["ckpt-2.txt"] == "weights 2\n"


def test_resume_source_gone_before_the_start_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": RESUMABLE}, PROJECT)
    timed_out_run(project, config)
    drop(project, 'resume_from = "run_0"\n')
    from agent import share
    from agent.agentfile import load_agent_config

    accepted = share.accept(project / "run.request", load_agent_config(config))
    assert isinstance(accepted, share.Accepted)
    shutil.rmtree(project / "results" / "run_0" / "output")  # deleted while queued
    run_once(config)
    result = info(project, 1)
    assert result.state == runinfo.ERROR
    assert "resume_from run_0" in (result.reason or "") and "no mirrored output" in result.reason
    assert result.start_epoch is None
