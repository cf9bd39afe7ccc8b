"""The agent's rsync as a NAS ships it: old argument passing, old versions, ACL shares.

``RSYNC_OLD_ARGS=1`` makes a current rsync pass remote paths the way rsync < 3.2.4 (DSM
7.1 ships 3.1.2) does; a stub ``rsync`` on the agent's PATH that claims an old version
makes droprun choose its options for that version while the real rsync does the work.
Real runs over a real sshd.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import tomlkit

from agent import runinfo
from agent.hosts.sync import parse_version

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
from testbed import SshServer, TestUser, make_tempdir, remove_tree, require_tool, run_checked

TRAIN = """#!/bin/sh
echo "project dir: $(basename "$(dirname "$PWD")")"
mkdir -p output
echo "$1" > output/who.txt
"""


def _real_rsync_version() -> str:
    out = run_checked([require_tool("rsync"), "--version"])
    version = parse_version(out)
    assert version, out
    return version


def _stub_rsync(folder: Path, version: str) -> Path:
    """Write ``folder/rsync``: prints rsync ``version`` for --version, else runs the real
    one. Returns ``folder`` (to put first on PATH)."""
    real = require_tool("rsync")
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "rsync"
    stub.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then\n'
        f"    echo 'rsync  version {version}  protocol version 31'\n"
        "    exit 0\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    stub.chmod(0o755)
    return folder


def _pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("pwned*")]


def test_hostile_project_names_run_over_ssh_with_an_old_args_rsync(
    root: Path, sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every odd name of the suite, and one with spaces and parentheses, runs as named."""
    monkeypatch.setenv("RSYNC_OLD_ARGS", "1")
    config = write_ssh_config(root, sshd_server, slots=4)
    share = root / "share"
    alpha = make_project(share, "alpha", {"run.sh": TRAIN})
    names = [*NASTY_PROJECT_NAMES, *WILDCARD_PROJECT_NAMES[1:], "Client X seg (v2)"]
    projects = [make_project(share, n, {"run.sh": TRAIN}) for n in names]
    for project in [alpha, *projects]:
        drop(project, tomlkit.dumps({"args": [project.name]}))
    run_once(config)
    remote_root = on_host(sshd_server.remote_root, share)
    for project in [alpha, *projects]:
        result = info(project)
        assert result.state == runinfo.SUCCEEDED, (project.name, result.reason)
        run_dir = project / "results" / "run_0"
        assert f"project dir: {project.name}\n" in (run_dir / "log.log").read_text()
        assert sorted(p.name for p in (run_dir / "output").iterdir()) == ["who.txt"]
        assert (run_dir / "output" / "who.txt").read_text() == f"{project.name}\n"
        assert sorted(p.name for p in (remote_root / project.name / "cache").iterdir()) == [
            "run.sh"
        ]
    assert not _pwned(root, sshd_server.base, sshd_server.home)


REWRITER = """#!/bin/sh
# One checkpoint of one size, rewritten within one second: only the fraction of a
# second of its mtime tells the versions apart. Mirrors run in between.
mkdir -p output
for i in 1 2 3 4; do
    printf 'epoch %d\\n' "$i" > output/latest.ckpt
    touch -d "@1700000000.${i}00000000" output/latest.ckpt
    sleep 1.3
done
"""


@pytest.mark.parametrize("mode", ["current", "old-args", "agent rsync 3.1.2"])
def test_a_checkpoint_rewritten_within_a_second_ends_with_its_final_content(
    root: Path, sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """With an agent rsync < 3.1.3 (the stub), mirrors cannot compare nanoseconds."""
    real = _real_rsync_version()
    local = real
    if mode == "old-args":
        monkeypatch.setenv("RSYNC_OLD_ARGS", "1")
    elif mode == "agent rsync 3.1.2":
        local = "3.1.2"
        stub = _stub_rsync(root / "old-rsync", local)
        monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    config = write_ssh_config(root, sshd_server)
    project = make_project(
        root / "share", "ckpt", {"run.sh": REWRITER}, project_toml='backup_every = "1s"\n'
    )
    drop(project, "")
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert (result.rsync_local, result.rsync_remote) == (local, real)
    ckpt = project / "results" / "run_0" / "output" / "latest.ckpt"
    assert ckpt.read_text() == "epoch 4\n"
    assert ckpt.stat().st_mtime_ns == 1700000000_400000000
    assert result.bytes_mirrored > 0


def test_an_rsync_older_than_supported_ends_the_run_error_naming_both_versions(
    root: Path, sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _real_rsync_version()
    stub = _stub_rsync(root / "ancient-rsync", "3.0.9")
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    config = write_ssh_config(root, sshd_server)
    project = make_project(root / "share", "proj", {"run.sh": TRAIN})
    drop(project, "")
    run_once(config)
    result = info(project)
    assert result.state == runinfo.ERROR
    assert result.reason and "3.0.9" in result.reason and real in result.reason
    assert "3.1.0" in result.reason
    assert (result.rsync_local, result.rsync_remote) == ("3.0.9", real)
    assert result.remote_pid is None


MODE_600_OUTPUTS = """#!/bin/sh
umask 077
mkdir -p output/sub
echo weights > output/model.ckpt
echo more > output/sub/extra.ckpt
chmod 600 output/model.ckpt output/sub/extra.ckpt
echo trained
"""


def test_results_inherit_the_share_acl_so_its_users_can_read_and_delete_them(
    tmp_path: Path, test_user: TestUser
) -> None:
    """A share folder grants a user rwx by a default ACL; the server writes mode-600
    outputs. droprun never chmods, so every file of results/run_0 stays the user's to
    read, write and delete."""
    setfacl = require_tool("setfacl")
    su = require_tool("su")
    share = make_tempdir("drt-acl-share-")
    try:
        for spec in (f"u:{test_user.name}:rwx", f"d:u:{test_user.name}:rwx"):
            run_checked([setfacl, "-m", spec, str(share)])
        config = write_config(tmp_path, share=share)
        project = make_project(share, "proj", {"run.sh": MODE_600_OUTPUTS})
        drop(project, "")
        run_once(config)
        assert info(project).state == runinfo.SUCCEEDED, info(project).reason
        run_dir = project / "results" / "run_0"
        files = sorted(str(p) for p in run_dir.rglob("*") if not p.is_dir())
        names = {Path(f).relative_to(run_dir).as_posix() for f in files}
        assert {"run.info", "log.log", "bin.tar.gz", "run.request"} <= names
        assert {"output/model.ckpt", "output/sub/extra.ckpt"} <= names
        # Writable too: a chmod 644 would leave the file readable but mask the ACL to r--.
        check = (
            'for f in "$@"; do cat -- "$f" >/dev/null && [ -w "$f" ] && rm -- "$f" '
            '|| { echo "$f" >&2; exit 1; }; done'
        )
        done = subprocess.run(
            [su, test_user.name, "-s", "/bin/sh", "-c", check, "sh", *files],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert not [p for p in run_dir.rglob("*") if not p.is_dir()]
    finally:
        remove_tree(share)
