"""rsync argv as data, stats parsing, exit classification, and real rsync runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.hosts.base import HostError, HostKeyError
from agent.hosts.sync import (
    LocalRsync,
    RsyncStats,
    RsyncVersions,
    classify_exit,
    make_pull_argv,
    make_upload_argv,
    parse_stats,
    parse_version,
    run_rsync,
)

STATS = """
Number of files: 4 (reg: 1, dir: 2, link: 1)
Number of created files: 4 (reg: 1, dir: 2, link: 1)
Number of regular files transferred: 12,345
Total file size: 4 bytes
Total bytes sent: 1,234,567
Total bytes received: 56

sent 1,234,567 bytes  received 56 bytes  470.00 bytes/sec
"""


def test_upload_argv_local() -> None:
    argv = make_upload_argv("/share/p/bin", "/srv/cache", [".git/", "*.pyc"], None)
    assert argv == [
        "rsync",
        "-s",
        "-a",
        "--delete",
        "--delete-excluded",
        "--modify-window=-1",
        "--stats",
        "--exclude=.git/",
        "--exclude=*.pyc",
        "--",
        "/share/p/bin/",
        "/srv/cache",
    ]
    assert "--inplace" not in argv


def test_upload_argv_with_rsh_and_odd_strings() -> None:
    rsh = ["ssh", "-i", "/keys/my key", "-o", "UserKnownHostsFile=/k h"]
    argv = make_upload_argv("/share/p/bin/", "u@h:/srv/c", ["a b", "-rf"], rsh)
    i = argv.index("-e")
    assert argv[i + 1] == "ssh -i '/keys/my key' -o 'UserKnownHostsFile=/k h'"
    assert "--exclude=-rf" in argv and "--exclude=a b" in argv
    assert argv[-2:] == ["/share/p/bin/", "u@h:/srv/c"]
    assert argv.index("--") == len(argv) - 3


def test_upload_argv_for_a_server_rsync_without_nanoseconds_compares_contents() -> None:
    argv = make_upload_argv("/share/p/bin", "/srv/cache", [], None, receiver_ns=False)
    assert "--checksum" in argv and "--modify-window=-1" not in argv


def test_pull_argv() -> None:
    argv = make_pull_argv("u@h:/srv/run_0/output", "/share/p/results/.droprun-staging", ["ssh"])
    assert argv[:8] == [
        "rsync",
        "-s",
        "-rlt",
        "--no-perms",
        "--chmod=ugo=rwX",
        "--delete",
        "--modify-window=-1",
        "--stats",
    ]
    assert argv[-2:] == ["u@h:/srv/run_0/output/", "/share/p/results/.droprun-staging/"]
    assert "--inplace" not in argv and "-a" not in argv
    old = make_pull_argv("u@h:/o", "/s", ["ssh"], receiver_ns=False)
    assert "--modify-window=-1" not in old and "--checksum" not in old


def test_parse_version() -> None:
    assert parse_version("rsync  version 3.1.2  protocol version 31\nCopyright") == "3.1.2"
    assert parse_version("rsync  version v3.2.7  protocol version 31\n") == "3.2.7"
    assert parse_version("rsync version 3.4.1dev protocol version 32") == "3.4.1"
    assert parse_version("openrsync: protocol version 29") is None


def test_versions_decide_options_and_name_both_sides_when_too_old() -> None:
    nas = RsyncVersions("3.1.2", "3.4.1")
    assert nas.problem() is None and nas.upload_ns and not nas.pull_ns
    old_server = RsyncVersions("3.4.1", "3.1.2")
    assert old_server.pull_ns and not old_server.upload_ns
    for versions in (RsyncVersions("3.0.9", "3.4.1"), RsyncVersions("3.4.1", "2.6.9")):
        problem = versions.problem()
        assert problem and versions.local in problem and versions.remote in problem
        assert "3.1.0" in problem


def test_local_rsync_version_is_this_machines() -> None:
    assert LocalRsync().version() == parse_version(
        subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    )


def test_parse_stats() -> None:
    assert parse_stats(STATS) == RsyncStats(1234567, 56, 12345)
    assert parse_stats("") == RsyncStats(0, 0, 0)
    assert parse_stats("Number of files transferred: 7\n").files_transferred == 7


@pytest.mark.parametrize("code", [10, 12, 24, 30, 35])
def test_transient_codes(code: int) -> None:
    transient, words = classify_exit(code)
    assert transient and words


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 11, 13, 23])
def test_permanent_codes(code: int) -> None:
    transient, words = classify_exit(code)
    assert not transient and words


@pytest.mark.parametrize(
    ("code", "stderr"),
    [
        (12, "bash: -c: line 1: syntax error near unexpected token `('"),
        (127, "sh: 1: rsync: not found"),
        (12, "bash: line 1: rsync: command not found"),
        (1, "rsync: on remote machine: --frob: unknown option"),
        (12, "protocol version mismatch -- is your shell clean?"),
    ],
)
def test_a_command_the_server_refused_is_permanent(code: int, stderr: str) -> None:
    transient, words = classify_exit(code, stderr)
    assert not transient and "refused" in words


def test_255_depends_on_stderr() -> None:
    assert classify_exit(255, "ssh: connect to host x: Connection timed out")[0]
    assert not classify_exit(255, "Host key verification failed.\r\n")[0]
    assert not classify_exit(255, "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @")[0]
    assert not classify_exit(255, "u@h: Permission denied (publickey).")[0]


def _tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(2_000_000))
    (root / "pkg" / "small.py").write_text("print('hi')\n")
    (root / "skip.pyc").write_bytes(b"x")
    (root / "link").symlink_to("/etc/passwd")


def test_run_rsync_upload_and_delete_excluded(tmp_path: Path) -> None:
    src, cache = tmp_path / "bin", tmp_path / "cache"
    _tree(src)
    first = run_rsync(make_upload_argv(str(src), str(cache), [], None), timeout=30)
    assert first.bytes_sent > 2_000_000 and first.files_transferred == 3
    assert os.readlink(cache / "link") == "/etc/passwd"
    again = run_rsync(make_upload_argv(str(src), str(cache), ["*.pyc"], None), timeout=30)
    assert again.bytes_sent < 10_000
    assert not (cache / "skip.pyc").exists()
    assert stat.S_ISLNK(os.lstat(cache / "link").st_mode)


def test_run_rsync_permanent_failure_raises_with_stderr(tmp_path: Path) -> None:
    with pytest.raises(HostError) as info:
        run_rsync(make_pull_argv(str(tmp_path / "nope"), str(tmp_path / "d"), None), timeout=30)
    assert not info.value.transient
    assert "exit 23" in str(info.value) and "nope" in str(info.value)


def _fake_ssh(tmp_path: Path, stderr: str, counter: Path) -> list[str]:
    """A real executable standing in for ssh: counts calls, prints stderr, exits 255."""
    script = tmp_path / "fake-ssh"
    script.write_text(
        f"#!/bin/sh\necho x >> '{counter}'\nprintf '%s\\n' '{stderr}' >&2\nexit 255\n"
    )
    script.chmod(0o755)
    return [str(script)]


def test_run_rsync_retries_transient_ssh_failure(tmp_path: Path) -> None:
    assert shutil.which("rsync"), "rsync must be installed"
    counter = tmp_path / "calls"
    rsh = _fake_ssh(tmp_path, "ssh: connect to host h port 22: Connection refused", counter)
    (tmp_path / "bin").mkdir()
    argv = make_upload_argv(str(tmp_path / "bin"), "u@h:/c", [], rsh)
    with pytest.raises(HostError) as info:
        run_rsync(argv, timeout=30, attempts=3, backoff=0.01)
    assert info.value.transient and not isinstance(info.value, HostKeyError)
    assert "Connection refused" in str(info.value)
    assert len(counter.read_text().splitlines()) == 3


def test_run_rsync_host_key_failure_is_not_retried(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    rsh = _fake_ssh(tmp_path, "Host key verification failed.", counter)
    (tmp_path / "bin").mkdir()
    argv = make_upload_argv(str(tmp_path / "bin"), "u@h:/c", [], rsh)
    with pytest.raises(HostKeyError):
        run_rsync(argv, timeout=30, attempts=3, backoff=0.01)
    assert len(counter.read_text().splitlines()) == 1


def test_run_rsync_missing_program() -> None:
    with pytest.raises(HostError):
        run_rsync(["/nonexistent/rsync", "a", "b"], timeout=5)


def test_same_size_edit_within_the_same_second_is_sent(tmp_path: Path) -> None:
    src, cache = tmp_path / "bin", tmp_path / "cache"
    src.mkdir()
    for _ in range(5):
        (src / "f.py").write_text("x = 1\n")
        run_rsync(make_upload_argv(str(src), str(cache), [], None), timeout=30)
        (src / "f.py").write_text("x = 2\n")
        os.utime(src / "f.py", ns=(0, (src / "f.py").stat().st_mtime_ns // 10**9 * 10**9 + 1))
        run_rsync(make_upload_argv(str(src), str(cache), [], None), timeout=30)
        assert (cache / "f.py").read_text() == "x = 2\n"


def test_run_rsync_gives_up_at_once_when_the_server_has_no_rsync(tmp_path: Path) -> None:
    """A real remote shell (sh) without rsync on its PATH: one attempt, a permanent error."""
    counter = tmp_path / "calls"
    shell = tmp_path / "remote-shell"
    # Stands in for ssh: drops the host and runs the remote command with sh, as sshd does.
    shell.write_text(
        f"#!/bin/sh\necho x >> '{counter}'\nshift\nPATH=/nonexistent exec /bin/sh -c \"$*\"\n"
    )
    shell.chmod(0o755)
    (tmp_path / "bin").mkdir()
    argv = make_upload_argv(str(tmp_path / "bin"), "h:/c", [], [str(shell)])
    with pytest.raises(HostError) as info:
        run_rsync(argv, timeout=30, attempts=3, backoff=0.01)
    assert not info.value.transient
    assert "not found" in str(info.value) and "refused" in str(info.value)
    assert len(counter.read_text().splitlines()) == 1


def test_run_rsync_that_hangs_is_killed_at_its_time_limit(tmp_path: Path) -> None:
    # A remote shell that never answers: rsync waits for it until the agent's limit.
    pid_file = tmp_path / "shell.pid"
    script = tmp_path / "hanging-ssh"
    script.write_text(f"#!/bin/sh\necho $$ > '{pid_file}'\nexec sleep 60\n")
    script.chmod(0o755)
    (tmp_path / "bin").mkdir()
    argv = make_upload_argv(str(tmp_path / "bin"), "u@h:/c", [], [str(script)])
    try:
        with pytest.raises(HostError, match=r"did not finish within 0\.5 s") as info:
            run_rsync(argv, timeout=0.5, attempts=1)
        assert info.value.transient
    finally:
        if pid_file.exists():  # rsync is killed; its remote shell is ours to stop
            os.kill(int(pid_file.read_text()), 9)
