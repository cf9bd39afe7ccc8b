"""ShellHost over LocalTransport: real rsync, real detached processes, real files."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.hosts import power
from agent.hosts.base import HostError, LaunchSpec, ProcStatus, RunRef
from agent.hosts.kinds import HostEnv, open_host
from agent.hosts.local import LocalTransport
from agent.hosts.session import Session
from agent.hosts.shell import ShellHost
from agent.hosts.transport import CommandResult
from agent.outputs import mirror
from agent.runinfo import new_run_id
from agent.schema import HostConfig

from testbed import busybox_userland

PR_SET_CHILD_SUBREAPER = 36
DEADLINE = 30.0


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Adopt orphaned launchers so their zombies can be reaped (PID 1 here may not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap_group(pgid: int) -> None:
    """Collect the exited processes of group ``pgid`` that were adopted by this process."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _poll(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(params=["gnu", "busybox"])
def tools(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with this machine's GNU tools, then again with BusyBox's only (a NAS)."""
    if request.param == "busybox":
        monkeypatch.setenv("PATH", str(busybox_userland(tmp_path / "busybox")))
    for tool in ("rsync", "setsid", "find", "python3"):
        assert shutil.which(tool), f"{tool} must be installed for this test"
    return str(request.param)


@pytest.fixture
def host(tmp_path: Path, tools: str) -> Iterator[ShellHost]:
    config = HostConfig(name="local", remote_root=str(tmp_path / "remote"))
    shell_host = ShellHost(config, LocalTransport())
    yield shell_host
    shell_host.close()


def ref_of(project: str, run: int) -> RunRef:
    """Return a RunRef with a fresh run id: processes are found by their run's id, so two
    tests (or two test sessions on one machine) must never share one."""
    return RunRef(project, run, f"{new_run_id()}-{run}")


def _bin(tmp_path: Path, run_sh: str, extra: dict[str, str] | None = None) -> Path:
    bin_dir = tmp_path / "share" / "proj" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "run.sh").write_text(run_sh)
    (bin_dir / "run.sh").chmod(0o755)
    for name, text in (extra or {}).items():
        (bin_dir / name).write_text(text)
    return bin_dir


def _start(host: ShellHost, tmp_path: Path, run_sh: str, spec: LaunchSpec | None = None) -> RunRef:
    ref = ref_of("proj", 0)
    host.upload(ref, _bin(tmp_path, run_sh), [])
    host.launch(ref, spec or LaunchSpec("run.sh"))
    return ref


def _wait_exit(host: ShellHost, ref: RunRef) -> ProcStatus:
    result: list[ProcStatus] = []

    def done() -> bool:
        result[:] = [host.status(ref)]
        return result[0].state in ("exited", "vanished")

    _poll("the run to end", done)
    return result[0]


def test_open_host_and_layout(tmp_path: Path) -> None:
    local = open_host(HostConfig(name="local", remote_root="~/dr"), HostEnv(tmp_path))
    assert local.reachable()
    assert local.remote_dir(ref_of("my proj", 4)) == os.path.expanduser("~/dr/my proj/run_4")
    local.close()


def test_an_answer_holds_until_the_agent_powers_the_host_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(power, "ANSWER_HOLDS", 3600.0)  # no clock in a test: "just" is now
    asked: list[str] = []

    class Recording(LocalTransport):
        def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
            asked.append(argv[4] if list(argv[:2]) == ["sh", "-c"] else argv[0])
            return super().run(argv, **kwargs)

    real_call = Session.call

    def recording_call(self: Session, words: Sequence[str], timeout: float) -> CommandResult:
        asked.append(words[0])
        return real_call(self, words, timeout)

    monkeypatch.setattr(Session, "call", recording_call)

    config = HostConfig(
        name="local", remote_root=str(tmp_path / "r"), shutdown_after=5, shutdown_command="true"
    )
    host = ShellHost(config, Recording())
    assert host.reachable() and host.reachable()
    assert asked == ["true"]
    host.idle_for(10.0)  # the agent powers it off ("true" here): now it is asked again
    assert host.reachable()
    assert asked == ["true", "power", "true"]


def test_a_host_without_rsync_is_told_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = ShellHost(HostConfig(name="local", remote_root=str(tmp_path / "r")), LocalTransport())
    host._local_rsync.version()  # the agent's own rsync, asked while PATH has it
    only_sh = tmp_path / "only-sh"
    only_sh.mkdir()
    (only_sh / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    monkeypatch.setenv("PATH", str(only_sh))  # the host's helper session starts without it
    with pytest.raises(HostError, match="local: rsync is not installed on the host") as info:
        host.rsync_versions()
    assert not info.value.transient
    host.close()


def test_upload_is_a_delta_into_the_cache(host: ShellHost, tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, "#!/bin/sh\n", {"small.py": "x = 1\n", "skip.pyc": "junk"})
    for i in range(3):
        (bin_dir / f"weights{i}.bin").write_bytes(os.urandom(1_000_000))
    (bin_dir / "link").symlink_to("small.py")
    ref0, ref1 = ref_of("proj", 0), ref_of("proj", 1)
    first = host.upload(ref0, bin_dir, ["*.pyc"]).bytes_sent
    assert first > 3_000_000
    (bin_dir / "small.py").write_text("x = 2\n")
    second = host.upload(ref1, bin_dir, ["*.pyc"]).bytes_sent
    assert second < first / 100
    run0, run1 = Path(host.remote_dir(ref0)), Path(host.remote_dir(ref1))
    assert (run0 / "small.py").read_text() == "x = 1\n"
    assert (run1 / "small.py").read_text() == "x = 2\n"
    assert os.readlink(run1 / "link") == "small.py"
    assert not (run1 / "skip.pyc").exists()
    cache = Path(host.cache_dir("proj"))
    assert (cache / "weights0.bin").stat().st_ino == (run1 / "weights0.bin").stat().st_ino
    # Uploading again for an existing run dir leaves it alone.
    (bin_dir / "small.py").write_text("x = 3\n")
    host.upload(ref1, bin_dir, ["*.pyc"])
    assert (run1 / "small.py").read_text() == "x = 2\n"


@pytest.mark.parametrize("code", [0, 3])
def test_launch_and_exit_status(host: ShellHost, tmp_path: Path, code: int) -> None:
    ref = ref_of("proj", 0)
    host.upload(ref, _bin(tmp_path, '#!/bin/sh\necho "argv: $*"\nexit "$CODE"\n'), [])
    assert host.status(ref) == ProcStatus("not_started")
    pid = host.launch(ref, LaunchSpec("run.sh", args=["a b"], env={"CODE": str(code)})).pid
    status = _wait_exit(host, ref)
    assert (status.state, status.pid, status.exit_code, status.timed_out) == (
        "exited",
        pid,
        code,
        False,
    )
    assert status.end_epoch is not None
    assert host.read_log(ref, 0) == b"argv: a b\n"
    _reap_group(pid)


def test_launch_twice_starts_once(host: ShellHost, tmp_path: Path) -> None:
    ref = _start(host, tmp_path, "#!/bin/sh\necho x >> launches\nsleep 1\n")
    run_dir = Path(host.remote_dir(ref))
    first = int((run_dir / ".droprun" / "pid").read_text())
    assert host.launch(ref, LaunchSpec("run.sh")).pid == first
    assert host.status(ref).state == "running"
    _wait_exit(host, ref)
    assert host.launch(ref, LaunchSpec("run.sh")).pid == first
    assert host.status(ref).exit_code == 0
    assert (run_dir / "launches").read_text() == "x\n"
    _reap_group(first)


COOPERATIVE = "#!/bin/sh\nsleep 300 &\nsleep 300 &\necho up > up\nwait\n"
STUBBORN = """#!/bin/sh
sh -c "trap '' TERM; sleep 300" &
trap 'echo ignoring TERM' TERM
echo up > up
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize("script", [COOPERATIVE, STUBBORN])
def test_kill_leaves_no_process_of_the_group(host: ShellHost, tmp_path: Path, script: str) -> None:
    """Also a script that ignores TERM ends, and its end is recorded: the launcher is spared
    until the processes it waits for are gone."""
    ref = _start(host, tmp_path, script)
    run_dir = Path(host.remote_dir(ref))
    _poll("the script to start", (run_dir / "up").exists)
    pgid = host.status(ref).pid
    assert pgid is not None and os.getpgid(pgid) == pgid
    host.kill(ref, grace=1.0)
    status = host.status(ref)
    assert status.state == "exited"
    assert status.exit_code is not None and status.exit_code >= 128
    _reap_group(pgid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    host.kill(ref, grace=1.0)  # a second kill is harmless


def test_read_log_with_offsets(host: ShellHost, tmp_path: Path) -> None:
    ref = _start(host, tmp_path, "#!/bin/sh\nprintf 'abcdefghij'\nprintf 'KLMNO' >&2\n")
    pid = _wait_exit(host, ref).pid
    assert host.read_log(ref, 0) == b"abcdefghijKLMNO"
    assert host.read_log(ref, 3, 4) == b"defg"
    assert host.read_log(ref, 10) == b"KLMNO"
    assert host.read_log(ref, 15) == b""
    assert host.read_log(ref, 999) == b""
    assert pid is not None
    _reap_group(pid)


def test_poll_gives_status_and_new_log_bytes(host: ShellHost, tmp_path: Path) -> None:
    """One call per turn of the watch: the status and the log from an offset, at most
    ``limit`` bytes of it; nothing of a run not started yet."""
    ref = ref_of("proj", 0)
    host.upload(
        ref,
        _bin(
            tmp_path,
            "#!/bin/sh\nprintf 'abc'\nwhile [ ! -f go ]; do sleep 0.05; done\nprintf 'defg'\n",
        ),
        [],
    )
    assert host.poll(ref, 0) == (ProcStatus("not_started"), b"")
    pid = host.launch(ref, LaunchSpec("run.sh")).pid
    _poll("the first bytes", lambda: host.read_log(ref, 0) == b"abc")
    status, chunk = host.poll(ref, 1)
    assert (status.state, status.pid, chunk) == ("running", pid, b"bc")
    (Path(host.remote_dir(ref)) / "go").touch()
    _wait_exit(host, ref)
    status, chunk = host.poll(ref, 3, 2)
    assert (status.state, status.exit_code, chunk) == ("exited", 0, b"de")
    assert host.poll(ref, 7)[1] == b""
    assert pid is not None
    _reap_group(pid)


@pytest.mark.parametrize("script", [COOPERATIVE, "#!/bin/sh\nsleep 300 &\necho up > up\n"])
def test_stop_kills_what_is_left_and_says_how_it_ended(
    host: ShellHost, tmp_path: Path, script: str
) -> None:
    """The finish phase's one call: a running script is killed (its end recorded), and
    the background job of a script that exited is killed too; then the log."""
    ref = _start(host, tmp_path, script)
    run_dir = Path(host.remote_dir(ref))
    _poll("the script to start", (run_dir / "up").exists)
    pgid = host.status(ref).pid
    assert pgid is not None
    if script != COOPERATIVE:
        _wait_exit(host, ref)
    status, chunk = host.stop(ref, 1.0, 0)
    assert status.state == "exited" and chunk == host.read_log(ref, 0)
    assert status.exit_code is not None
    assert status.exit_code >= 128 if script == COOPERATIVE else status.exit_code == 0
    _reap_group(pgid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert host.stop(ref, 1.0, 0)[0] == status  # a second stop is harmless


def test_gpu_names_none_without_nvidia_smi(host: ShellHost) -> None:
    """Asked once per device set; a host without nvidia-smi has none to name."""
    assert host.gpu_names("0") is None
    assert host.gpu_names() is None


WRITER = r"""
import os, sys, time

def content(name):
    return (name.encode() + b":") * 2000

os.makedirs("output/sub", exist_ok=True)
with open("output/rotated.bin", "wb") as f:
    f.write(content("rotated.bin"))
names = ["a.bin", "b.bin", "sub/c.bin", "d.bin"]
for name in names:
    data = content(name)
    with open("output/" + name, "wb") as f:
        for i in range(0, len(data), 1500):
            f.write(data[i : i + 1500])
            f.flush()
            time.sleep(0.03)
    if name == "b.bin":
        time.sleep(1.5)  # rotated.bin is complete and published by now
        os.unlink("output/rotated.bin")
"""


def _expected(name: str) -> bytes:
    return (name.encode() + b":") * 2000


def test_mirror_never_publishes_partial_files(host: ShellHost, tmp_path: Path) -> None:
    ref = ref_of("proj", 0)
    bin_dir = _bin(tmp_path, "#!/bin/sh\nexec python3 writer.py\n", {"writer.py": WRITER})
    host.upload(ref, bin_dir, [])
    dest = tmp_path / "share" / "proj" / "results" / "run_0" / "output"
    dest.parent.mkdir(parents=True)
    assert mirror(host, ref, "output", dest).files_published == 0  # nothing there yet
    pid = host.launch(ref, LaunchSpec("run.sh")).pid
    mirrors = published = 0
    seen_pending = False
    while host.status(ref).state == "running":
        result = mirror(host, ref, "output", dest)
        mirrors += 1
        published += result.files_published
        seen_pending |= result.files_pending > 0
        for path in dest.rglob("*"):
            if path.is_file():
                rel = path.relative_to(dest).as_posix()
                assert path.read_bytes() == _expected(rel), f"partial {rel} published"
        time.sleep(0.05)
    assert host.status(ref).exit_code == 0
    final = mirror(host, ref, "output", dest)
    assert final.files_pending == 0
    assert mirrors > 3 and seen_pending
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert names == ["a.bin", "b.bin", "d.bin", "rotated.bin", "sub/c.bin"]
    for name in names:
        assert (dest / name).read_bytes() == _expected(name)
    assert not [p for p in dest.rglob("*") if "droprun-tmp" in p.name]
    again = mirror(host, ref, "output", dest)
    assert (again.files_published, again.files_pending) == (0, 0)
    _reap_group(pid)


PAUSER = r"""
import os, time
os.makedirs("output", exist_ok=True)
with open("output/model.ckpt", "wb") as f:
    f.write(b"A" * 5000)
    f.flush()
    open("paused", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.02)
    f.write(b"B" * 5000)
with open("output/metrics.csv", "a") as f:
    f.write("1,0.5\n")
"""


def test_a_writer_that_pauses_mid_file_is_not_published_half_written(
    host: ShellHost, tmp_path: Path
) -> None:
    """Around a pause the listings agree; the file is still open for writing, so it waits.

    A file named like a live file is published as it is, complete or not."""
    ref = ref_of("proj", 0)
    host.upload(
        ref, _bin(tmp_path, "#!/bin/sh\nexec python3 pauser.py\n", {"pauser.py": PAUSER}), []
    )
    dest = tmp_path / "share" / "proj" / "results" / "run_0" / "output"
    dest.parent.mkdir(parents=True)
    pid = host.launch(ref, LaunchSpec("run.sh")).pid
    run_dir = Path(host.remote_dir(ref))
    _poll("the writer to pause", (run_dir / "paused").exists)
    for _ in range(3):
        result = mirror(host, ref, "output", dest, live_files=("*.csv",))
        assert (result.files_published, result.files_pending) == (0, 1)
        assert not (dest / "model.ckpt").exists()
    (run_dir / "go").touch()
    assert _wait_exit(host, ref).exit_code == 0
    final = mirror(host, ref, "output", dest, final=True, live_files=("*.csv",))
    assert (final.files_published, final.files_pending) == (2, 0)
    assert (dest / "model.ckpt").read_bytes() == b"A" * 5000 + b"B" * 5000
    _reap_group(pid)


def test_cleanup_removes_run_dir_keeps_cache(host: ShellHost, tmp_path: Path) -> None:
    ref = _start(host, tmp_path, "#!/bin/sh\n")
    pid = _wait_exit(host, ref).pid
    host.cleanup(ref)
    assert not Path(host.remote_dir(ref)).exists()
    assert (Path(host.cache_dir("proj")) / "run.sh").exists()
    host.cleanup(ref)  # already gone: fine
    assert pid is not None
    _reap_group(pid)


def test_power_commands(tmp_path: Path, tools: str) -> None:
    marks = tmp_path / "marks"
    config = HostConfig(
        name="local",
        remote_root=str(tmp_path / "remote"),
        shutdown_after=60,
        shutdown_command=f"echo off >> '{marks}'",
        cancel_shutdown_command=f"echo cancel >> '{marks}'",
    )
    power_host = ShellHost(config, LocalTransport())
    power_host.idle_for(59)
    assert not marks.exists()
    power_host.idle_for(60)
    power_host.run_starting()
    assert marks.read_text() == "off\ncancel\n"
    never = ShellHost(HostConfig(name="local", remote_root=str(tmp_path)), LocalTransport())
    never.idle_for(10**6)
    never.run_starting()
    never.wake()
    assert marks.read_text() == "off\ncancel\n"


def test_status_vanished_when_killed_from_outside(host: ShellHost, tmp_path: Path) -> None:
    ref = _start(host, tmp_path, "#!/bin/sh\necho up > up\nexec sleep 300\n")
    _poll("the script to start", (Path(host.remote_dir(ref)) / "up").exists)
    pgid = host.status(ref).pid
    assert pgid is not None
    os.killpg(pgid, signal.SIGKILL)
    _poll("the group to die", lambda: host.status(ref).state == "vanished")
    _reap_group(pgid)


def test_wake_sends_the_magic_packet_where_configured(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(10)
        config = HostConfig(
            name="sleepy",
            remote_root=str(tmp_path),
            wake_mac="aa:bb:cc:dd:ee:ff",
            wake_broadcast="127.0.0.1",
            wake_port=listener.getsockname()[1],
        )
        ShellHost(config, LocalTransport()).wake()
        packet = listener.recv(1024)
    assert packet == b"\xff" * 6 + bytes.fromhex("aabbccddeeff") * 16
