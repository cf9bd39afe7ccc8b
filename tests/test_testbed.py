"""The test bed's fixtures start real servers that real clients can use."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from testbed_netns import NetnsHost
from testbed_smb import SmbServer

from testbed import SshServer, TestUser, is_running, keygen, running_sshd


def ssh(
    server: SshServer, *command: str, connect_timeout: int = 5
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with the system ssh client and the fixture's options."""
    argv = server.ssh_argv()
    # ssh takes the first value it sees for an option.
    argv[1:1] = ["-o", f"ConnectTimeout={connect_timeout}"]
    return subprocess.run(
        [*argv, server.destination, *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sshd_runs_echo_as_the_test_user(sshd_server: SshServer) -> None:
    result = ssh(sshd_server, "echo ok; id -un; echo $HOME")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", sshd_server.user, str(sshd_server.home)]


def test_sshd_host_config_points_at_a_writable_base(sshd_server: SshServer) -> None:
    config = sshd_server.host_config("gpu1", slots=2)
    assert (config.name, config.kind, config.slots) == ("gpu1", "ssh", 2)
    assert (config.address, config.port, config.user) == (
        "127.0.0.1",
        sshd_server.port,
        "droprun-test",
    )
    assert config.remote_root.startswith(str(sshd_server.base))
    result = ssh(sshd_server, f"mkdir -p {config.remote_root} && echo hi > {config.remote_root}/f")
    assert result.returncode == 0, result.stderr
    assert (Path(config.remote_root) / "f").read_text() == "hi\n"


def test_sshd_rejects_a_key_the_known_hosts_does_not_hold(
    sshd_server: SshServer, tmp_path: Path
) -> None:
    sshd_server.write_known_hosts(tmp_path / "kh", keygen(tmp_path / "other_key"))
    argv = [
        a.replace(str(sshd_server.known_hosts), str(tmp_path / "kh"))
        for a in sshd_server.ssh_argv()
    ]
    result = subprocess.run(
        [*argv, sshd_server.destination, "true"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_sshd_kill_sessions_drops_a_live_connection(sshd_server: SshServer) -> None:
    proc = subprocess.Popen(
        [*sshd_server.ssh_argv(), sshd_server.destination, "echo started; sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        assert sshd_server.kill_sessions() >= 1
        assert proc.wait(timeout=30) == 255
    finally:
        proc.kill()
        proc.wait()


def test_smbclient_put_lands_in_the_share(smbd_server: SmbServer, tmp_path: Path) -> None:
    local = tmp_path / "run.request"
    local.write_text('host = "local"\n')
    smbd_server.mkdir("proj")
    smbd_server.put(local, "proj/run.request")
    landed = smbd_server.share / "proj" / "run.request"
    assert landed.read_text() == 'host = "local"\n'
    assert landed.stat().st_uid != 0  # written by the smb user, not root


def test_smbclient_put_slowly_shows_the_file_before_it_is_complete(
    smbd_server: SmbServer, tmp_path: Path
) -> None:
    local = tmp_path / "big"
    local.write_bytes(os.urandom(3 << 20))
    target = smbd_server.share / "big"
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            smbd_server.put_slowly(local, "big", chunk=1 << 20, pause=1.0)
        except BaseException as e:  # pytest.fail raises a BaseException; report it below
            errors.append(e)

    uploader = threading.Thread(target=upload)
    uploader.start()
    seen_partial = False
    deadline = time.monotonic() + 30
    while uploader.is_alive() and time.monotonic() < deadline and not seen_partial:
        seen_partial = target.exists() and target.stat().st_size < local.stat().st_size
        time.sleep(0.01)
    uploader.join(timeout=60)
    assert not errors, errors
    assert seen_partial, "the file never showed up incomplete"
    assert target.read_bytes() == local.read_bytes()


def test_netns_sshd_answers_and_cut_breaks_connections(netns_host: NetnsHost) -> None:
    server = netns_host.ssh
    assert server.address == netns_host.address and server.port == 22
    result = ssh(server, "echo ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    netns_host.cut()
    result = ssh(server, "echo ok", connect_timeout=1)
    assert result.returncode == 255
    netns_host.restore()
    deadline = time.monotonic() + 30
    while (result := ssh(server, "echo ok")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # the first connect after restoring may fail once
    assert result.stdout == "ok\n", result.stderr


def test_sshd_teardown_stops_jobs_left_running_in_base(test_user: TestUser) -> None:
    with running_sshd(test_user, "127.0.0.1") as server:
        base = server.base
        result = ssh(
            server,
            f"cd {base} && {{ setsid nohup sleep 300 >/dev/null 2>&1 </dev/null & }}; echo $!",
        )
        assert result.returncode == 0, result.stderr
        pid = int(result.stdout)
        assert is_running(pid)
    assert not is_running(pid)
    assert not base.exists()
