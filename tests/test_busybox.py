"""The built-in local host on a NAS's own userland: the whole agent with only BusyBox applets
(plus bash as sh, rsync and python3) on its PATH, as on QNAP's QTS and other NAS firmware."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import runinfo

from shares import (
    LINGER,
    TRAIN,
    AgentProcess,
    drop,
    info,
    make_project,
    run_once,
    run_once_cancelling,
    run_processes,
    wait_state,
    write_config,
)
from testbed import busybox_userland


@pytest.fixture
def busybox_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make BusyBox's userland this process's (and its children's) only PATH."""
    path = str(busybox_userland(tmp_path / "busybox"))
    monkeypatch.setenv("PATH", path)
    return path


@pytest.mark.parametrize(
    ("request_text", "state", "code"),
    [("", "succeeded", 0), ('env = { EXIT_CODE = "3" }\n', "failed", 3)],
)
def test_runs_end_with_log_outputs_and_exit_code(
    tmp_path: Path, busybox_path: str, request_text: str, state: str, code: int
) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, 'args = ["--lr", "0.1"]\n' + request_text)
    run_once(config)
    result = info(project)
    assert (result.state, result.exit_code) == (state, code), result.reason
    run_dir = project / "results" / "run_0"
    assert "args: --lr 0.1" in (run_dir / "log.log").read_text()
    assert sorted(p.name for p in (run_dir / "output").iterdir()) == [
        "ckpt-1.txt",
        "ckpt-2.txt",
        "ckpt-3.txt",
    ]
    assert (run_dir / "output" / "ckpt-3.txt").read_text() == "ckpt 3\n"


@pytest.mark.parametrize("outcome", ["timed_out", "cancelled"])
def test_time_out_and_cancel_leave_no_process(
    tmp_path: Path, busybox_path: str, outcome: str
) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": LINGER})
    drop(project, 'timeout = "1s"\n' if outcome == "timed_out" else "")
    run_dir = project / "results" / "run_0"

    if outcome == "cancelled":
        run_once_cancelling(config, run_dir, (run_dir / "log.log").exists)
    else:
        run_once(config)
    result = info(project)
    assert result.state == outcome, result.reason
    assert result.run_id and run_processes(result.run_id) == []


def test_agent_killed_9_then_reattached(tmp_path: Path, busybox_path: str) -> None:
    config = write_config(tmp_path, extra="rescan = 3600")
    script = (
        '#!/bin/sh\necho launched >> "$COUNT"\n'
        'while [ ! -e "$RELEASE" ]; do sleep 0.05; done\nmkdir -p output\necho done > output/x\n'
    )
    project = make_project(tmp_path / "share", "proj", {"run.sh": script})
    release = tmp_path / "release"
    drop(project, f'env = {{ COUNT = "{tmp_path / "count"}", RELEASE = "{release}" }}\n')
    agent = AgentProcess(config, tmp_path / "agent.log", env={**os.environ, "PATH": busybox_path})
    try:
        wait_state(project, 0, runinfo.RUNNING)
        agent.kill9()
    finally:
        agent.stop()
    release.touch()
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert (tmp_path / "count").read_text() == "launched\n"
    assert (project / "results" / "run_0" / "output" / "x").read_text() == "done\n"


def test_a_missing_tool_ends_the_run_error_naming_it(tmp_path: Path, busybox_path: str) -> None:
    (Path(busybox_path) / "setsid").unlink()
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, "")
    run_once(config)
    result = info(project)
    assert result.state == runinfo.ERROR
    assert result.reason and "setsid is not installed on this host" in result.reason
