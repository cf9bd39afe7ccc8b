"""Faults on the share, with the agent serving on the built-in local host: the share fills
up, people edit or delete what the agent owns, cancel twice. Real processes and mounts."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.service import make_context, serve

from shares import drop, info, make_project, on_host, pid_alive, write_config
from testbed import tmpfs

QUICK = """#!/bin/sh
mkdir -p output
echo hello > output/result.txt
echo finished
"""
# Writes a pid file, then ticks until told to finish (a file in the run dir) or killed.
SLOW = """#!/bin/sh
mkdir -p output
echo $$ > "$PID_FILE"
i=0
while [ ! -e "$GO_FILE" ] && [ $i -lt 600 ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done
echo small > output/small.txt
head -c ${BIG:-0} /dev/zero > output/big1.bin
head -c ${BIG:-0} /dev/zero > output/big2.bin
echo finished
"""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def agent(config_path: Path) -> Iterator[_Records]:
    """Serve the share in a thread (``--once``); on leaving, wait for it to finish."""
    records = _Records()
    log = logging.getLogger(f"droprun.test.faults.{id(records)}")
    log.addHandler(records)
    log.setLevel(logging.DEBUG)
    ctx = make_context(load_agent_config(config_path), log)
    thread = threading.Thread(target=serve, args=(ctx,), kwargs={"once": True}, daemon=True)
    thread.start()
    try:
        yield records
        thread.join(120)
        assert not thread.is_alive(), "the agent did not finish its runs"
    finally:
        ctx.stop.set()
        thread.join(30)


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _state(project: Path, run: int = 0) -> str | None:
    try:
        return info(project, run).state
    except runinfo.RunInfoError:
        return None


def test_a_full_share_is_waited_out_and_nothing_on_it_is_damaged(tmp_path: Path) -> None:
    """The share is a small tmpfs: the final mirror of two 400 kB files cannot fit."""
    go = tmp_path / "go"
    with tmpfs(tmp_path / "share", "700k"):
        config = write_config(tmp_path)
        project = make_project(tmp_path / "share", "proj", {"run.sh": SLOW, "quick.sh": QUICK})
        # An earlier run already on the share: it must come through untouched.
        drop(project, 'run_script = "quick.sh"\n')
        with agent(config):
            pass
        assert _state(project, 0) == runinfo.SUCCEEDED
        before = {
            p: p.read_bytes() for p in (project / "results" / "run_0").rglob("*") if p.is_file()
        }

        env = f'PID_FILE = "{tmp_path / "pid"}"\nGO_FILE = "{go}"\nBIG = "400000"\n'
        drop(project, f"[env]\n{env}")
        with agent(config) as records:
            wait_for("the run to start", lambda: _state(project, 1) == runinfo.RUNNING)
            log_path = project / "results" / "run_1" / "log.log"
            # Released only once it ticked: the test wants a log from before the share filled.
            wait_for(
                "the first tick", lambda: log_path.exists() and "tick 1" in log_path.read_text()
            )
            go.touch()
            wait_for(
                "run.info to say the share is full",
                lambda: "space" in (info(project, 1).reason or ""),
            )
            assert info(project, 1).state == runinfo.FINISHING
            assert "No space left on device" in (info(project, 1).reason or "")
            for path, data in before.items():
                assert path.read_bytes() == data
            subprocess.run(["mount", "-o", "remount,size=4m", str(tmp_path / "share")], check=True)
        result = info(project, 1)
        assert result.state == runinfo.SUCCEEDED, result.reason
        assert result.reason is None
        out = project / "results" / "run_1" / "output"
        assert (out / "small.txt").read_text() == "small\n"
        assert (out / "big1.bin").stat().st_size == 400000
        assert (out / "big2.bin").stat().st_size == 400000
        log = (project / "results" / "run_1" / "log.log").read_text()
        assert "tick 1\n" in log and log.endswith("finished\n")
        assert not list((project / "results").rglob(".droprun-staging"))
        assert any("share has space again" in line for line in records.lines)
        for path, data in before.items():
            assert path.read_bytes() == data


def _slow_run(tmp_path: Path, project: Path, tag: str) -> tuple[Path, Path]:
    pid_file, go = tmp_path / f"pid-{tag}", tmp_path / f"go-{tag}"
    drop(project, f'[env]\nPID_FILE = "{pid_file}"\nGO_FILE = "{go}"\n')
    return pid_file, go


def test_run_info_corrupted_while_running_is_reported_and_rewritten(tmp_path: Path) -> None:
    config = write_config(tmp_path, slots=2)
    share = tmp_path / "share"
    victim = make_project(share, "victim", {"run.sh": SLOW})
    other = make_project(share, "other", {"run.sh": SLOW})
    _, go_victim = _slow_run(tmp_path, victim, "victim")
    _, go_other = _slow_run(tmp_path, other, "other")
    with agent(config) as records:
        wait_for("both runs to start", lambda: _state(victim) == _state(other) == "running")
        # The archive is written just after the start; edits before that race its save.
        wait_for("both archives", lambda: info(victim).bin_sha256 and info(other).bin_sha256)
        path = victim / "results" / "run_0" / "run.info"
        path.write_bytes(b"\x00\xffnot toml at all [[[")
        go_victim.touch()
        wait_for("the victim to end", lambda: _state(victim) == runinfo.SUCCEEDED)
        # A hand edit that claims success early is overwritten too.
        text = (other / "results" / "run_0" / "run.info").read_text()
        (other / "results" / "run_0" / "run.info").write_text(
            text.replace('state = "running"', 'state = "succeeded"')
        )
        time.sleep(0.5)
        go_other.touch()
    assert info(other).state == runinfo.SUCCEEDED
    assert [h["state"] for h in info(other).history].count("succeeded") == 1
    assert sum("changed or removed by someone else" in line for line in records.lines) == 2


def test_a_corrupt_run_info_at_start_is_reported_and_other_runs_go_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    share = tmp_path / "share"
    broken = make_project(share, "broken", {"run.sh": QUICK})
    (broken / "results" / "run_0").mkdir(parents=True)
    (broken / "results" / "run_0" / "run.info").write_text('format = 1\nstate = "running"\n')
    (broken / "results" / "run_1").mkdir()
    (broken / "results" / "run_1" / "run.info").write_bytes(b"\xff\xfe garbage")
    (broken / "results" / "run_2").mkdir()  # would be read forever
    os.symlink("/dev/zero", broken / "results" / "run_2" / "run.info")
    (broken / "results" / "run_3").mkdir()  # would block the agent
    os.mkfifo(broken / "results" / "run_3" / "run.info")
    good = make_project(share, "good", {"run.sh": QUICK})
    drop(good, "")
    drop(broken, "")
    with agent(config) as records:
        pass
    assert info(good).state == runinfo.SUCCEEDED
    assert info(broken, 4).state == runinfo.SUCCEEDED  # the numbers go on past broken ones
    skipped = [line for line in records.lines if "skipped" in line]
    assert any("broken/results/run_0" in line and "'project'" in line for line in skipped)
    for n in (1, 2, 3):
        assert any(f"broken/results/run_{n}" in line for line in skipped), n
    assert (broken / "results" / "run_1" / "run.info").read_bytes() == b"\xff\xfe garbage"


def test_a_run_folder_deleted_in_flight_stops_its_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, slots=2)
    share = tmp_path / "share"
    victim = make_project(share, "victim", {"run.sh": SLOW})
    other = make_project(share, "other", {"run.sh": SLOW})
    pid_file, _ = _slow_run(tmp_path, victim, "victim")
    _, go_other = _slow_run(tmp_path, other, "other")
    with agent(config) as records:
        wait_for("both runs to start", lambda: _state(victim) == _state(other) == "running")
        wait_for("the pid file", lambda: pid_file.exists() and pid_file.read_text().strip())
        pid = int(pid_file.read_text())
        folder = victim / "results" / "run_0"
        # As a person would: again if the agent wrote a file into it meanwhile.
        wait_for(
            "the run folder to be deleted",
            lambda: shutil.rmtree(folder, ignore_errors=True) or not folder.exists(),
        )
        wait_for("the training to be stopped", lambda: not pid_alive(pid))
        go_other.touch()
    assert info(other).state == runinfo.SUCCEEDED
    assert not (victim / "results" / "run_0").exists()  # not brought back
    assert not (
        on_host(tmp_path / "server", tmp_path / "share") / "victim" / "run_0"
    ).exists()  # cleaned up on the host
    assert any("victim/run_0" in line and "was deleted" in line for line in records.lines)


def test_cancel_dropped_twice_cancels_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, slots=2)
    share = tmp_path / "share"
    one = make_project(share, "one", {"run.sh": SLOW})
    two = make_project(share, "two", {"run.sh": SLOW})
    pid_file, _ = _slow_run(tmp_path, one, "one")
    _, go_two = _slow_run(tmp_path, two, "two")
    with agent(config):
        wait_for("the runs to start", lambda: _state(one) == _state(two) == "running")
        wait_for("the pid file", lambda: pid_file.exists() and pid_file.read_text().strip())
        run_dir = one / "results" / "run_0"
        (run_dir / "cancel").write_text("stop please")
        (run_dir / "cancel").write_text("STOP NOW")  # the second drop replaces the first
        (run_dir / "cancel (1)").write_text("")  # what a file browser makes of a copy
        wait_for("the cancel", lambda: _state(one) == runinfo.CANCELLED)
        (run_dir / "cancel").write_text("and again")  # after the end: nothing happens
        go_two.touch()
    result = info(one)
    assert result.state == runinfo.CANCELLED
    assert [h["state"] for h in result.history].count("cancelled") == 1
    assert not pid_alive(int(pid_file.read_text()))
    assert info(two).state == runinfo.SUCCEEDED


def test_run_info_replaced_by_a_fifo_while_running_does_not_hang_the_agent(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": SLOW})
    _, go = _slow_run(tmp_path, project, "proj")
    with agent(config) as records:
        wait_for("the run to start", lambda: _state(project) == runinfo.RUNNING)
        # The archive is written just after the start; a swap before that races its save.
        wait_for("the archive", lambda: info(project).bin_sha256)
        path = project / "results" / "run_0" / "run.info"
        path.unlink()
        os.mkfifo(path)
        go.touch()
    assert info(project).state == runinfo.SUCCEEDED
    assert any("changed or removed by someone else" in line for line in records.lines)
