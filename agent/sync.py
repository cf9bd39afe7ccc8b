"""rsync: command lines built by pure functions, run in exactly one place (:func:`run_rsync`).

Uploads go into the project's persistent cache on the host so that only changed blocks
cross the network; mirrors pull ``output_dir`` into a hidden staging dir on the share.
"""

from __future__ import annotations

import re
import shlex
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
    255: "ssh could not connect or the connection dropped",
}


@dataclass(frozen=True)
class RsyncStats:
    """The numbers of one rsync run that droprun records."""

    bytes_sent: int
    bytes_received: int
    files_transferred: int


def make_upload_argv(
    src_dir: str, dest: str, exclude: Sequence[str], rsh: Sequence[str] | None
) -> list[str]:
    """Return the argv that syncs the contents of ``src_dir`` into ``dest`` (the cache).

    ``--delete-excluded`` is on purpose: a file that was uploaded once and is excluded
    later must leave the cache too, or it would reappear in every new run dir although
    it is not in the run's ``bin.tar.gz``. Symlinks are copied as links (``-a``).
    ``--modify-window=-1`` compares mtimes to the nanosecond (receiver rsync >= 3.1.3), so
    an edit of a file that keeps its size within the second of the last upload is sent.
    """
    argv = ["rsync", "-a", "--delete", "--delete-excluded", "--modify-window=-1", "--stats"]
    argv += [f"--exclude={pattern}" for pattern in exclude]
    if rsh is not None:
        argv += ["-e", shlex.join(rsh)]
    argv += ["--", src_dir.rstrip("/") + "/", dest]
    return argv


def make_pull_argv(src: str, dest_dir: str, rsh: Sequence[str] | None) -> list[str]:
    """Return the argv that mirrors the contents of ``src`` into ``dest_dir`` (staging).

    ``dest_dir`` is droprun's private staging dir, so ``--delete`` is safe there; rsync
    writes each file to a temp name and renames it (no ``--inplace``); mtimes are compared
    to the nanosecond, as for uploads.
    """
    argv = ["rsync", "-a", "--delete", "--modify-window=-1", "--stats"]
    if rsh is not None:
        argv += ["-e", shlex.join(rsh)]
    argv += ["--", src.rstrip("/") + "/", dest_dir.rstrip("/") + "/"]
    return argv


def make_seed_argv(
    src_dir: str, dest: str, link_dest: str | None, rsh: Sequence[str] | None
) -> list[str]:
    """Return the argv that copies the contents of ``src_dir`` (an earlier run's output on
    the share) into ``dest`` (the new run's output_dir) before the script starts.

    ``link_dest``: the earlier run's output folder on the host, if it may still be there:
    files equal to the share's are then hard-linked on the host instead of sent (a missing
    folder only makes rsync warn). Nothing is deleted.
    """
    argv = ["rsync", "-a", "--modify-window=-1", "--stats"]
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

    255 (ssh failed) is transient unless ``stderr`` shows a host-key or auth failure.
    """
    words = _WORDS.get(code, f"rsync failed with exit code {code}")
    if code == 255:
        for marker in _PERMANENT_SSH_MARKERS:
            if marker in stderr:
                return False, f"ssh refused the connection: {marker}"
        return True, words
    return code in _TRANSIENT_CODES, words


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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
            proc = command(
                *argv[1:],
                _ok_code=list(range(256)),
                _timeout=timeout,
                _return_cmd=True,
                _in=None,
            )
        except sh.TimeoutException:
            last = HostError(f"rsync did not finish within {timeout:g} s", transient=True)
            continue
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        if proc.exit_code in ok_codes:
            return parse_stats(stdout)
        if proc.exit_code == 255 and is_host_key_failure(stderr):
            raise HostKeyError(f"rsync: ssh host key check failed: {_tail(stderr)}")
        transient, words = classify_exit(proc.exit_code, stderr)
        last = HostError(
            f"rsync exit {proc.exit_code} ({words}): {_tail(stderr)}", transient=transient
        )
        if not transient:
            raise last
    assert last is not None
    raise last
