"""Faults between the agent and a real GPU server: the link cut for 20 s while uploading and
while training, the server "rebooting" mid-run. The server is an sshd in a network
namespace (``netns_host``) or on loopback (``sshd_server``); the agent is a real process.

(The server being down when a request arrives is tested in test_ssh_hosts.py: the run
waits in ``waking`` up to wake_timeout and ends in ``error`` naming the host, or proceeds
when the server comes up in time.)
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from testbed_netns import NetnsHost

from agent import runinfo

from shares import (
    AgentProcess,
    drop,
    info,
    make_project,
    wait_for,
    wait_state,
    write_ssh_config,
)
from testbed import SshServer, descendants, process_name, require_tool, run_checked

CUT_SECONDS = 20
FINAL_BYTES = 3_000_000
# Counts its launches; writes a checkpoint and a log line per epoch until released; then
# a big final file. Paths come from env and live in the server user's own folder.
TRAIN = """#!/bin/sh
echo launched >> "$COUNT"
mkdir -p output
i=0
while [ $i -lt 6 ] || [ ! -e "$RELEASE" ]; do
    i=$((i+1)); echo "epoch $i"; echo "ckpt $i" > output/ckpt-$i.txt; sleep 0.3
done
head -c FINAL_BYTES /dev/zero | tr '\\0' x > output/final.bin
echo done
""".replace("FINAL_BYTES", str(FINAL_BYTES))


class Sampler(threading.Thread):
    """Reads every file in ``folder`` over and over; records any that is not complete."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.bad: list[str] = []
        self.looks = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for path in list(self.folder.glob("*")) if self.folder.is_dir() else []:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue  # a publish temp name renamed away meanwhile
                match = re.fullmatch(r"\.?(ckpt-(\d+)\.txt|final\.bin)(\.droprun-tmp)?", path.name)
                if match is None:
                    self.bad.append(f"unexpected file {path.name}")
                elif match.group(2) and data != f"ckpt {match.group(2)}\n".encode():
                    self.bad.append(f"{path.name}: {data[:40]!r}")
                elif match.group(1) == "final.bin" and data != b"x" * FINAL_BYTES:
                    self.bad.append(f"{path.name}: {len(data)} bytes")
                self.looks += 1
            time.sleep(0.02)


def _rsync_running(agent: AgentProcess) -> bool:
    return any(process_name(pid) == "rsync" for pid in descendants(agent.pid))


def _cut(host: NetnsHost, seconds: float) -> None:
    host.cut()
    try:
        time.sleep(seconds)
    finally:
        host.restore()


def test_link_cut_while_uploading_and_while_training(tmp_path: Path, netns_host: NetnsHost) -> None:
    server = netns_host.ssh
    count, release = server.base / "count", server.base / "release"
    config = write_ssh_config(
        tmp_path,
        server,
        extra="rescan = 3600",
        host_extra='wake_timeout = "3m"',
        defaults="backup_every = 1",
    )
    project = make_project(tmp_path / "share", "p", {"run.sh": TRAIN})
    (project / "bin" / "data.bin").write_bytes(os.urandom(4_000_000))
    output = project / "results" / "run_0" / "output"
    sampler = Sampler(output)
    sampler.start()
    tc = require_tool("tc")
    # 8 Mbit/s towards the server: the 4 MB upload takes about 4 s, long enough to cut.
    slow = ["qdisc", "add", "dev", netns_host.veth_host, "root", "tbf", "rate", "8mbit"]
    run_checked([tc, *slow, "burst", "64kbit", "latency", "400ms"])
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        drop(project, f'[env]\nCOUNT = "{count}"\nRELEASE = "{release}"\n')
        wait_state(project, 0, runinfo.UPLOADING)
        wait_for("rsync to upload", lambda: _rsync_running(agent))
        _cut(netns_host, CUT_SECONDS)
        run_checked([tc, "qdisc", "del", "dev", netns_host.veth_host, "root"])
        wait_state(project, 0, runinfo.RUNNING, deadline=120)
        log = project / "results" / "run_0" / "log.log"
        wait_for(
            "training to be under way", lambda: log.exists() and "epoch 3\n" in log.read_text()
        )
        _cut(netns_host, CUT_SECONDS)
        release.touch()
        wait_state(project, 0, *runinfo.TERMINAL, deadline=150)
    finally:
        agent.stop()
        sampler.done.set()
        sampler.join()
        run_checked([tc, "qdisc", "replace", "dev", netns_host.veth_host, "root", "pfifo"])

    result = info(project)
    assert result.state == runinfo.SUCCEEDED, (result.reason, agent.text()[-3000:])
    assert count.read_text() == "launched\n"
    lines = (project / "results" / "run_0" / "log.log").read_text().splitlines()
    epochs = [x for x in lines if x.startswith("epoch")]
    assert epochs == [f"epoch {i}" for i in range(1, len(epochs) + 1)]
    assert lines[-1] == "done" and lines.count("done") == 1
    # The training went on while the link was down: it got well past epoch 3.
    assert len(epochs) > 3 + CUT_SECONDS / 0.3 / 2
    names = sorted(p.name for p in output.iterdir())
    assert names == sorted([f"ckpt-{i}.txt" for i in range(1, len(epochs) + 1)] + ["final.bin"])
    assert sampler.looks > 100 and not sampler.bad, sampler.bad[:5]
    assert re.search("reconnecting|retrying|not answering", agent.text())  # it noticed


REBOOTED = """#!/bin/sh
mkdir -p output
echo "ckpt 1" > output/ckpt-1.txt
i=0
while :; do i=$((i+1)); echo "epoch $i"; sleep 0.2; done
"""


def test_a_server_reboot_mid_run_fails_the_run_and_keeps_the_checkpoints(
    tmp_path: Path, sshd_server: SshServer
) -> None:
    config = write_ssh_config(tmp_path, sshd_server, defaults="backup_every = 1")
    project = make_project(tmp_path / "share", "p", {"run.sh": REBOOTED})
    output = project / "results" / "run_0" / "output"
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        drop(project, "")
        wait_state(project, 0, runinfo.RUNNING)
        # Mirrored while running (after the 5 s a file must be left alone to count as done).
        wait_for("the first checkpoint on the share", lambda: (output / "ckpt-1.txt").exists())
        pid = info(project).remote_pid
        assert pid is not None
        # The "reboot": every process of the run dies at once and every connection drops.
        os.killpg(pid, signal.SIGKILL)
        sshd_server.kill_sessions()
        wait_state(project, 0, *runinfo.TERMINAL)
    finally:
        agent.stop()
    result = info(project)
    assert result.state == runinfo.FAILED
    assert "vanished" in (result.reason or "")
    assert result.exit_code is None
    assert (output / "ckpt-1.txt").read_text() == "ckpt 1\n"
    assert "epoch 1" in (project / "results" / "run_0" / "log.log").read_text()
