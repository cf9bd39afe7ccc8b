"""ssh hosts through the whole agent: host keys, reachability, waking, power, GPU names."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.hosts.base import RunRef
from agent.hosts.session import MAX_OPEN
from agent.hosts.shell import ShellHost
from agent.hosts.ssh import SshStream, SshTransport
from agent.service import make_context, serve

from shares import drop, info, make_project, run_once, wait_for, write_ssh_config
from testbed import (
    SshServer,
    free_port,
    in_threads,
    keygen,
    kill_sshd_sessions,
    known_hosts_name,
    require_tool,
    stop_process,
    wait_listening,
)

DEADLINE = 60.0
MAC = "0a:1b:2c:3d:4e:5f"
# Waits for a "go" file (at most a minute, so a broken test cannot hang) so that a test
# can act while the run is surely running.
WAIT_FOR_GO = """#!/bin/sh
mkdir -p output
echo started
i=0
while [ ! -f go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
"""


@contextlib.contextmanager
def extra_sshd(
    server: SshServer,
    port: int,
    *,
    host_key: Path | None = None,
    config_extra: str = "",
    max_sessions: int | None = None,
) -> Iterator[Path]:
    """Run a second sshd like ``server`` (same user, user key) on ``port``; yield its log.

    ``host_key`` replaces the server's host key; ``config_extra`` is appended to the config;
    ``max_sessions`` replaces the test bed's generous MaxSessions (sshd's default is 10).
    """
    work = server.tmp / f"extra-{secrets.token_hex(4)}"
    work.mkdir()
    text = (server.tmp / "sshd_config").read_text()
    text = text.replace(f"PidFile {server.tmp}/sshd.pid", f"PidFile {work}/sshd.pid")
    if max_sessions is not None:
        assert "MaxSessions 100\n" in text
        text = text.replace("MaxSessions 100\n", f"MaxSessions {max_sessions}\n")
    if host_key is not None:
        text = text.replace(f"HostKey {server.tmp}/host_key", f"HostKey {host_key}")
    (work / "sshd_config").write_text(text + config_extra)
    log = work / "sshd.log"
    argv = [require_tool("sshd"), "-D", "-e", "-f", str(work / "sshd_config"), "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_listening(proc, server.address, port, log, "extra sshd")
        yield log
    finally:
        # Stopped first, so that no session is forked between killing the sessions and
        # the listener's exit (such a session would keep serving the old connection).
        os.kill(proc.pid, signal.SIGSTOP)
        kill_sshd_sessions(proc.pid)
        proc.send_signal(signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc)


def known_hosts_for(path: Path, server: SshServer, port: int) -> Path:
    """Write a known_hosts file naming ``server``'s real host key on ``port``."""
    path.write_text(f"{known_hosts_name(server.address, port)} {server.host_public_key}\n")
    return path


def ssh_attempts(log_text: str) -> set[str]:
    """Return the client ports of the ssh logins that sshd's log shows, failed or not.

    A bare TCP probe (the fixture's readiness check) never gets to ``[preauth]``.
    """
    pattern = r"port (\d+)(?: \[preauth\]| ssh2)"
    return set(re.findall(pattern, log_text))


def states(project: Path, run: int = 0) -> list[str]:
    """Return the states of a run's history, in order."""
    return [h["state"] for h in info(project, run).history]


@pytest.mark.parametrize("case", ["changed", "unknown"])
def test_wrong_host_key_is_an_error_at_once(root: Path, sshd_server: SshServer, case: str) -> None:
    if case == "changed":
        other = keygen(root / "other_host_key")
        known_hosts = sshd_server.write_known_hosts(root / "known_hosts", other)
    else:
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:1 {sshd_server.host_public_key}\n")
    config = write_ssh_config(
        root, sshd_server, known_hosts=known_hosts, host_extra='wake_timeout = "10m"'
    )
    project = make_project(root / "share", "proj", {"run.sh": "#!/bin/sh\necho hi\n"})
    log = sshd_server.tmp / "sshd.log"
    before = log.read_text()
    drop(project, "")
    run_once(config)  # would take 10 minutes if it waited for the host

    result = info(project)
    assert result.state == runinfo.ERROR
    reason = result.reason or ""
    assert "host key" in reason and case.upper() in reason and "gpu" in reason, reason
    assert "waking" not in states(project)
    attempts = ssh_attempts(log.read_text()[len(before) :])
    assert len(attempts) == 1, log.read_text()
    assert known_hosts.read_text().count("\n") == 1  # nothing was added


def test_unreachable_port_is_an_error_after_wake_timeout(
    root: Path, sshd_server: SshServer
) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = int(bound.getsockname()[1])
        config = write_ssh_config(root, sshd_server, port=port, host_extra='wake_timeout = "2s"')
        project = make_project(root / "share", "proj", {"run.sh": "#!/bin/sh\necho hi\n"})
        drop(project, "")
        run_once(config)

    result = info(project)
    assert result.state == runinfo.ERROR
    assert states(project) == ["accepted", "queued", "waking", "error"]
    reason = result.reason or ""
    assert "gpu" in reason and "wake_timeout" in reason and str(port) in reason, reason


def test_wake_on_lan_then_the_server_comes_up_late(root: Path, sshd_server: SshServer) -> None:
    port = free_port()
    known_hosts = known_hosts_for(root / "known_hosts", sshd_server, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(DEADLINE)
        wake_port = int(listener.getsockname()[1])
        config = write_ssh_config(
            root,
            sshd_server,
            port=port,
            known_hosts=known_hosts,
            host_extra=(
                f'wake_mac = "{MAC}"\nwake_broadcast = "127.0.0.1"\nwake_port = {wake_port}\n'
                'wake_timeout = "1m"\n'
            ),
        )
        project = make_project(root / "share", "proj", {"run.sh": "#!/bin/sh\necho awake\n"})
        packets: list[bytes] = []
        with contextlib.ExitStack() as stack:

            def power_on_when_woken() -> None:
                packets.append(listener.recv(1024))
                stack.enter_context(extra_sshd(sshd_server, port))

            waker = threading.Thread(target=power_on_when_woken, daemon=True)
            waker.start()
            drop(project, "")
            run_once(config)
            waker.join(timeout=DEADLINE)

    assert packets[0] == bytes.fromhex("ff" * 6 + "0a1b2c3d4e5f" * 16)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert states(project)[:4] == ["accepted", "queued", "waking", "uploading"]
    assert "awake" in (project / "results" / "run_0" / "log.log").read_text()


def test_changed_host_key_mid_run_is_never_accepted(root: Path, sshd_server: SshServer) -> None:
    port = free_port()
    known_hosts = known_hosts_for(root / "known_hosts", sshd_server, port)
    config = write_ssh_config(root, sshd_server, port=port, known_hosts=known_hosts)
    project = make_project(root / "share", "proj", {"run.sh": WAIT_FOR_GO})
    run_dir = project / "results" / "run_0"
    impostor_key = root / "impostor_key"
    keygen(impostor_key)
    known_before = known_hosts.read_text()

    with contextlib.ExitStack() as stack:
        stack.enter_context(extra_sshd(sshd_server, port))

        def swap_server_when_running() -> None:
            log = run_dir / "log.log"
            wait_for("the run to start", lambda: log.exists() and "started" in log.read_text())
            stack.close()  # the real server and every session go away ...
            stack.enter_context(extra_sshd(sshd_server, port, host_key=impostor_key))

        swapper = threading.Thread(target=swap_server_when_running, daemon=True)
        swapper.start()
        drop(project, "")
        run_once(config)
        swapper.join(timeout=DEADLINE)

    result = info(project)
    assert result.state == runinfo.ERROR
    assert "host key CHANGED" in (result.reason or ""), result.reason
    assert known_hosts.read_text() == known_before


def test_power_off_once_per_idle_period(root: Path, sshd_server: SshServer) -> None:
    marks = sshd_server.base / "power.log"
    config = write_ssh_config(
        root,
        sshd_server,
        host_extra=(
            "shutdown_after = 1\n"
            f"shutdown_command = \"echo off >> '{marks}'\"\n"
            f"cancel_shutdown_command = \"echo cancel >> '{marks}'\"\n"
        ),
    )
    project = make_project(root / "share", "proj", {"run.sh": "#!/bin/sh\necho hi\n"})
    ctx = make_context(load_agent_config(config), logging.getLogger("droprun.test"))
    agent = threading.Thread(target=serve, args=(ctx,), kwargs={"once": False}, daemon=True)
    agent.start()
    try:
        wait_for("the first power-off", lambda: marks.exists() and marks.read_text() == "off\n")
        time.sleep(2.0)  # four more ticks of an idle agent: no second power-off
        assert marks.read_text() == "off\n"
        drop(project, "")
        done = project / "results" / "run_0" / "run.info"
        wait_for("the run", lambda: done.exists() and info(project).terminal)
        assert info(project).state == runinfo.SUCCEEDED
        wait_for("the second power-off", lambda: marks.read_text() == "off\ncancel\noff\n")
        time.sleep(2.0)
        assert marks.read_text() == "off\ncancel\noff\n"
    finally:
        ctx.stop.set()
        agent.join(timeout=DEADLINE)
    assert not agent.is_alive()


def test_idle_for_is_cheap_below_the_threshold_and_fires_once(
    root: Path, sshd_server: SshServer
) -> None:
    marks = sshd_server.base / "power.log"
    config = sshd_server.host_config(shutdown_after=60, shutdown_command=f"echo off >> '{marks}'")
    host = ShellHost(config, SshTransport(config, root / "state"))
    try:
        for seconds in (1.0, 30.0, 59.9):
            host.idle_for(seconds)
        assert host.transport._client is None  # type: ignore[attr-defined]  # never connected
        for seconds in (60.0, 61.0, 500.0, 10_000.0):
            host.idle_for(seconds)
        assert marks.read_text() == "off\n"
        host.idle_for(0.5)  # a run came and went: a new idle period
        host.idle_for(60.0)
        host.idle_for(61.0)
        assert marks.read_text() == "off\noff\n"
    finally:
        host.close()


FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for nvidia-smi: answers --query-gpu=name, honours -i.
names="NVIDIA A100-SXM4-80GB
NVIDIA GeForce RTX 4090"
ids=
while [ $# -gt 0 ]; do [ "$1" = -i ] && ids=$2; shift; done
[ -z "$ids" ] && { echo "$names"; exit 0; }
for i in $(echo "$ids" | tr , ' '); do echo "$names" | sed -n "$((i + 1))p"; done
"""


def test_gpu_names_and_cuda_devices_of_the_slot(root: Path, sshd_server: SshServer) -> None:
    tools = sshd_server.base / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tools / "nvidia-smi").chmod(0o755)
    port = free_port()
    known_hosts = known_hosts_for(root / "known_hosts", sshd_server, port)
    config = write_ssh_config(
        root, sshd_server, port=port, known_hosts=known_hosts, host_extra='gpus = ["1"]'
    )
    project = make_project(
        root / "share", "proj", {"run.sh": '#!/bin/sh\necho "cuda=$CUDA_VISIBLE_DEVICES"\n'}
    )
    drop(project, "")
    # The server's PATH has the fake nvidia-smi, as a real GPU server's PATH has the real one.
    with extra_sshd(sshd_server, port, config_extra=f"SetEnv PATH={tools}:/usr/bin:/bin\n"):
        run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert result.gpu_names == ["NVIDIA GeForce RTX 4090"]
    assert "cuda=1" in (project / "results" / "run_0" / "log.log").read_text()


def test_no_nvidia_smi_means_no_gpu_names(root: Path, sshd_server: SshServer) -> None:
    host = ShellHost(sshd_server.host_config(), SshTransport(sshd_server.host_config(), root))
    try:
        assert host.gpu_names() is None
        assert host.gpu_names("0") is None
        assert host.remote_dir(RunRef("p", 1, "id1")).endswith("/p/run_1")
    finally:
        host.close()


def test_helper_sessions_stay_within_sshds_default_of_ten_channels(
    root: Path, sshd_server: SshServer
) -> None:
    """However many threads ask at once, a host's helper sessions stay within the bound,
    below the ten channels a default sshd allows on one connection; and a session whose
    shell died on the server is replaced over the same connection."""
    started: list[SshStream] = []

    class CountingSsh(SshTransport):
        def start(self, argv: Sequence[str]) -> SshStream:
            stream = super().start(argv)
            started.append(stream)
            return stream

    port = free_port()
    config = sshd_server.host_config(
        port=port, known_hosts=known_hosts_for(root / "known_hosts", sshd_server, port)
    )
    with extra_sshd(sshd_server, port, max_sessions=10):
        host = ShellHost(config, CountingSsh(config, root))

        def ask(n: int) -> None:
            for i in range(5):
                out = host._helper("power", f"sleep 0.05; printf %s t{n}-{i}")
                assert out.stdout == f"t{n}-{i}".encode()

        errors = in_threads(ask, 12)
        assert not errors, errors[:3]
        assert 1 <= len(started) <= MAX_OPEN
        # The serve shell's pid, as its verb sees it: the parent of the verb's subshell.
        out = host._helper("power", 'read -r line </proc/$PPID/stat; set -- $line; echo "$4"')
        os.kill(int(out.stdout), signal.SIGKILL)  # the server is this machine: by its pid
        opened = len(started)
        assert host._helper("home").stdout.strip()  # the dead one (the last idle), then anew
        assert len(started) == opened + 1
        host.close()
