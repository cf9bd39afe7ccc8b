"""SshTransport against a real sshd: commands, quoting, host keys, deadlines, reconnects, rsync."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from testbed_netns import NetnsHost

from agent.hosts.base import HostError, HostKeyError
from agent.hosts.kinds.ssh import SshConfig
from agent.hosts.ssh import SshTransport
from agent.hosts.sshargs import (
    MAX_SOCKET_PATH,
    make_control_dir,
    make_remote_command,
    make_rsync_target,
    make_ssh_argv,
    with_ssh_defaults,
)

from testbed import SshServer, keygen, require_tool


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The agent's state dir; pytest's paths are long, so ssh sockets go to /tmp: clean up."""
    yield tmp_path / "state"
    control_dir = make_control_dir(tmp_path / "state", os.geteuid())
    if control_dir.parent == Path("/tmp") and control_dir.exists():
        shutil.rmtree(control_dir)


@pytest.fixture
def transport(sshd_server: SshServer, state_dir: Path) -> Iterator[SshTransport]:
    t = SshTransport(sshd_server.host_config(), state_dir)
    yield t
    t.close()


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    """Yield a 127.0.0.1 TCP port that is bound (no one else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# --- pure functions -------------------------------------------------------------------


def test_make_ssh_argv_is_batch_strict_and_multiplexed() -> None:
    config = SshConfig(
        name="gpu",
        kind="ssh",
        address="10.0.0.5",
        port=2222,
        user="trainer",
        key=Path("/var/lib/droprun/id_ed25519"),
        known_hosts=Path("/var/lib/droprun/known_hosts"),
    )
    assert make_ssh_argv(config, Path("/var/lib/droprun/ssh")) == [
        "ssh",
        "-p",
        "2222",
        "-o",
        "IdentityFile=/var/lib/droprun/id_ed25519",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=/var/lib/droprun/known_hosts",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "ControlMaster=auto",
        "-o",
        "ControlPath=/var/lib/droprun/ssh/cm-%C",
        "-o",
        "ControlPersist=60",
    ]


def test_make_ssh_argv_quotes_spaces_and_escapes_percent() -> None:
    config = SshConfig(
        name="gpu", kind="ssh", address="h", key=Path("/k/50%"), known_hosts=Path("/my dir/kh")
    )
    argv = make_ssh_argv(config, Path("/st ate/ssh"))
    assert "IdentityFile=/k/50%%" in argv
    assert 'UserKnownHostsFile="/my dir/kh"' in argv
    assert 'ControlPath="/st ate/ssh/cm-%C"' in argv


def test_make_ssh_argv_without_known_hosts_trusts_nothing() -> None:
    argv = make_ssh_argv(SshConfig(name="gpu", kind="ssh", address="h"), Path("/s"))
    assert "UserKnownHostsFile=/dev/null" in argv
    assert "StrictHostKeyChecking=yes" in argv


def test_unset_key_and_known_hosts_default_to_the_users_ssh_files(tmp_path: Path) -> None:
    bare = SshConfig(name="gpu", kind="ssh", address="h")
    assert with_ssh_defaults(bare, tmp_path) == replace(
        bare, known_hosts=tmp_path / ".ssh" / "known_hosts"
    )
    (tmp_path / ".ssh").mkdir()
    for name in ("id_rsa", "id_ecdsa"):
        (tmp_path / ".ssh" / name).write_text("")
    assert with_ssh_defaults(bare, tmp_path).key == tmp_path / ".ssh" / "id_ecdsa"
    own = replace(bare, key=Path("/k"), known_hosts=Path("/kh"))
    assert with_ssh_defaults(own, tmp_path) == own


def test_control_dir_stays_under_the_socket_path_limit() -> None:
    assert make_control_dir(Path("/var/lib/droprun"), 0) == Path("/var/lib/droprun/ssh")
    deep = Path("/srv/" + "very-long-directory-name/" * 4)
    short = make_control_dir(deep, 1000)
    assert short.parent == Path("/tmp") and short.name.startswith("droprun-1000-")
    assert short == make_control_dir(deep, 1000)  # stable, so the master is found again
    for state in (Path("/var/lib/droprun"), deep, Path("/" + "x" * 45)):
        # what ssh binds while creating the master: "<dir>/cm-<40 hex>.<16 random>"
        socket = f"{make_control_dir(state, 0)}/cm-{'0' * 40}.{'r' * 16}"
        assert len(socket) <= MAX_SOCKET_PATH


def test_rsync_target_brackets_ipv6_only() -> None:
    def cfg(address: str) -> SshConfig:
        return SshConfig(name="h", kind="ssh", address=address, user="u")

    assert make_rsync_target(cfg("10.1.2.3"), "/a/b") == "u@10.1.2.3:/a/b"
    assert make_rsync_target(cfg("fd00::1"), "/a") == "u@[fd00::1]:/a"
    assert make_rsync_target(cfg("gpu.lan"), "x") == "u@gpu.lan:x"


def test_remote_command_is_one_quoted_word_per_arg() -> None:
    assert shlex.split(make_remote_command(["echo", "a b", "$(x)"])) == ["echo", "a b", "$(x)"]
    with pytest.raises(ValueError):
        make_remote_command([])


# --- against the real sshd ---------------------------------------------------------------


def test_run_returns_output_and_exit_codes(transport: SshTransport) -> None:
    ok = transport.run(["echo", "hello"])
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, b"hello\n", b"")
    bad = transport.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (bad.exit_code, bad.stdout, bad.stderr) == (7, b"", b"oops\n")
    assert transport.run(["false"]).exit_code == 1


def test_run_feeds_stdin_and_closes_it(transport: SshTransport) -> None:
    data = bytes(range(256)) * 10
    assert transport.run(["cat"], stdin=data).stdout == data
    assert transport.run(["cat"]).stdout == b""  # no stdin: EOF at once, no hang


def test_large_output_and_input_do_not_deadlock(transport: SshTransport) -> None:
    big = b"0123456789abcdef" * (1 << 18)  # 4 MiB, more than paramiko's window
    echoed = transport.run(["cat"], stdin=big, timeout=60)
    assert echoed.stdout == big
    both = transport.run(
        ["sh", "-c", "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"], timeout=60
    )
    assert (len(both.stdout), len(both.stderr)) == (3_000_000, 3_000_000)


def test_hostile_words_arrive_exactly(transport: SshTransport, sshd_server: SshServer) -> None:
    canary = Path(sshd_server.base) / "PWNED"
    words = [
        "plain",
        "two words",
        "",
        "'single'",
        '"double"',
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        "line1\nline2",
        "tab\there",
        "back\\slash",
        "*",
        "~",
        "$HOME",
        "-n",
        "ünïcødé",
    ]
    result = transport.run(["printf", "%s\\0", *words])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.decode().split("\0")[:-1] == words
    assert not canary.exists()


def test_a_nul_byte_is_a_permanent_error(transport: SshTransport) -> None:
    with pytest.raises(HostError, match="NUL") as info:
        transport.run(["echo", "a\0b"])
    assert not info.value.transient


def test_home_is_the_login_users_and_cached(
    transport: SshTransport, sshd_server: SshServer
) -> None:
    assert transport.home() == str(sshd_server.home)
    assert transport.home() == str(sshd_server.home)


def test_concurrent_commands_share_one_transport(transport: SshTransport) -> None:
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = transport.run(["echo", str(i)]).stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: f"{i}\n".encode() for i in range(8)}


def test_unknown_host_key_raises_host_key_error(sshd_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = SshTransport(sshd_server.host_config(known_hosts=empty), tmp_path)
    for _ in range(2):  # and stays that way: nothing is learned or accepted
        with pytest.raises(HostKeyError, match="UNKNOWN host key") as info:
            t.run(["true"])
        assert not info.value.transient
    assert empty.read_text() == ""


def test_changed_host_key_raises_host_key_error(sshd_server: SshServer, tmp_path: Path) -> None:
    other = sshd_server.write_known_hosts(tmp_path / "kh", keygen(tmp_path / "impostor"))
    t = SshTransport(sshd_server.host_config(known_hosts=other), tmp_path)
    with pytest.raises(HostKeyError, match="host key CHANGED") as info:
        t.run(["true"])
    assert not info.value.transient


def test_refused_key_is_a_permanent_error(sshd_server: SshServer, tmp_path: Path) -> None:
    keygen(tmp_path / "stranger")
    t = SshTransport(sshd_server.host_config(key=tmp_path / "stranger"), tmp_path)
    with pytest.raises(HostError, match="refused") as info:
        t.run(["true"])
    assert not info.value.transient


def test_missing_key_file_is_a_permanent_error(sshd_server: SshServer, tmp_path: Path) -> None:
    t = SshTransport(sshd_server.host_config(key=tmp_path / "nope"), tmp_path)
    with pytest.raises(HostError, match="cannot use key") as info:
        t.run(["true"])
    assert not info.value.transient


def test_nothing_listening_is_a_transient_error(sshd_server: SshServer, tmp_path: Path) -> None:
    with socket_bound() as port:  # a port we hold but do not listen on
        t = SshTransport(sshd_server.host_config(port=port), tmp_path)
        with pytest.raises(HostError, match="cannot connect") as info:
            t.run(["true"])
    assert info.value.transient


def test_deadline_drops_the_connection_and_next_call_reconnects(transport: SshTransport) -> None:
    assert transport.run(["true"]).exit_code == 0
    with pytest.raises(HostError, match="did not finish within 1 s") as info:
        transport.run(["sleep", "30"], timeout=1)
    assert info.value.transient
    assert transport.run(["echo", "back"]).stdout == b"back\n"


def test_server_side_drop_reconnects(transport: SshTransport, sshd_server: SshServer) -> None:
    assert transport.run(["true"]).exit_code == 0
    assert sshd_server.kill_sessions() >= 1
    assert transport.run(["echo", "again"]).stdout == b"again\n"


def test_drop_during_a_command_is_transient(
    transport: SshTransport, sshd_server: SshServer
) -> None:
    assert transport.run(["true"]).exit_code == 0
    killer = threading.Timer(0.5, sshd_server.kill_sessions)
    killer.start()
    try:
        with pytest.raises(HostError) as info:
            transport.run(["sleep", "30"], timeout=30)
    finally:
        killer.join()
    assert info.value.transient
    assert transport.run(["echo", "again"]).stdout == b"again\n"


def test_rsync_over_rsync_shell_copies_a_dir(
    transport: SshTransport, sshd_server: SshServer, tmp_path: Path, state_dir: Path
) -> None:
    src = tmp_path / "bin"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_text("echo train\n")
    (src / "sub" / "data with space.bin").write_bytes(b"\x00\x01" * 5000)
    dest = f"{sshd_server.remote_root}/proj/cache/"
    assert transport.run(["mkdir", "-p", dest]).exit_code == 0
    rsync = require_tool("rsync")
    argv = [rsync, "-a", "-e", shlex.join(transport.rsync_shell()), f"{src}/"]
    for _ in range(2):  # the second run goes through the control master
        done = subprocess.run(
            [*argv, transport.rsync_target(dest)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    landed = Path(dest)
    assert (landed / "run.sh").read_text() == "echo train\n"
    assert (landed / "sub" / "data with space.bin").read_bytes() == b"\x00\x01" * 5000
    control_dir = make_control_dir(state_dir, os.geteuid())
    assert list(control_dir.iterdir()), "no control master socket"
    assert oct(control_dir.stat().st_mode & 0o777) == "0o700"
    transport.close()
    deadline = time.monotonic() + 30
    while list(control_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(control_dir.iterdir()), "control master still running after close()"


def test_rsync_shell_refuses_an_unknown_host(
    sshd_server: SshServer, tmp_path: Path, state_dir: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = SshTransport(sshd_server.host_config(known_hosts=empty), state_dir)
    done = subprocess.run(
        [*t.rsync_shell(), sshd_server.destination, "true"], capture_output=True, text=True
    )
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr


def test_cut_link_hits_the_deadline_then_recovers(netns_host: NetnsHost, tmp_path: Path) -> None:
    t = SshTransport(netns_host.host_config(), tmp_path)
    try:
        assert t.run(["echo", "up"]).stdout == b"up\n"
        netns_host.cut()
        with pytest.raises(HostError) as info:
            t.run(["echo", "lost"], timeout=2)
        assert info.value.transient
        netns_host.restore()
        deadline = time.monotonic() + 30
        while True:  # the first connect right after restoring may fail once
            try:
                assert t.run(["echo", "back"], timeout=10).stdout == b"back\n"
                break
            except HostError as e:
                if not e.transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        t.close()
