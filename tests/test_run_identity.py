"""A run is itself: a leftover run dir of the same name, or another share's run, is never
adopted, and ``droprun status --orphans`` shows what was left on a host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli, runinfo
from agent.hosts.base import HostError, LaunchSpec, RunRef
from agent.hosts.local import LocalTransport
from agent.hosts.shell import ShellHost
from agent.runinfo import new_run_id
from agent.schema import HostConfig

from shares import (
    drop,
    info,
    kill9_while,
    make_project,
    on_host,
    pid_alive,
    run_once,
    wait_for,
    write_ssh_config,
)
from testbed import SshServer

V1 = """#!/bin/sh
echo "code v1"
while [ ! -e release ]; do sleep 0.05; done
exit 7
"""
V2 = '#!/bin/sh\necho "code v2"\nmkdir -p output\necho v2 > output/which.txt\n'


def test_a_leftover_run_dir_is_moved_aside_never_adopted(
    root: Path, sshd_server: SshServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent dies mid-run, the run ends by itself, the user deletes results/ and drops a
    new request with new code: the new run_0 runs the new code, the old dir is kept aside."""
    config = write_ssh_config(root, sshd_server, extra="rescan = 3600")
    project = make_project(root / "share", "proj", {"run.sh": V1})
    drop(project, "")
    kill9_while(config, root / "agent.log", project, runinfo.RUNNING)
    old = info(project)
    assert old.remote_dir
    old_dir = Path(old.remote_dir)
    (old_dir / "release").touch()
    wait_for("the old run to end by itself", (old_dir / ".droprun" / "exit").exists)

    shutil.rmtree(project / "results")
    (project / "bin" / "run.sh").write_text(V2)
    drop(project, "")
    run_once(config)

    new = info(project)
    assert new.state == runinfo.SUCCEEDED, new.reason
    assert new.run == 0 and new.run_id != old.run_id
    log = (project / "results" / "run_0" / "log.log").read_text()
    assert "code v2" in log and "code v1" not in log
    assert (project / "results" / "run_0" / "output" / "which.txt").read_text() == "v2\n"
    assert new.moved_aside and Path(new.moved_aside).name.startswith("run_0.orphan-")
    aside = Path(new.moved_aside)
    assert (aside / ".droprun" / "exit").read_text() == "7\n"
    assert "code v1" in (aside / ".droprun" / "log").read_text()

    capsys.readouterr()
    assert cli.main(["status", "--config", str(config), "--orphans", "gpu"]) == 0
    out = capsys.readouterr().out
    assert str(aside) in out
    assert f"rm -rf -- {aside}" in out  # how to remove it; droprun itself never does


def test_two_shares_send_the_same_project_to_one_account_at_once(
    root: Path, sshd_server: SshServer
) -> None:
    configs, projects = [], []
    for side in ("a", "b"):
        config = write_ssh_config(root / side, sshd_server)
        script = (
            "#!/bin/sh\nmkdir -p output\ncat mine.txt > output/who.txt\nsleep 1\ncat mine.txt\n"
        )
        project = make_project(root / side / "share", "proj", {"run.sh": script})
        (project / "bin" / "mine.txt").write_text(f"share {side}\n")
        drop(project, "")
        configs.append(config)
        projects.append(project)
    agents = [
        subprocess.Popen([sys.executable, "-m", "agent", "agent", "--config", str(c), "--once"])
        for c in configs
    ]
    try:
        assert [a.wait(timeout=120) for a in agents] == [0, 0]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
    for side, project in zip(("a", "b"), projects, strict=True):
        result = info(project)
        assert result.state == runinfo.SUCCEEDED, result.reason
        run_dir = project / "results" / "run_0"
        assert (run_dir / "log.log").read_text() == f"share {side}\n"
        assert (run_dir / "output" / "who.txt").read_text() == f"share {side}\n"
        cache = on_host(sshd_server.remote_root, project.parent) / "proj" / "cache"
        assert (cache / "mine.txt").read_text() == f"share {side}\n"
    assert info(projects[0]).remote_dir != info(projects[1]).remote_dir


@pytest.fixture
def host(tmp_path: Path) -> ShellHost:
    return ShellHost(
        HostConfig(name="local", remote_root=str(tmp_path / "remote")), LocalTransport()
    )


def _bin(tmp_path: Path, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "run.sh").write_text(script)
    (bin_dir / "run.sh").chmod(0o755)
    return bin_dir


def test_a_stranger_still_running_is_left_alone(host: ShellHost, tmp_path: Path) -> None:
    # Fresh ids: processes are found by run id, and other test sessions may run at once.
    stranger = RunRef("proj", 0, f"stranger-{new_run_id()}")
    mine = RunRef("proj", 0, f"mine-{new_run_id()}")
    assert host.upload(stranger, _bin(tmp_path, "#!/bin/sh\necho up > up\nexec sleep 300\n"), [])
    pid = host.launch(stranger, LaunchSpec("run.sh")).pid
    run_dir = Path(host.remote_dir(mine))
    wait_for("the stranger to run", (run_dir / "up").exists)
    try:
        uploaded = host.upload(mine, _bin(tmp_path, "#!/bin/sh\necho mine\n"), [])
        assert uploaded.moved_aside and Path(uploaded.moved_aside).parent == run_dir.parent
        aside = Path(uploaded.moved_aside)
        assert (aside / "up").exists() and not (run_dir / "up").exists()
        # Every verb refuses the dir of another run: status, log, poll, kill, stop,
        # clean-up, launch.
        for verb in (
            lambda: host.status(stranger),
            lambda: host.read_log(stranger, 0),
            lambda: host.poll(stranger, 0),
            lambda: host.kill(stranger, 1.0),
            lambda: host.stop(stranger, 1.0, 0),
            lambda: host.cleanup(stranger),
            lambda: host.launch(stranger, LaunchSpec("run.sh")),
        ):
            with pytest.raises(HostError, match="belongs to another run"):
                verb()
        host.launch(mine, LaunchSpec("run.sh"))
        wait_for("my run to end", lambda: host.status(mine).state == "exited")
        host.kill(mine, 1.0)
        host.cleanup(mine)
        assert not run_dir.exists()
        assert pid_alive(pid), "a stranger's process was killed"
        assert (aside / ".droprun" / "pid").read_text() == f"{pid}\n"
        orphans = host.orphans()
        assert [(o.path, o.run_id, o.alive) for o in orphans] == [
            (str(aside), stranger.run_id, True)
        ]
    finally:
        os.killpg(pid, signal.SIGKILL)
