"""Hostile things a share user can do: links out of the share, odd folder names, requests
that try to change where or as whom a run goes. Real runs on the built-in local host."""

from __future__ import annotations

import os
import tarfile
import threading
from pathlib import Path

import pytest

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.hosts.kinds import builtin_kinds
from agent.problems import InvalidFile
from agent.schema import RUN_FIELDS
from agent.settings import parse_request, read_project_layer

from shares import (
    NASTY_PROJECT_NAMES,
    WILDCARD_PROJECT_NAMES,
    drop,
    info,
    make_project,
    on_host,
    run_once,
    write_config,
    write_ssh_config,
)
from testbed import SshServer

TRAIN = """#!/bin/sh
echo "project dir: $(basename "$(dirname "$PWD")")"
mkdir -p output
echo done > output/result.txt
"""
SECRET = "SECRET CONTENT OUTSIDE THE SHARE\n"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text(SECRET)
    return outside


def test_a_link_in_bin_is_uploaded_and_archived_as_a_link(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    os.symlink(outside / "secret.txt", project / "bin" / "secret.txt")
    os.symlink("../../outside", project / "bin" / "dirlink")  # a relative link to a folder
    drop(project, "")
    run_once(config)

    assert info(project).state == runinfo.SUCCEEDED
    cache = on_host(tmp_path / "server", tmp_path / "share") / "proj" / "cache"
    assert os.readlink(cache / "secret.txt") == str(outside / "secret.txt")
    assert os.readlink(cache / "dirlink") == "../../outside"
    with tarfile.open(project / "results" / "run_0" / "bin.tar.gz") as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert members["secret.txt"].issym()
        assert members["secret.txt"].linkname == str(outside / "secret.txt")
        assert members["dirlink"].issym()
        assert not any(name.startswith("dirlink/") for name in members)
        contents = b"".join(
            tar.extractfile(m).read()
            for m in members.values()
            if m.isfile()  # type: ignore[union-attr]
        )
    assert SECRET.encode() not in contents
    assert info(project).bin_files == 3  # run.sh and the two links


def test_a_bin_folder_linked_out_of_the_share_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    (outside / "run.sh").write_text(TRAIN)
    project = tmp_path / "share" / "proj"
    project.mkdir()
    os.symlink(outside, project / "bin")
    drop(project, "")
    run_once(config)

    assert not (project / "results").exists()
    assert (project / "run.request.rejected").exists()
    assert (
        "proj/bin is a link that points outside the share"
        in (project / "run.request.error").read_text()
    )
    assert not (tmp_path / "server").exists()  # nothing was uploaded


def test_a_project_folder_linked_out_of_the_share_is_never_read(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    make_project(outside.parent, outside.name, {"run.sh": TRAIN})
    drop(outside, "")
    os.symlink(outside, tmp_path / "share" / "linked")
    good = make_project(tmp_path / "share", "good", {"run.sh": TRAIN})
    drop(good, "")
    run_once(config)

    assert info(good).state == runinfo.SUCCEEDED  # the agent carries on
    assert (outside / "run.request").exists()  # not taken, not renamed: not ours to touch
    assert sorted(p.name for p in outside.iterdir()) == ["bin", "run.request", "secret.txt"]
    assert not (on_host(tmp_path / "server", tmp_path / "share") / "linked").exists()


def test_a_bin_folder_swapped_for_a_link_after_acceptance_is_not_uploaded(
    tmp_path: Path,
) -> None:
    """The check at acceptance is not enough: bin/ can change while the run waits."""
    from agent import share

    config_path = write_config(tmp_path)
    config = load_agent_config(config_path)
    outside = _outside(tmp_path)
    (outside / "run.sh").write_text(TRAIN)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    accepted = share.accept(drop(project, ""), config)
    assert isinstance(accepted, share.Accepted)
    (project / "bin").rename(project / "bin.old")
    os.symlink(outside, project / "bin")
    run_once(config_path)

    result = info(project)
    assert result.state == runinfo.ERROR
    assert "outside the share" in (result.reason or "")
    cache = on_host(tmp_path / "server", tmp_path / "share") / "proj" / "cache"
    assert not (cache / "secret.txt").exists()
    archive = project / "results" / "run_0" / "bin.tar.gz"
    if archive.exists():  # an archive made before the check must not hold the link's target
        with tarfile.open(archive) as tar:
            assert "secret.txt" not in {m.name.removeprefix("./") for m in tar.getmembers()}


def _agent_until_running(config: Path, project: Path) -> threading.Thread:
    """Start ``agent --once`` in a thread; return it once ``project``'s run 0 is running."""
    thread = threading.Thread(target=run_once, args=(config,))
    thread.start()
    info_path = project / "results" / "run_0" / "run.info"
    for _ in range(600):
        if info_path.exists() and info(project).state == runinfo.RUNNING:
            return thread
        thread.join(0.1)
    raise AssertionError("the run did not start")


def test_project_folders_with_shell_syntax_in_their_names_run_as_named(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, slots=2)
    other = make_project(tmp_path / "share", "other", {"run.sh": TRAIN})
    (on_host(tmp_path / "server", tmp_path / "share") / "other" / "cache").mkdir(parents=True)
    (on_host(tmp_path / "server", tmp_path / "share") / "other" / "cache" / "keep.txt").write_text(
        "other project's\n"
    )
    projects = [make_project(tmp_path / "share", n, {"run.sh": TRAIN}) for n in NASTY_PROJECT_NAMES]
    for project in projects:
        drop(project, "")
    run_once(config)

    for project in projects:
        result = info(project)
        assert result.state == runinfo.SUCCEEDED, (project.name, result.reason)
        assert result.project == project.name
        assert (
            f"project dir: {project.name}"
            in (project / "results" / "run_0" / "log.log").read_text()
        )
        assert (project / "results" / "run_0" / "output" / "result.txt").exists()
        assert (
            on_host(tmp_path / "server", tmp_path / "share") / project.name / "cache" / "run.sh"
        ).exists()
    # "*" did not reach the other project's cache, and nothing ran the names as commands.
    assert (
        on_host(tmp_path / "server", tmp_path / "share") / "other" / "cache" / "keep.txt"
    ).exists()
    assert not (other / "results").exists()
    assert not list(tmp_path.rglob("pwned*"))


# Every key of every kind of host; "gpus" is also a run setting (how many a run needs).
HOST_FIELD_NAMES = sorted(
    {spec.name for kind in builtin_kinds().values() for spec in kind.fields()}
    - {spec.name for spec in RUN_FIELDS}
)


@pytest.mark.parametrize("field", HOST_FIELD_NAMES)
def test_no_host_setting_can_come_from_a_request_or_project(tmp_path: Path, field: str) -> None:
    hosts = frozenset({"local", "gpu1"})
    attempts = [
        f'{field} = "x"\n',
        f"{field} = 1\n",
        f'[hosts.gpu1]\n{field} = "x"\n',
        f'hosts.gpu1.{field} = "x"\n',
        f'hosts = {{ gpu1 = {{ {field} = "x" }} }}\n',
        f'[defaults]\n{field} = "x"\n',
        f'[[hosts]]\n{field} = "x"\n',
        f'[env]\n{field} = "x"\n[hosts.local]\n{field} = "x"\n',
    ]
    for text in attempts:
        with pytest.raises(InvalidFile):
            parse_request(text.encode(), "run.request", hosts)
        path = tmp_path / "project.toml"
        path.write_text(text)
        with pytest.raises(InvalidFile):
            read_project_layer(path, hosts)


def test_a_run_goes_where_the_agent_config_says_whatever_the_request_holds(
    tmp_path: Path,
) -> None:
    """A request full of look-alike settings runs on the configured host, in its remote root,
    as the agent's user; the env names that look like host settings are only env."""
    config = write_config(tmp_path)
    script = TRAIN + 'printf "%s|%s|%s\\n" "$remote_root" "$user" "$address" > output/env.txt\n'
    project = make_project(tmp_path / "share", "proj", {"run.sh": script})
    drop(
        project,
        'host = "local"\n[env]\nremote_root = "/"\nuser = "root"\naddress = "attacker.example"\n',
    )
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED
    assert result.host == "local"
    assert result.remote_dir == str(
        on_host(tmp_path / "server", tmp_path / "share") / "proj" / "run_0"
    )
    assert (project / "results" / "run_0" / "output" / "env.txt").read_text() == (
        "/|root|attacker.example\n"
    )
    assert result.submitted_by == "root"  # who owns the file, not anything it says


# Publishes output/link (a link out of the share) while running, then makes link a folder
# with a file in it: the final mirror must not write that file through the published link.
LINK_THEN_FOLDER = """#!/bin/sh
mkdir -p output
ln -s "$OUTSIDE" output/link
i=0
while [ ! -L "$SHARE_OUTPUT/link" ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
rm output/link
mkdir output/link
echo pwned > output/link/evil.txt
echo ok > output/fine.txt
"""


def test_outputs_never_reach_outside_the_run_folder_through_a_published_link(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": LINK_THEN_FOLDER})
    share_output = project / "results" / "run_0" / "output"
    drop(
        project,
        f'backup_every = 1\n[env]\nOUTSIDE = "{outside}"\nSHARE_OUTPUT = "{share_output}"\n',
    )
    run_once(config)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (share_output / "fine.txt").read_text() == "ok\n"
    assert os.readlink(share_output / "link") == str(outside)  # kept: the share is the archive
    result = info(project)
    assert "link" in (result.reason or "") or result.state == runinfo.SUCCEEDED


WAIT_THEN_WRITE = """#!/bin/sh
mkdir -p output/sub
i=0
while [ ! -e "$GO" ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
echo pwned > output/evil.txt
echo pwned > output/sub/evil2.txt
"""


@pytest.mark.parametrize("what", ["output", "output/sub", ".droprun-staging"])
def test_outputs_never_follow_a_link_that_a_share_user_put_in_their_way(
    tmp_path: Path, what: str
) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": WAIT_THEN_WRITE})
    go = tmp_path / "go"
    drop(project, f'[env]\nGO = "{go}"\n')
    thread = _agent_until_running(config, project)
    run_dir = project / "results" / "run_0"
    (run_dir / what).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, run_dir / what)
    go.touch()
    thread.join(60)
    assert not thread.is_alive()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    result = info(project)
    assert result.state in (runinfo.SUCCEEDED, runinfo.ERROR)
    assert result.state == runinfo.SUCCEEDED or "link" in (result.reason or "")


def test_the_log_is_never_appended_through_a_link(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    script = (
        '#!/bin/sh\nwhile [ ! -e "$GO" ]; do sleep 0.1; done\necho "ssh-ed25519 AAAA attacker"\n'
    )
    project = make_project(tmp_path / "share", "proj", {"run.sh": script})
    go = tmp_path / "go"
    drop(project, f'[env]\nGO = "{go}"\n')
    thread = _agent_until_running(config, project)
    run_dir = project / "results" / "run_0"
    os.symlink(outside / "secret.txt", run_dir / "log.log")
    go.touch()
    thread.join(60)
    assert not thread.is_alive()
    assert (outside / "secret.txt").read_text() == SECRET
    assert info(project).state == runinfo.SUCCEEDED
    assert (run_dir / "log.log").read_text() == "ssh-ed25519 AAAA attacker\n"


def test_project_names_with_wildcards_stay_in_their_own_folder_on_an_ssh_server(
    tmp_path: Path, sshd_server: SshServer
) -> None:
    """Over ssh the server's shell sees the paths: "*" or "alph?" must not match alpha."""
    config = write_ssh_config(tmp_path, sshd_server, slots=2)
    share = tmp_path / "share"
    writes = '#!/bin/sh\nmkdir -p output\necho "$1" > output/who.txt\necho "$1" > mine.txt\n'
    alpha = make_project(share, "alpha", {"run.sh": writes, "alpha-only.txt": "a\n"})
    drop(alpha, 'args = ["alpha"]\n')
    run_once(config)
    assert info(alpha).state == runinfo.SUCCEEDED
    cache = on_host(sshd_server.remote_root, share) / "alpha" / "cache"
    before = sorted(p.name for p in cache.iterdir())
    projects = [make_project(share, n, {"run.sh": writes}) for n in WILDCARD_PROJECT_NAMES]
    for project in projects:
        drop(project, f'args = ["{project.name}"]\n')
    run_once(config)
    for project in projects:
        assert info(project).state == runinfo.SUCCEEDED, info(project).reason
        out = project / "results" / "run_0" / "output"
        assert sorted(p.name for p in out.iterdir()) == ["who.txt"]
        assert (out / "who.txt").read_text() == f"{project.name}\n"
        remote_cache = on_host(sshd_server.remote_root, share) / project.name / "cache"
        assert sorted(p.name for p in remote_cache.iterdir()) == ["run.sh"]
    assert sorted(p.name for p in cache.iterdir()) == before
    assert not (alpha / "results" / "run_1").exists()


@pytest.mark.parametrize("kind", ["fifo", "link to a secret", "link to /dev/zero", "folder"])
def test_a_project_toml_that_is_not_a_plain_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    config = write_config(tmp_path)
    outside = _outside(tmp_path)
    (outside / "secret.txt").write_text('password = "hunter2"\n')
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    toml = project / "project.toml"
    if kind == "fifo":
        os.mkfifo(toml)
    elif kind == "folder":
        toml.mkdir()
    else:
        os.symlink(outside / "secret.txt" if "secret" in kind else "/dev/zero", toml)
    fifo_request = project / "other.request"
    os.mkfifo(fifo_request)  # a request that is a FIFO must not hang the agent either
    drop(project, "")
    good = make_project(tmp_path / "share", "good", {"run.sh": TRAIN})
    drop(good, "")
    run_once(config)
    assert info(good).state == runinfo.SUCCEEDED
    error = (project / "run.request.error").read_text()
    assert "project.toml" in error
    assert "hunter2" not in error and "password" not in error
    assert not (project / "results").exists()


def test_ssh_files_in_folders_with_odd_names_work(tmp_path: Path, sshd_server: SshServer) -> None:
    """The admin's key and known_hosts may live in folders with spaces, % and $ in them."""
    odd = tmp_path / "keys 50% $HOME (x)"
    odd.mkdir()
    key = odd / "id %C"
    key.write_bytes(sshd_server.key.read_bytes())
    key.chmod(0o600)
    known = sshd_server.write_known_hosts(odd / "known %h")
    config = write_ssh_config(tmp_path, sshd_server, host_extra="")
    text = config.read_text()
    text = text.replace(f'key = "{sshd_server.key}"', f'key = "{key}"')
    text = text.replace(f'known_hosts = "{sshd_server.known_hosts}"', f'known_hosts = "{known}"')
    config.write_text(text)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, "")
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert (project / "results" / "run_0" / "output" / "result.txt").exists()


def test_a_bin_folder_swapped_for_a_link_after_the_upload_is_not_archived(
    tmp_path: Path,
) -> None:
    """The archive is made once the script runs; bin/ may have become a link by then."""
    import logging

    from agent import share
    from agent.runner import RunDriver
    from agent.service import make_context

    config = load_agent_config(write_config(tmp_path))
    outside = _outside(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    accepted = share.accept(drop(project, ""), config)
    assert isinstance(accepted, share.Accepted)
    driver = RunDriver(make_context(config, logging.getLogger("droprun.test")), accepted.run_dir)
    driver.prepare()
    driver.upload_and_launch()
    assert driver.info.state == runinfo.RUNNING
    (project / "bin").rename(project / "bin.old")
    os.symlink(outside, project / "bin")
    driver.drive()
    result = info(project)
    assert result.state == runinfo.SUCCEEDED
    assert "not archived" in (result.bin_note or "")
    assert not (project / "results" / "run_0" / "bin.tar.gz").exists()
