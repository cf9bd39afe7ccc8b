"""Whole runs on an ssh host: the real agent against a real sshd, real rsync, real processes."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import runinfo
from agent.hosts.ssh import make_control_dir

from shares import drop, info, make_project, run_once, write_ssh_config
from testbed import SshServer

TRAIN = """#!/bin/sh
echo "args: $*"
mkdir -p output
i=0
while [ $i -lt 3 ]; do i=$((i+1)); echo "epoch $i"; echo "ckpt $i" > output/ckpt-$i.txt; done
exit ${EXIT_CODE:-0}
"""
# Starts a grandchild, records every pid, and waits: for fail/time-out/cancel tests.
LINGER = """#!/bin/sh
mkdir -p output
sleep 300 &
echo $! > output/child.pid
echo $$ > output/main.pid
echo started
wait
"""
DEADLINE = 60.0


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The test's agent root; removes the ssh control dir that the agent makes under /tmp."""
    yield tmp_path
    control_dir = make_control_dir(tmp_path / "state", os.geteuid())
    if control_dir.parent == Path("/tmp") and control_dir.exists():
        shutil.rmtree(control_dir)


def poll(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Call ``check`` until it returns True; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def server_processes(server: SshServer, path: str) -> list[str]:
    """Return ``pid cmdline`` of the test user's processes whose cwd or argv is in ``path``."""
    uid = os.stat(server.base).st_uid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        if state != "Z" and (cwd.startswith(path) or path in cmdline):
            found.append(f"{entry.name} {cmdline}")
    return found


def states(project: Path, run: int = 0) -> list[str]:
    """Return the states of a run's history, in order."""
    return [h["state"] for h in info(project, run).history]


def test_a_run_succeeds_end_to_end(root: Path, sshd_server: SshServer) -> None:
    config = write_ssh_config(root, sshd_server)
    project = make_project(
        root / "share", "proj", {"run.sh": TRAIN, "data/readme.txt": "hello\n", "junk.pyc": "x"}
    )
    drop(project, 'name = "first"\nargs = ["--lr", "0.1"]\n')
    run_once(config)

    run_dir = project / "results" / "run_0"
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert result.host == "gpu"
    assert states(project) == [
        "accepted",
        "queued",
        "uploading",
        "running",
        "finishing",
        "succeeded",
    ]
    log = (run_dir / "log.log").read_text()
    assert "args: --lr 0.1" in log and "epoch 3" in log
    assert sorted(p.name for p in (run_dir / "output").iterdir()) == [
        "ckpt-1.txt",
        "ckpt-2.txt",
        "ckpt-3.txt",
    ]
    remote = Path(sshd_server.remote_root) / "proj"
    assert result.remote_dir == str(remote / "run_0")
    assert result.remote_pid and result.remote_pid > 0
    assert result.bytes_uploaded and result.bytes_uploaded > 0
    assert result.bytes_mirrored > 0
    assert result.exit_code == 0
    assert not (remote / "run_0").exists()
    assert (remote / "cache" / "run.sh").exists()
    assert (remote / "cache" / "data" / "readme.txt").read_text() == "hello\n"
    assert not (remote / "cache" / "junk.pyc").exists()
    assert (remote / "cache").stat().st_uid == os.stat(sshd_server.base).st_uid
