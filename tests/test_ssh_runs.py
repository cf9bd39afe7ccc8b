"""Whole runs on an ssh host: the real agent against a real sshd, real rsync, real processes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent import runinfo

from shares import (
    LINGER,
    TRAIN,
    drop,
    info,
    make_project,
    on_host,
    run_once,
    run_once_cancelling,
    wait_for,
    write_ssh_config,
)
from testbed import SshServer

DEADLINE = 60.0


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
    remote = on_host(sshd_server.remote_root, root / "share") / "proj"
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


def test_second_run_with_one_small_change_sends_a_small_fraction(
    root: Path, sshd_server: SshServer
) -> None:
    config = write_ssh_config(root, sshd_server)
    files = {"run.sh": "#!/bin/sh\ncat data/note.txt\n", "data/note.txt": "v1\n"}
    files |= {f"data/blob-{i:03}.bin": os.urandom(8192).hex() for i in range(200)}
    project = make_project(root / "share", "proj", files)
    drop(project, "")
    run_once(config)
    (project / "bin" / "data" / "note.txt").write_text("v2\n")
    drop(project, "")
    run_once(config)

    first, second = info(project, 0), info(project, 1)
    assert first.state == second.state == runinfo.SUCCEEDED
    assert first.bin_bytes and first.bin_bytes > 3_000_000
    assert first.bytes_uploaded and first.bytes_uploaded >= first.bin_bytes
    assert second.bytes_uploaded is not None
    assert second.bytes_uploaded < first.bin_bytes * 0.01, (second.bytes_uploaded, first)
    assert "v2" in (project / "results" / "run_1" / "log.log").read_text()


STOPPERS = {
    # exits non-zero but leaves a background job in its process group
    "failed": ("", LINGER.replace("wait\n", "exit 3\n")),
    "timed_out": ('timeout = "1s"\n', LINGER),
    "cancelled": ("", LINGER),
}


@pytest.mark.parametrize("outcome", sorted(STOPPERS))
def test_fail_time_out_and_cancel_leave_no_process_on_the_server(
    root: Path, sshd_server: SshServer, outcome: str
) -> None:
    request, script = STOPPERS[outcome]
    config = write_ssh_config(root, sshd_server)
    project = make_project(root / "share", "proj", {"run.sh": script})
    drop(project, request)
    run_dir = project / "results" / "run_0"
    remote_dir = str(on_host(sshd_server.remote_root, root / "share") / "proj" / "run_0")

    def started() -> bool:
        return "started" in _text(run_dir / "log.log") and bool(
            server_processes(sshd_server, remote_dir)
        )

    if outcome == "cancelled":
        run_once_cancelling(config, run_dir, started)
    else:
        run_once(config)

    result = info(project)
    assert result.state == outcome, result.reason
    assert server_processes(sshd_server, remote_dir) == []
    for name in ("child.pid", "main.pid"):
        pid = int((run_dir / "output" / name).read_text())
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not Path(remote_dir).exists()
    if outcome == "failed":
        assert result.exit_code == 3


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


HOSTILE = ["a b", "it's", 'say "hi"', "$(touch {marker})", "`touch {marker}`", "x; touch {marker}"]


def test_user_strings_arrive_as_exact_data(root: Path, sshd_server: SshServer) -> None:
    marker = sshd_server.base / "pwned"
    words = [w.format(marker=marker) for w in HOSTILE]
    config = write_ssh_config(root, sshd_server)
    script = (
        '#!/bin/sh\nfor a in "$@"; do printf "arg[%s]\\n" "$a"; done\n'
        'printf "env[%s]\\n" "$HOSTILE"\nprintf "setup[%s]\\n" "$FROM_SETUP"\n'
    )
    project = make_project(root / "share", "proj", {"run.sh": script})
    text = "\n".join(
        [
            "args = [" + ", ".join(_toml(w) for w in words) + "]",
            f"env = {{ HOSTILE = {_toml(' '.join(words))} }}",
            # setup lines are shell by design: they must reach the server unchanged
            "setup = ["
            + _toml('FROM_SETUP="q\'uo"\'te\'"d"; FROM_SETUP="$FROM_SETUP $(echo sub) `echo bt`"')
            + ", "
            + _toml("export FROM_SETUP")
            + "]",
            f"name = {_toml(words[3])}",
            f"notes = {_toml(' '.join(words))}",
        ]
    )
    drop(project, text + "\n")
    run_once(config)

    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    log = (project / "results" / "run_0" / "log.log").read_text()
    for word in words:
        assert f"arg[{word}]\n" in log
    assert f"env[{' '.join(words)}]\n" in log
    assert "setup[q'uoted sub bt]\n" in log  # what sh makes of the line, as written
    assert result.name == words[3] and result.notes == " ".join(words)
    assert not marker.exists()


def _toml(text: str) -> str:
    """Return ``text`` as a TOML basic string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_a_dropped_connection_mid_run_is_survived(root: Path, sshd_server: SshServer) -> None:
    config = write_ssh_config(root, sshd_server)
    script = "#!/bin/sh\nmkdir -p output\necho started\ni=0\n"
    script += "while [ ! -f go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n"
    script += "echo done > output/result.txt\necho finished\n"
    project = make_project(root / "share", "proj", {"run.sh": script})
    run_dir = project / "results" / "run_0"
    remote_dir = on_host(sshd_server.remote_root, root / "share") / "proj" / "run_0"
    dropped: list[int] = []

    def cut_then_release() -> None:
        wait_for("the run to start", lambda: "started" in _text(run_dir / "log.log"))
        dropped.append(sshd_server.kill_sessions())
        (remote_dir / "go").write_text("")

    cutter = threading.Thread(target=cut_then_release, daemon=True)
    cutter.start()
    drop(project, "")
    run_once(config)
    cutter.join(timeout=DEADLINE)

    result = info(project)
    assert dropped and dropped[0] >= 1
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert "finished" in (run_dir / "log.log").read_text()
    assert (run_dir / "output" / "result.txt").read_text() == "done\n"


def test_two_runs_of_one_project_at_once_share_the_cache(
    root: Path, sshd_server: SshServer
) -> None:
    config = write_ssh_config(root, sshd_server, slots=2)
    files = {"run.sh": TRAIN} | {f"lib/m{i}.py": f"x = {i}\n" * 500 for i in range(50)}
    project = make_project(root / "share", "proj", files)
    drop(project, 'name = "a"\n', "a.request")
    drop(project, 'name = "b"\n', "b.request")
    run_once(config)
    for run in (0, 1):
        assert info(project, run).state == runinfo.SUCCEEDED, info(project, run).reason
        assert len(list((project / "results" / f"run_{run}" / "output").iterdir())) == 3
