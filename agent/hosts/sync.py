"""rsync: command lines built by pure functions, run in exactly one place (:func:`run_rsync`).

Uploads go into the project's persistent cache on the host so that only changed blocks
cross the network; mirrors pull ``output_dir`` into a hidden staging dir on the share.

Every command line has ``-s`` (``--protect-args``, rsync >= 3.0): remote paths travel
inside rsync's protocol, never on the remote shell's command line, whatever the agent's
rsync version or ``RSYNC_OLD_ARGS``. Which options a transfer may use depends on the
versions at both ends (:class:`RsyncVersions`): the receiver compares mtimes to the
nanosecond with ``--modify-window=-1`` only from 3.1.3 on.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sh

from agent.hosts.base import HostError, HostKeyError

# Exit codes worth retrying: socket/IO/protocol trouble, timeouts, vanished source files.
_TRANSIENT_CODES = frozenset({10, 12, 20, 24, 30, 35})
_PERMANENT_SSH_MARKERS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
)
_HOST_KEY_MARKERS = _PERMANENT_SSH_MARKERS[:2]
# The server's shell or rsync refused the command line: the same command fails again.
_REFUSED_MARKERS = (
    "command not found",
    ": not found",
    "syntax error",
    "unexpected token",
    "unknown option",
    "unrecognized option",
    "is your shell clean",
)
# Protocol 31 (3.1.0) carries nanosecond mtimes; --protect-args came in 3.0.0.
MIN_VERSION = (3, 1, 0)
# A receiver compares nanoseconds with --modify-window=-1 from 3.1.3 on (older ones
# misread it: 3.1.2 then counts any two mtimes of one size as equal).
NS_RECEIVER_VERSION = (3, 1, 3)
_WORDS = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O (disk full?)",
    12: "error in rsync protocol data stream (connection lost?)",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "rsync was interrupted by a signal",
    22: "error allocating memory",
    23: "some files could not be transferred",
    24: "some source files vanished during the transfer",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    124: "the remote shell failed",
    125: "the remote shell was killed",
    126: "the remote rsync could not be run",
    127: "rsync is not installed on the server (remote command not found)",
    255: "ssh could not connect or the connection dropped",
}


@dataclass(frozen=True)
class RsyncStats:
    """The numbers of one rsync run that droprun records."""

    bytes_sent: int
    bytes_received: int
    files_transferred: int


@dataclass(frozen=True)
class RsyncVersions:
    """The rsync versions at both ends of a host's transfers, as printed ("3.1.2")."""

    local: str
    remote: str

    def problem(self) -> str | None:
        """Return why these versions cannot work together, or None if they can (pure)."""
        low = [
            f"{version} on {side}"
            for version, side in ((self.local, "the agent's machine"), (self.remote, "the server"))
            if version_tuple(version) < MIN_VERSION
        ]
        if not low:
            return None
        minimum = ".".join(map(str, MIN_VERSION))
        return (
            f"rsync {' and '.join(low)} is older than {minimum}, the oldest droprun supports "
            f"(agent's machine: {self.local}, server: {self.remote})"
        )

    @property
    def upload_ns(self) -> bool:
        """True if uploads can compare mtimes to the nanosecond (the server receives)."""
        return version_tuple(self.remote) >= NS_RECEIVER_VERSION

    @property
    def pull_ns(self) -> bool:
        """True if mirrors can compare mtimes to the nanosecond (the agent receives)."""
        return version_tuple(self.local) >= NS_RECEIVER_VERSION


def parse_version(text: str) -> str | None:
    """Return the version ("3.1.2") from ``rsync --version`` output, None if absent (pure)."""
    match = re.search(r"\bversion\s+v?(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def version_tuple(version: str) -> tuple[int, ...]:
    """Return "3.1.2" as (3, 1, 2) for comparisons (pure)."""
    return tuple(int(part) for part in version.split("."))


def make_version_argv() -> list[str]:
    """Return the argv that prints rsync's version (on either side)."""
    return ["rsync", "--version"]


def make_upload_argv(
    src_dir: str,
    dest: str,
    exclude: Sequence[str],
    rsh: Sequence[str] | None,
    *,
    receiver_ns: bool = True,
) -> list[str]:
    """Return the argv that syncs the contents of ``src_dir`` into ``dest`` (the cache).

    ``--delete-excluded`` is on purpose: a file that was uploaded once and is excluded
    later must leave the cache too, or it would reappear in every new run dir although
    it is not in the run's ``bin.tar.gz``. Symlinks are copied as links (``-a``).
    An edit of a file that keeps its size within the second of the last upload must be
    sent: with ``receiver_ns`` (server rsync >= 3.1.3) ``--modify-window=-1`` compares
    mtimes to the nanosecond; otherwise ``--checksum`` compares contents (it reads
    ``bin/`` on both sides, once per upload).
    """
    compare = "--modify-window=-1" if receiver_ns else "--checksum"
    argv = ["rsync", "-s", "-a", "--delete", "--delete-excluded", compare, "--stats"]
    argv += [f"--exclude={pattern}" for pattern in exclude]
    if rsh is not None:
        argv += ["-e", shlex.join(rsh)]
    argv += ["--", src_dir.rstrip("/") + "/", dest]
    return argv


def make_pull_argv(
    src: str, dest_dir: str, rsh: Sequence[str] | None, *, receiver_ns: bool = True
) -> list[str]:
    """Return the argv that mirrors the contents of ``src`` into ``dest_dir`` (staging).

    ``dest_dir`` is droprun's private staging dir, so ``--delete`` is safe there; rsync
    writes each file to a temp name and renames it (no ``--inplace``). Nothing is
    chmodded or chowned on the share (no ``-p``/``-o``/``-g``): new files get the folder's
    default ACL or the umask, from read-write for everyone. With ``receiver_ns`` (agent
    rsync >= 3.1.3) mtimes are compared to the nanosecond; an older receiver compares
    seconds, and the caller makes up for it (see :mod:`agent.hosts.mirror`).
    """
    argv = ["rsync", "-s", "-rlt", "--no-perms", "--chmod=ugo=rwX", "--delete"]
    if receiver_ns:
        argv.append("--modify-window=-1")
    argv.append("--stats")
    if rsh is not None:
        argv += ["-e", shlex.join(rsh)]
    argv += ["--", src.rstrip("/") + "/", dest_dir.rstrip("/") + "/"]
    return argv


def make_seed_argv(
    src_dir: str,
    dest: str,
    link_dest: str | None,
    rsh: Sequence[str] | None,
    *,
    receiver_ns: bool = True,
) -> list[str]:
    """Return the argv that copies the contents of ``src_dir`` (an earlier run's output on
    the share) into ``dest`` (the new run's output_dir) before the script starts.

    ``link_dest``: the earlier run's output folder on the host, if it may still be there:
    files equal to the share's are then hard-linked on the host instead of sent (a missing
    folder only makes rsync warn). Nothing is deleted. ``-s`` keeps ``link_dest`` away
    from the server's shell too; ``receiver_ns`` as for :func:`make_upload_argv`.
    """
    compare = "--modify-window=-1" if receiver_ns else "--checksum"
    argv = ["rsync", "-s", "-a", compare, "--stats"]
    if link_dest is not None:
        argv.append(f"--link-dest={link_dest}")
    if rsh is not None:
        argv += ["-e", shlex.join(rsh)]
    argv += ["--", src_dir.rstrip("/") + "/", dest.rstrip("/") + "/"]
    return argv


def _stat_number(text: str, *labels: str) -> int:
    for label in labels:
        match = re.search(rf"^{re.escape(label)}:\s*([\d,.]+)", text, re.MULTILINE)
        if match:
            return int(re.sub(r"[,.]", "", match.group(1)))
    return 0


def parse_stats(text: str) -> RsyncStats:
    """Return the byte and file counts from rsync ``--stats`` output (0 where missing)."""
    return RsyncStats(
        bytes_sent=_stat_number(text, "Total bytes sent"),
        bytes_received=_stat_number(text, "Total bytes received"),
        files_transferred=_stat_number(
            text, "Number of regular files transferred", "Number of files transferred"
        ),
    )


def is_host_key_failure(stderr: str) -> bool:
    """Return True if ssh's ``stderr`` says the server's host key is unknown or changed."""
    return any(marker in stderr for marker in _HOST_KEY_MARKERS)


def classify_exit(code: int, stderr: str = "") -> tuple[bool, str]:
    """Return (transient?, plain words) for rsync exit ``code``.

    255 (ssh failed) is transient. Whatever the code, ``stderr`` showing a host-key or
    login failure, or that the server's shell or rsync refused the command (a syntax
    error, no rsync, an unknown option), makes it permanent: with ``--protect-args`` an
    ssh that fails before the transfer starts shows as 12, not 255.
    """
    words = _WORDS.get(code, f"rsync failed with exit code {code}")
    for marker in _PERMANENT_SSH_MARKERS:
        if marker in stderr:
            return False, f"ssh refused the connection: {marker}"
    if any(marker in stderr for marker in _REFUSED_MARKERS):
        return False, f"{words}; the server refused rsync's command"
    return code == 255 or code in _TRANSIENT_CODES, words


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_to_end(command: sh.Command, args: Sequence[str], timeout: float) -> sh.RunningCommand:
    """Run ``command`` with ``args`` (stdin empty, any exit code accepted) until it ends;
    return it with its output.

    Raises TimeoutError after killing it if it runs longer than ``timeout`` s. (Our own
    timer: sh's ``_timeout`` adds about 0.1 s to every call, which a burst of short runs
    pays many times over.)
    """
    proc = command(*args, _bg=True, _bg_exc=False, _ok_code=list(range(256)), _in=None)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        proc.wait()
    except sh.SignalException:
        if not expired.is_set():
            raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise TimeoutError(f"{command} did not finish within {timeout:g} s")
    return proc


def run_rsync(
    argv: Sequence[str],
    *,
    timeout: float,
    attempts: int = 3,
    backoff: float = 1.0,
    ok_codes: Collection[int] = (0,),
) -> RsyncStats:
    """Run rsync ``argv`` (from a ``make_*_argv``), retrying transient failures.

    Waits ``backoff * 2**i`` seconds between attempts; exit codes in ``ok_codes`` count
    as success (mirrors accept 24, vanished files). Returns the parsed ``--stats``.
    Raises HostKeyError for a host-key failure, and HostError (``transient`` set as
    classified) with rsync's stderr tail otherwise, or if rsync is not installed.
    """
    try:
        command = sh.Command(argv[0])
    except sh.CommandNotFound as exc:
        raise HostError(f"{argv[0]} is not installed on the agent's machine") from exc
    last: HostError | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            proc = run_to_end(command, argv[1:], timeout)
        except TimeoutError:
            last = HostError(f"rsync did not finish within {timeout:g} s", transient=True)
            continue
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        if proc.exit_code in ok_codes:
            return parse_stats(stdout)
        if is_host_key_failure(stderr):
            raise HostKeyError(f"rsync: ssh host key check failed: {_tail(stderr)}")
        transient, words = classify_exit(proc.exit_code, stderr)
        last = HostError(
            f"rsync exit {proc.exit_code} ({words}): {_tail(stderr)}", transient=transient
        )
        if not transient:
            raise last
    assert last is not None
    raise last


class LocalRsync:
    """The agent's own rsync version: asked once per agent process, then remembered.

    One instance is shared by every host of the agent; safe to use from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: str | None = None

    def version(self) -> str:
        """Return the version of the ``rsync`` on PATH ("3.1.2").

        Raises HostError (permanent) if rsync is missing or prints no version.
        """
        with self._lock:
            if self._version is None:
                self._version = _ask_version()
            return self._version


def _ask_version() -> str:
    """Run ``rsync --version`` here; return the version or raise HostError (permanent)."""
    argv = make_version_argv()
    try:
        proc = run_to_end(sh.Command(argv[0]), argv[1:], 60.0)
    except sh.CommandNotFound as exc:
        raise HostError(f"{argv[0]} is not installed on the agent's machine") from exc
    except TimeoutError as exc:
        raise HostError("the agent's rsync --version did not finish within 60 s") from exc
    text = proc.stdout.decode(errors="replace")
    version = parse_version(text)
    if version is None:
        raise HostError(f"cannot tell the version of the agent's rsync from: {_tail(text, 2)!r}")
    return version
