"""Limits that hold on the host itself: the time limit without the agent, and no process of a
run left behind, also those that left its process group (setsid, a double-forked daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import runinfo

from shares import (
    drop,
    info,
    kill9_while,
    make_project,
    pid_alive,
    run_once,
    run_once_cancelling,
    run_processes,
    wait_for,
    write_config,
    write_ssh_config,
)

# Leaves two processes outside its process group, then exits, waits for a time-out or a cancel.
DAEMONS = """#!/bin/sh
mkdir -p output
setsid sleep 300 >/dev/null 2>&1 </dev/null &
echo $! > output/setsid.pid
( setsid sh -c 'echo $$ > output/daemon.pid; exec sleep 301' >/dev/null 2>&1 </dev/null & )
while [ ! -s output/daemon.pid ]; do sleep 0.05; done
echo started
[ "$MODE" = exit ] && exit 0
while :; do sleep 0.2; done
"""
REQUESTS = {
    "succeeded": 'env = { MODE = "exit" }\n',
    "timed_out": 'timeout = "2s"\n',
    "cancelled": "",
}


def _config(kind: str, root: Path, request: pytest.FixtureRequest) -> Path:
    if kind == "local":
        return write_config(root)
    return write_ssh_config(root, request.getfixturevalue("sshd_server"))


def _log(run_dir: Path) -> str:
    path = run_dir / "log.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("outcome", sorted(REQUESTS))
@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_no_process_of_a_run_survives_it(
    root: Path, request: pytest.FixtureRequest, kind: str, outcome: str
) -> None:
    config = _config(kind, root, request)
    project = make_project(root / "share", "proj", {"run.sh": DAEMONS})
    drop(project, REQUESTS[outcome])
    run_dir = project / "results" / "run_0"

    if outcome == "cancelled":
        run_once_cancelling(config, run_dir, lambda: "started" in _log(run_dir))
    else:
        run_once(config)

    result = info(project)
    assert result.state == outcome, result.reason
    pids = [int((run_dir / "output" / f"{name}.pid").read_text()) for name in ("setsid", "daemon")]
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert result.run_id and run_processes(result.run_id) == []


def test_the_time_limit_holds_while_the_agent_is_dead(root: Path, sshd_server) -> None:
    config = write_ssh_config(root, sshd_server, extra="rescan = 3600")
    project = make_project(root / "share", "proj", {"run.sh": DAEMONS})
    drop(project, 'timeout = "5s"\n')
    kill9_while(config, root / "agent.log", project, runinfo.RUNNING)
    run_id = info(project).run_id
    assert run_id
    wait_for("the run's processes to be started", lambda: run_processes(run_id))
    # The launcher on the server ends it at 5 s, then KILLs what is left after kill_grace (2 s).
    wait_for("no process of the run to be left", lambda: not run_processes(run_id), 15.0)

    run_once(config)
    result = info(project)
    assert result.state == runinfo.TIMED_OUT, result.reason
    assert result.reason == "hit the time limit of 5s"
    assert result.start_epoch is not None and result.end_epoch is not None
    # The real end, recorded on the server, not when the agent came back.
    assert 5 <= result.end_epoch - result.start_epoch <= 5 + 2 + 3
    assert result.duration_s == result.end_epoch - result.start_epoch


# Saves a "checkpoint" when warned, then keeps going until the time limit ends it.
WARNED = """#!/bin/sh
mkdir -p output
trap 'echo "warned at $(date +%s)"; echo saved > output/checkpoint.txt' USR1
echo started
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_signal_before_timeout_lets_the_script_save_a_checkpoint(
    root: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    project = make_project(root / "share", "p", {"run.sh": WARNED})
    drop(project, 'timeout = "3s"\nsignal_before_timeout = "2s"\n')
    run_once(_config(kind, root, request))
    result = info(project)
    assert result.state == runinfo.TIMED_OUT, result.reason
    run_dir = project / "results" / "run_0"
    assert (run_dir / "output" / "checkpoint.txt").read_text() == "saved\n"
    warned = int(_log(run_dir).split("warned at ")[1].split()[0])
    assert result.start_epoch is not None and result.end_epoch is not None
    assert result.start_epoch <= warned <= result.end_epoch
