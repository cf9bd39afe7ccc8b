"""Stop, kill -9 and restart the agent (a real process) at every phase of a run.

The training script counts its own launches in a file outside the share, and waits for a
``release`` file, so the test decides when it ends.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from agent import runinfo

from shares import (
    AgentProcess,
    info,
    make_project,
    pid_alive,
    state_of,
    wait_for,
    wait_state,
    write_config,
    write_ssh_config,
)
from testbed import require_tool, run_checked

SCRIPT = """#!/bin/sh
echo launched >> "$COUNT"
echo "start"
while [ ! -e "$RELEASE" ]; do sleep 0.05; done
mkdir -p output
i=0
while [ $i -lt 300 ]; do i=$((i+1)); echo "line $i"; echo "small $i" > output/small-$i.txt; done
for n in 1 2 3; do head -c 20000000 /dev/zero | tr '\\0' "$n" > output/big-$n.bin; done
echo "done"
"""
BIG_BIN = 40_000_000


def setup(tmp_path: Path, *, big_bin: bool = False) -> tuple[Path, Path, Path]:
    """Make a share with one project; return (config, project, release file)."""
    config = write_config(tmp_path, extra="rescan = 3600")
    files = {"run.sh": SCRIPT}
    project = make_project(tmp_path / "share", "p", files)
    if big_bin:
        (project / "bin" / "weights.bin").write_bytes(os.urandom(BIG_BIN))
    release = tmp_path / "release"
    env = f'env = {{ COUNT = "{tmp_path / "count"}", RELEASE = "{release}" }}\n'
    (project / "run.request").write_text(env)
    return config, project, release


def start(tmp_path: Path, config: Path) -> AgentProcess:
    return AgentProcess(config, tmp_path / "agent.log")


def kill_at(proc: AgentProcess, project: Path, state: str) -> None:
    """kill -9 the agent the moment the run is in ``state``; check it was still there."""
    wait_state(project, 0, state)
    proc.kill9()
    assert state_of(project) == state, f"the run left {state} before the kill"


def assert_complete(project: Path, tmp_path: Path) -> None:
    """The run succeeded once, with its whole log and every output."""
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result
    assert result.exit_code == 0
    assert (tmp_path / "count").read_text() == "launched\n"
    log = (project / "results/run_0/log.log").read_text()
    assert log.count("start\n") == 1 and log.count("done\n") == 1
    assert [f"line {i}" for i in range(1, 301)] == [x for x in log.split("\n") if "line" in x]
    out = project / "results/run_0/output"
    assert len(list(out.glob("small-*.txt"))) == 300
    assert (out / "small-300.txt").read_text() == "small 300\n"
    for n in (1, 2, 3):
        data = (out / f"big-{n}.bin").read_bytes()
        assert len(data) == 20_000_000 and data.count(str(n).encode()) == len(data)


def test_killed_while_uploading_running_and_finishing_each_run_completes_once(tmp_path):
    config, project, release = setup(tmp_path, big_bin=True)
    proc = start(tmp_path, config)
    kill_at(proc, project, runinfo.UPLOADING)

    proc = start(tmp_path, config)
    kill_at(proc, project, runinfo.RUNNING)
    assert pid_alive(info(project).remote_pid or 0)

    proc = start(tmp_path, config)
    wait_for("the reattach", lambda: "resuming (running)" in proc.text())
    release.touch()
    kill_at(proc, project, runinfo.FINISHING)

    proc = start(tmp_path, config)
    wait_state(project, 0, runinfo.SUCCEEDED)
    proc.stop()
    assert_complete(project, tmp_path)
    assert info(project).bin_bytes and info(project).bin_bytes > BIG_BIN


def test_killed_between_launch_and_saving_running_the_script_runs_once(tmp_path):
    config, project, release = setup(tmp_path)
    proc = start(tmp_path, config)
    wait_state(project, 0, runinfo.RUNNING)
    proc.kill9()
    # As if the agent died right after the launch, before run.info said `running`.
    path = project / "results/run_0/run.info"
    before = runinfo.load(path)
    before.state = runinfo.UPLOADING
    before.history = before.history[:-1]
    before.remote_pid = before.start_epoch = None
    before.start_time = None
    runinfo.save(path, before)

    proc = start(tmp_path, config)
    wait_for("the relaunch attempt", lambda: "resuming (uploading)" in proc.text())
    wait_state(project, 0, runinfo.RUNNING)
    release.touch()
    wait_state(project, 0, runinfo.SUCCEEDED)
    proc.stop()
    assert_complete(project, tmp_path)


def test_sigterm_leaves_the_run_running_and_a_restart_reattaches(tmp_path):
    config, project, release = setup(tmp_path)
    proc = start(tmp_path, config)
    wait_state(project, 0, runinfo.RUNNING)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    result = info(project)
    assert result.state == runinfo.RUNNING
    assert result.remote_pid and pid_alive(result.remote_pid)
    assert "left running for the next start" in proc.text()

    proc = start(tmp_path, config)
    wait_for("the reattach", lambda: "resuming (running)" in proc.text())
    release.touch()
    wait_state(project, 0, runinfo.SUCCEEDED)
    proc.stop()
    assert_complete(project, tmp_path)


def children_named(pid: int, name: str) -> list[int]:
    """Return the pids of ``pid``'s children whose command is ``name``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm, rest = text.split(" (", 1)[1].rsplit(")", 1)
        if comm == name and rest.split()[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def test_sigterm_during_a_slow_upload_exits_promptly_and_the_upload_is_redone(tmp_path, netns_host):
    tc = require_tool("tc")
    config = write_ssh_config(tmp_path, netns_host.ssh, extra="rescan = 3600")
    project = make_project(tmp_path / "share", "p", {"run.sh": "#!/bin/sh\necho uploaded\n"})
    (project / "bin" / "data.bin").write_bytes(os.urandom(3_000_000))
    # 1 Mbit/s: the 3 MB upload takes about 25 s.
    slow = ["qdisc", "add", "dev", netns_host.veth_host, "root", "tbf", "rate", "1mbit"]
    run_checked([tc, *slow, "burst", "32kbit", "latency", "400ms"])
    try:
        proc = start(tmp_path, config)
        (project / "run.request").write_text("")
        wait_state(project, 0, runinfo.UPLOADING)
        wait_for("rsync to be uploading", lambda: children_named(proc.pid, "rsync"))
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert state_of(project) == runinfo.UPLOADING
        assert "stopped in the middle of a step" in proc.text()
    finally:
        run_checked([tc, "qdisc", "del", "dev", netns_host.veth_host, "root"])
    proc = start(tmp_path, config)
    wait_state(project, 0, runinfo.SUCCEEDED)
    proc.stop()
    assert "uploaded" in (project / "results/run_0/log.log").read_text()
