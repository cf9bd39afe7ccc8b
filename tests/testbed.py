"""Real servers for tests: OpenSSH sshd here, smbd in testbed_smb, netns in testbed_netns.

Everything here follows /work/shared/TESTBED.md. Each server is a plain foreground process
started by a fixture and stopped by its pid. A missing tool fails the test with the install
hint; nothing is ever skipped. Network targets are only 127.0.0.1 and the addresses that
:func:`netns_host` creates itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from agent.hosts.kinds.ssh import SshConfig

INSTALL_HINT = (
    "apt-get update && apt-get install -y rsync openssh-server openssh-client samba "
    "smbclient iproute2 acl"
)
TEST_USER = "droprun-test"
SMB_PASSWORD = "droprun-pw"
START_DEADLINE = 10.0
USER_LOCK = Path("/tmp/droprun-testbed-user.lock")


class TestbedError(RuntimeError):
    """A server of the test bed could not be set up (outside pytest: in the benchmarks)."""


def fail(message: str, *, pytrace: bool = True) -> NoReturn:
    """Fail the test with ``message``; outside pytest, raise TestbedError.

    pytest is used only if it is loaded already: the benchmarks (bench/) use this test bed
    too, and run where only droprun itself is installed.
    """
    pytest = sys.modules.get("pytest")
    if pytest is not None:
        pytest.fail(message, pytrace=pytrace)
    raise TestbedError(message)


def require_tool(name: str) -> str:
    """Return the absolute path of the program ``name``; fail the test if it is missing."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    fail(f"{name} is not installed; install it with: {INSTALL_HINT}", pytrace=False)


def busybox_userland(folder: Path) -> Path:
    """Fill ``folder`` with a NAS-like userland and return it, for use as the only PATH:
    a link per BusyBox applet, bash as ``sh`` and ``bash``, and the real rsync and python3."""
    busybox = require_tool("busybox")
    applets = run_checked([busybox, "--list"]).split()
    assert "nohup" not in applets, "this BusyBox has nohup; the test means one without"
    folder.mkdir(parents=True, exist_ok=True)
    for applet in applets:
        (folder / applet).symlink_to(busybox)
    for name, target in (
        ("sh", "bash"),
        ("bash", "bash"),
        ("rsync", "rsync"),
        ("python3", "python3"),
    ):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(require_tool(target))
    return folder


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tempdir(prefix: str) -> Path:
    """Create a temp dir that the unprivileged test user can traverse (mkdtemp makes 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def wait_listening(
    proc: subprocess.Popen[bytes], address: str, port: int, log: Path, what: str
) -> None:
    """Poll until ``address:port`` accepts TCP; fail with the server's log if it dies first."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.02)
    stop_process(proc)
    fail(f"{what} did not listen on {address}:{port}:\n{log.read_text(errors='replace')}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process by pid, KILL it if it has not exited after 5 s, and reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, if it exists."""
    if path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"700k"``) on ``path`` (made if missing) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    mount = require_tool("mount")
    subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
        if subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def run_checked(argv: list[str], stdin: bytes | None = None) -> str:
    """Run a setup command; fail the test with its output if it exits non-zero."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        fail(
            f"{' '.join(argv)} exited with {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')}{proc.stdout.decode(errors='replace')}"
        )
    return proc.stdout.decode(errors="replace")


@dataclass(frozen=True)
class TestUser:
    """The unprivileged account that tests log in as over ssh and smb."""

    __test__ = False  # not a pytest test class

    name: str
    uid: int
    gid: int
    home: Path


def ensure_test_user(name: str = TEST_USER) -> TestUser:
    """Create ``name`` once per machine (``useradd -m``, unlocked for key login) and return it.

    A file lock makes this safe when several pytest processes start at the same time.
    """
    useradd, usermod = require_tool("useradd"), require_tool("usermod")
    with USER_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            run_checked([useradd, "-m", "-s", "/bin/sh", name])
            entry = pwd.getpwnam(name)
        # With UsePAM no, sshd refuses even keys for a locked ("!") account.
        run_checked([usermod, "-p", "*", name])
    return TestUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def keygen(path: Path) -> str:
    """Create an ed25519 key pair at ``path``; return the public key as ``type base64``."""
    run_checked([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)])
    kind, blob = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def known_hosts_name(address: str, port: int) -> str:
    """Return how OpenSSH and paramiko name ``address:port`` in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


def descendants(root: int) -> list[int]:
    """Return the pids of all living descendants of ``root`` (children first)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str | None:
    """Return ``/proc/PID/comm``, or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def kill_sshd_sessions(listener: int) -> int:
    """SIGKILL the per-connection sshd processes below ``listener``; return how many."""
    victims = [p for p in descendants(listener) if process_name(p) == "sshd"]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # exited on its own meanwhile
            os.kill(pid, signal.SIGKILL)
    return len(victims)


def kill_left_running(uid: int, base: Path) -> list[int]:
    """SIGKILL processes of ``uid`` whose working directory is inside ``base``; return pids.

    Detached jobs that a test launched and did not stop would otherwise outlive the test
    and keep writing into a directory that teardown removes.
    """
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid or not Path(os.readlink(entry / "cwd")).is_relative_to(
                base
            ):
                continue
            os.kill(int(entry.name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        killed.append(int(entry.name))
    deadline = time.monotonic() + START_DEADLINE
    while any(is_running(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    return killed


def is_running(pid: int) -> bool:
    """Return True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class SshServer:
    """A running sshd and everything a client needs to log in to it.

    ``base`` is a fresh directory in the user's home, owned by the user and removed at
    teardown; :meth:`host_config` puts ``remote_root`` inside it (not yet created).
    """

    address: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    home: Path
    tmp: Path
    base: Path
    pid: int
    host_public_key: str

    @property
    def remote_root(self) -> str:
        """The remote_root that :meth:`host_config` uses (inside ``base``)."""
        return str(self.base / "droprun")

    def host_config(self, name: str = "testhost", **overrides: Any) -> SshConfig:
        """Return an ssh ``SshConfig`` for this server; ``overrides`` replace any field."""
        config = SshConfig(
            name=name,
            kind="ssh",
            address=self.address,
            port=self.port,
            user=self.user,
            key=self.key,
            known_hosts=self.known_hosts,
            remote_root=self.remote_root,
        )
        return replace(config, **overrides)

    def ssh_argv(self) -> list[str]:
        """Return the system ssh client argv (without destination) for this server."""
        options = [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            f"UserKnownHostsFile={self.known_hosts}",
            "GlobalKnownHostsFile=/dev/null",
            "ConnectTimeout=5",
        ]
        argv = [require_tool("ssh"), "-p", str(self.port), "-i", str(self.key)]
        for option in options:
            argv += ["-o", option]
        return argv

    @property
    def destination(self) -> str:
        """``user@address`` for the system ssh client."""
        return f"{self.user}@{self.address}"

    def kill_sessions(self) -> int:
        """SIGKILL the per-connection sshd processes (not the listener); return how many.

        Commands the sessions run are left alone; only processes named ``sshd`` die, so every
        open connection drops as if the server side had gone away.
        """
        return kill_sshd_sessions(self.pid)

    def write_known_hosts(self, path: Path, public_key: str | None = None) -> Path:
        """Write a known_hosts file at ``path`` naming this server with ``public_key``.

        With the default, the server's real key; pass another key for a changed-key test.
        """
        key = public_key or self.host_public_key
        path.write_text(f"{known_hosts_name(self.address, self.port)} {key}\n")
        return path


SSHD_CONFIG = """\
ListenAddress {address}
HostKey {tmp}/host_key
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
ClientAliveInterval 2
ClientAliveCountMax 2
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@contextlib.contextmanager
def running_sshd(
    user: TestUser,
    address: str,
    port: int | None = None,
    netns: str | None = None,
    extra_config: str = "",
) -> Iterator[SshServer]:
    """Run a real sshd on ``address`` (inside ``netns`` if given) until the context ends.

    ``port`` None picks a free loopback port (use 22 inside a namespace); ``extra_config``
    is appended to sshd_config (e.g. ``SetEnv PATH=...`` for the sessions).
    """
    sshd = require_tool("sshd")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    tmp = make_tempdir("drt-sshd-")
    base = user.home / f"drt-{secrets.token_hex(4)}"
    proc: subprocess.Popen[bytes] | None = None
    try:
        host_public = keygen(tmp / "host_key")
        user_public = keygen(tmp / "user_key")
        (tmp / "authorized_keys").mkdir(mode=0o755)
        (tmp / "authorized_keys" / user.name).write_text(user_public + "\n")
        (tmp / "sshd_config").write_text(
            SSHD_CONFIG.format(address=address, tmp=tmp) + extra_config
        )
        base.mkdir(mode=0o755)
        os.chown(base, user.uid, user.gid)
        log = tmp / "sshd.log"
        attempts = 1 if port is not None else 5
        for _ in range(attempts):  # a picked free port can be taken before sshd binds it
            chosen = port if port is not None else free_port()
            (tmp / "known_hosts").write_text(f"{known_hosts_name(address, chosen)} {host_public}\n")
            prefix = [require_tool("ip"), "netns", "exec", netns] if netns else []
            argv = [*prefix, sshd, "-D", "-e", "-f", str(tmp / "sshd_config"), "-p", str(chosen)]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            if attempts > 1 and b"Address already in use" in _wait_bind(proc, log):
                proc.wait(timeout=5)
                continue
            wait_listening(proc, address, chosen, log, "sshd")
            break
        assert proc is not None
        yield SshServer(
            address=address,
            port=chosen,
            user=user.name,
            key=tmp / "user_key",
            known_hosts=tmp / "known_hosts",
            home=user.home,
            tmp=tmp,
            base=base,
            pid=proc.pid,
            host_public_key=host_public,
        )
    finally:
        if proc is not None:
            # Sessions outlive the listener; an ssh ControlPersist master would keep one open.
            kill_sshd_sessions(proc.pid)
            stop_process(proc)
        kill_left_running(user.uid, base)
        remove_tree(base)
        remove_tree(tmp)


def _wait_bind(proc: subprocess.Popen[bytes], log: Path) -> bytes:
    """Wait briefly for a fresh sshd to either die or stay up; return its log so far."""
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and proc.poll() is None:
        if b"Server listening" in log.read_bytes():
            break
        time.sleep(0.01)
    return log.read_bytes()


def in_threads(target: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``target(0)`` ... ``target(count - 1)`` in as many threads at once; return what
    they raised (an assertion in a thread would otherwise be lost)."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
