"""The agent as a real process notices requests: local drops, slow writers, editors, SMB."""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from pathlib import Path

import pytest

from agent import runinfo

from shares import AgentProcess, info, make_project, wait_for, wait_state, write_config
from testbed import require_tool

QUICK = "#!/bin/sh\necho hello from $1\n"
NO_RESCAN = "rescan = 3600"
REQUEST = 'name = "slow"\nargs = ["' + "x" * 60 + '"]\nnotes = "written in pieces"\n'


@pytest.fixture
def agent(tmp_path):
    """Start an agent on a fresh share (settle 1 s); yields a factory, stops it at teardown."""
    started: list[AgentProcess] = []

    def start(config: Path, wrapper: tuple[str, ...] = ()) -> AgentProcess:
        proc = AgentProcess(config, tmp_path / "agent.log", wrapper)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def lock_holder(share: Path) -> str:
    """Return the pid in the share's agent lock file ("" if none yet)."""
    try:
        return (share / ".droprun" / "agent.lock").read_text().strip()
    except FileNotFoundError:
        return ""


def wait_started(share: Path) -> None:
    """Wait until an agent holds the share's lock."""
    wait_for("the agent to take the share's lock", lambda: lock_holder(share))


def watches(pid: int, folder: Path) -> bool:
    """Return True once process ``pid`` has an inotify watch on ``folder``.

    The agent takes the share's lock before it watches the project folders, and inotify
    cannot report a file opened before its folder was watched: a test that writes slowly
    must wait for the watch, or the agent may take its half-written file as settled.
    """
    inode = f" ino:{folder.stat().st_ino:x} "  # fdinfo: "inotify wd:3 ino:1f2e sdev:..."
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("inotify wd:") and inode in line:
                    return True
    return False


def accepted_files(project: Path) -> list[str]:
    """Return the run.request of each run of ``project``, by run number."""
    return [
        (project / "results" / f"run_{n}" / "run.request").read_text()
        for n in range(len(list((project / "results").glob("run_*"))))
    ]


def test_requests_dropped_while_it_runs_are_taken_also_in_new_projects(tmp_path, agent):
    # No rescan during the test: only the watches can report these requests.
    config = write_config(tmp_path, settle=1, extra=NO_RESCAN)
    share = tmp_path / "share"
    project = make_project(share, "alpha", {"run.sh": QUICK})
    agent(config)
    wait_started(tmp_path / "share")
    path = project / "run.request"
    path.write_text('args = ["alpha"]\n')
    assert wait_state(project, 0, runinfo.SUCCEEDED) == runinfo.SUCCEEDED
    assert "hello from alpha" in (project / "results/run_0/log.log").read_text()

    # A project folder made after the agent started, and a request in it at once.
    late = make_project(share, "late", {"run.sh": QUICK})
    (late / "run.request").write_text('args = ["late"]\n')
    wait_state(late, 0, runinfo.SUCCEEDED)
    # ...and a later one in the same new folder, which only its watch can report quickly.
    (late / "second.request").write_text('args = ["again"]\n')
    wait_state(late, 1, runinfo.SUCCEEDED)


def test_a_request_written_slowly_in_pieces_is_never_read_half_written(tmp_path, agent):
    config = write_config(tmp_path, settle=1, extra=NO_RESCAN)
    project = make_project(tmp_path / "share", "p", {"run.sh": QUICK})
    proc = agent(config)
    wait_for("the agent to watch the project", lambda: watches(proc.pid, project))
    # One writer that keeps the file open and pauses longer than the settle time...
    with open(project / "run.request", "w") as out:
        for piece in (REQUEST[:10], REQUEST[10:40], REQUEST[40:]):
            out.write(piece)
            out.flush()
            time.sleep(1.5)
    # ...and one that opens, appends and closes each piece, pausing under the settle time.
    path = project / "b.request"
    for piece in (REQUEST[:10], REQUEST[10:40], REQUEST[40:]):
        with open(path, "a") as out:
            out.write(piece)
        time.sleep(0.4)
    wait_state(project, 1, runinfo.SUCCEEDED)
    assert accepted_files(project) == [REQUEST, REQUEST]
    assert not list(project.glob("*.rejected"))


def test_an_editor_saving_through_a_temp_file_and_a_rename_is_taken(tmp_path, agent):
    config = write_config(tmp_path, settle=1, extra=NO_RESCAN)
    project = make_project(tmp_path / "share", "p", {"run.sh": QUICK})
    agent(config)
    wait_started(tmp_path / "share")
    # What vim / gedit / VS Code do: swap and temp files beside it, then a rename.
    (project / ".run.request.swp").write_text("swap")
    (project / "run.request~").write_text("backup")
    tmp = project / ".goutputstream-ABC123"
    tmp.write_text('name = "edited"\n')
    os.rename(tmp, project / "run.request")
    wait_state(project, 0, runinfo.SUCCEEDED)
    assert info(project).name == "edited"
    assert (project / ".run.request.swp").exists() and (project / "run.request~").exists()


def test_poll_mode_takes_requests(tmp_path, agent):
    config = write_config(tmp_path, extra='watch = "poll"')
    project = make_project(tmp_path / "share", "p", {"run.sh": QUICK})
    agent(config)
    (project / "run.request").write_text("")
    late = make_project(tmp_path / "share", "late", {"run.sh": QUICK})
    (late / "run.request").write_text("")
    wait_state(project, 0, runinfo.SUCCEEDED)
    wait_state(late, 0, runinfo.SUCCEEDED)


def test_out_of_inotify_watches_it_says_so_and_polls(tmp_path, agent):
    # A user namespace has its own inotify limits: allow 3 watches (share + 2 projects).
    unshare = require_tool("unshare")
    config = write_config(tmp_path, extra="rescan = 3600")
    share = tmp_path / "share"
    projects = [make_project(share, f"p{i}", {"run.sh": QUICK}) for i in range(5)]
    limit = 'echo 3 > /proc/sys/user/max_inotify_watches && exec "$@"'
    proc = agent(config, (unshare, "--user", "--map-root-user", "sh", "-c", limit, "sh"))
    wait_for("the fallback message", lambda: "polling the share instead" in proc.text())
    for project in projects:
        (project / "run.request").write_text("")
    for project in projects:
        wait_state(project, 0, runinfo.SUCCEEDED)
    assert proc.proc.poll() is None


def test_a_second_agent_on_the_same_share_exits_with_a_clear_message(tmp_path, agent):
    config = write_config(tmp_path)
    first = agent(config)
    wait_started(tmp_path / "share")
    second = AgentProcess(config, tmp_path / "second.log")
    assert second.wait() == 1
    assert f"another droprun agent (pid {first.pid}) is already serving" in second.text()
    assert "Traceback" not in second.text()


def test_a_request_dropped_over_smb_is_taken_and_succeeds(tmp_path, agent, smbd_server):
    share = smbd_server.share
    config = write_config(tmp_path, settle=1, share=share, extra=NO_RESCAN)
    agent(config)
    wait_started(share)
    smbd_server.mkdir("proj")
    smbd_server.mkdir("proj/bin")
    script = tmp_path / "run.sh"
    script.write_text(QUICK)
    smbd_server.put(script, "proj/bin/run.sh")
    (share / "proj/bin/run.sh").chmod(0o755)
    request = tmp_path / "run.request"
    request.write_text('args = ["smb"]\n')
    smbd_server.put(request, "proj/run.request")
    project = share / "proj"
    wait_state(project, 0, runinfo.SUCCEEDED)
    assert "hello from smb" in (project / "results/run_0/log.log").read_text()
    assert info(project).submitted_by == smbd_server.user

    # A slow client: smbclient holds back a small file until its close, so the file sits
    # empty (a valid request!) for longer than the settle time.
    request.write_text(REQUEST)
    smbd_server.put_slowly(request, "proj/slow.request", chunk=16, pause=0.5)
    wait_state(project, 1, runinfo.SUCCEEDED)
    assert accepted_files(project) == ['args = ["smb"]\n', REQUEST]
    # An upload to a temp name and a rename, as some clients do.
    smbd_server.put(request, "proj/upload.part")
    smbd_server.smbclient('rename "proj\\upload.part" "proj\\third.request"')
    wait_state(project, 2, runinfo.SUCCEEDED)
    assert not list(project.glob("*.rejected"))


def test_requests_saved_as_windows_and_macs_save_them_over_smb(tmp_path, agent, smbd_server):
    share = smbd_server.share
    config = write_config(tmp_path, settle=1, share=share, extra=NO_RESCAN)
    agent(config)
    wait_started(share)
    smbd_server.mkdir("proj")
    smbd_server.mkdir("proj/bin")
    script = tmp_path / "run.sh"
    script.write_text(QUICK + 'if [ "$1" = wait ]; then sleep 300; fi\n')
    smbd_server.put(script, "proj/bin/run.sh")
    (share / "proj/bin/run.sh").chmod(0o755)
    project = share / "proj"
    request = tmp_path / "req"
    # Windows: "New Text Document.txt" renamed to run.request, extension hidden.
    request.write_text('args = ["txt"]\n')
    smbd_server.put(request, "proj/run.request.txt")
    wait_state(project, 0, runinfo.SUCCEEDED)
    assert "hello from txt" in (project / "results/run_0/log.log").read_text()
    # TextEdit's default: rich text. It gets an .error that says what to do.
    request.write_text('{\\rtf1\\ansi args = ["rtf"]}\n')
    smbd_server.put(request, "proj/run.request.rtf")
    error = wait_for("the .error", lambda: _read(project / "run.request.rtf.error"))
    assert "plain text" in error
    assert (project / "run.request.rtf.rejected").exists()
    # cancel.txt cancels, as cancel does.
    request.write_text('args = ["wait"]\n')
    smbd_server.put(request, "proj/run.request")
    wait_for(
        "the script to start", lambda: "hello from wait" in _read(project / "results/run_1/log.log")
    )
    # On a NAS the share's ACL lets its users write there; here the test gives the folder.
    user = pwd.getpwnam(smbd_server.user)
    os.chown(project / "results/run_1", user.pw_uid, user.pw_gid)
    smbd_server.put(request, "proj/results/run_1/cancel.txt")
    assert wait_state(project, 1, *runinfo.TERMINAL) == runinfo.CANCELLED
    assert not (project / "results/run_2").exists()


def _read(path: Path) -> str:
    """Return the text of ``path``, "" while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
