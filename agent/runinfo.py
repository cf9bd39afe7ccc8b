"""``run.info``: the state and metadata of one run, written only by the agent.

The file is TOML, versioned (``format = 1``), checked before every write and replaced
atomically (temp file in the same folder, fsync, rename) so a reader never sees half a file.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import tomlwrite
from agent.fsutil import atomic_write, read_plain
from agent.problems import UserError

FORMAT = 1
MAX_BYTES = 4 << 20  # a run.info is a few KiB; its history grows by a line per state

ACCEPTED = "accepted"
QUEUED = "queued"
WAKING = "waking"
UPLOADING = "uploading"
PENDING = "pending"
RUNNING = "running"
FINISHING = "finishing"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
ERROR = "error"

STATES = (
    ACCEPTED,
    QUEUED,
    WAKING,
    UPLOADING,
    PENDING,
    RUNNING,
    FINISHING,
    SUCCEEDED,
    FAILED,
    TIMED_OUT,
    CANCELLED,
    ERROR,
)
SUMMARY_KEYS = frozenset(
    {
        "format",
        "project",
        "run",
        "run_id",
        "state",
        "host",
        "start_epoch",
        "duration_s",
        "exit_code",
        "sweep_id",
    }
)
TERMINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, ERROR})


class RunInfoError(UserError):
    """A run.info that cannot be read: missing, corrupted, or of an unknown format."""


def new_run_id() -> str:
    """Return a fresh unique run id (32 hex digits)."""
    import uuid  # only the agent makes runs; listings should not pay for the import

    return uuid.uuid4().hex


def now_iso(epoch: float | None = None) -> str:
    """Return ``epoch`` (default: now) as an ISO 8601 UTC timestamp with seconds."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=UTC)
    return moment.isoformat(timespec="seconds")


def date_string(epoch: float) -> str:
    """Return ``epoch`` the way the original scripts' ``$(date)`` printed it (local time)."""
    return time.strftime("%a %b %e %H:%M:%S %Z %Y", time.localtime(epoch))


@dataclass
class RunInfo:
    """Everything ``run.info`` holds. ``None`` values are left out of the file."""

    project: str
    run: int
    run_id: str | None = None
    state: str = ACCEPTED
    reason: str | None = None
    name: str | None = None
    notes: str | None = None
    client: str | None = None
    host: str | None = None
    submitted_by: str | None = None
    request_sha256: str | None = None
    accepted_at: str | None = None
    start_time: str | None = None
    start_epoch: int | None = None
    end_time: str | None = None
    end_epoch: int | None = None
    duration_s: int | None = None
    exit_code: int | None = None
    timeout_s: int | None = None
    bytes_uploaded: int | None = None
    bytes_mirrored: int = 0
    bin_files: int | None = None
    bin_bytes: int | None = None
    bin_sha256: str | None = None
    bin_note: str | None = None
    archive_shared_with: str | None = None
    remote_dir: str | None = None
    remote_pid: int | None = None
    job_id: str | None = None
    partition: str | None = None
    node: str | None = None
    group: str | None = None
    queued_s: int | None = None
    gpus: int | None = None
    gpu_ids: list[str] | None = None
    moved_aside: str | None = None
    gpu_names: list[str] | None = None
    rsync_local: str | None = None
    rsync_remote: str | None = None
    last_mirror_at: str | None = None
    outcome: str | None = None
    rerun_of: int | None = None
    resume_from: str | None = None
    bytes_resumed: int | None = None
    sweep_id: str | None = None
    sweep: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    effective: dict[str, Any] = field(default_factory=dict)
    notify: dict[str, str] = field(default_factory=dict)  # event -> what became of its notice
    history: list[dict[str, str]] = field(default_factory=list)

    def entered(self, state: str) -> float | None:
        """Return when the run last moved to ``state`` (epoch seconds), or None if it never
        did (from ``[[history]]``)."""
        for entry in reversed(self.history):
            if entry.get("state") == state:
                return datetime.fromisoformat(entry["at"]).timestamp()
        return None

    @property
    def terminal(self) -> bool:
        """True once the run has reached one of the five terminal states."""
        return self.state in TERMINAL

    def transition(self, state: str, reason: str | None = None) -> None:
        """Move to ``state`` (recording it in the history); ``reason`` replaces the old one.

        Raises ValueError for an unknown state or a move out of a terminal state.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        if self.terminal:
            raise ValueError(f"run is already {self.state}; cannot become {state}")
        self.state = state
        if reason is not None:
            self.reason = reason
        self.history.append({"state": state, "at": now_iso()})

    def to_data(self) -> dict[str, Any]:
        """Return the values of this run.info as TOML would read them, ``format`` first.

        Safe to hand to another thread: ``history``, the one value changed in place
        (:meth:`transition`), is a copy; the others are only ever replaced.
        """
        data: dict[str, Any] = {"format": FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name not in ("effective", "notify", "history"):
                data[f.name] = value
        for name in ("effective", "notify"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        if self.history:
            data["history"] = list(self.history)
        return data

    def to_toml(self) -> str:
        """Return the TOML text of this run.info, ``format`` first."""
        text = tomlwrite.dumps(self.to_data())
        if text is not None:
            return text
        import tomlkit  # only for values tomlwrite does not write: not worth every import

        doc = tomlkit.document()
        doc.add("format", FORMAT)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in ("effective", "notify", "history"):
                continue
            doc.add(f.name, value)
        if self.effective:
            doc.add("effective", self.effective)
        if self.notify:
            doc.add("notify", self.notify)
        aot = tomlkit.aot()
        for entry in self.history:
            aot.append(tomlkit.item(entry))
        if self.history:
            doc.add("history", aot)
        return tomlkit.dumps(doc)

    @classmethod
    def from_toml(cls, text: str, where: str = "run.info") -> RunInfo:
        """Parse run.info text. Raises RunInfoError naming ``where`` if it is not valid."""
        try:
            # tomllib, not tomlkit: ten times faster, and status/resume read every run.info.
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RunInfoError(f"{where}: not valid TOML ({exc})") from exc
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "run.info") -> RunInfo:
        """Check parsed run.info data. Raises RunInfoError naming ``where`` if it is not valid."""
        if data.get("format") != FORMAT:
            raise RunInfoError(f"{where}: format is {data.get('format')!r}, expected {FORMAT}")
        values = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        for required in ("project", "run", "state"):
            if required not in values:
                raise RunInfoError(f"{where}: the key {required!r} is missing")
        if values["state"] not in STATES:
            raise RunInfoError(f"{where}: state {values['state']!r} is not one of {STATES}")
        if not isinstance(values["run"], int):
            raise RunInfoError(f"{where}: run must be a whole number")
        try:
            return cls(**values)
        except TypeError as exc:
            raise RunInfoError(f"{where}: {exc}") from exc


_FIELD_NAMES = frozenset(f.name for f in fields(RunInfo))


def _read_plain(path: Path) -> bytes:
    """Return the bytes of the plain file ``path``. Anyone may write to the share: a link
    (to /dev/zero, say), a FIFO or a huge file there raises OSError instead of blocking or
    reading forever."""
    data = read_plain(path, MAX_BYTES)
    if len(data) > MAX_BYTES:
        raise OSError(f"larger than {MAX_BYTES} bytes")
    return data


def _plain_values(lines: list[str]) -> dict[str, Any] | None:
    """Parse ``key = 123`` and ``key = "text"`` lines without a TOML parser (10x faster).

    Returns None as soon as a line holds anything else (escapes, floats, arrays...).
    """
    values: dict[str, Any] = {}
    for line in lines:
        key, sep, raw = line.partition(" = ")
        if not sep:
            return None
        if raw.isdigit() or (raw[:1] == "-" and raw[1:].isdigit()):
            values[key] = int(raw)
        elif len(raw) >= 2 and raw[0] == raw[-1] == '"' and not set(raw[1:-1]) & {'"', "\\"}:
            values[key] = raw[1:-1]
        else:
            return None
    return values


def read_text(path: Path) -> str:
    """Return the text of the run.info at ``path``. Raises RunInfoError if it cannot be read."""
    try:
        return _read_plain(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunInfoError(f"{path}: cannot read ({exc})") from exc


def head_values(text: str, keys: frozenset[str], where: str = "run.info") -> dict[str, Any]:
    """Return the top-level values of ``keys`` (and ``format``) in run.info ``text``.

    The fast summary reader of ``status``, resume and the pages: the agent writes every
    top-level value on one line before the first table, so only those lines are parsed, by
    hand when they are plain, else with tomllib; a file not written that way (hand-edited)
    is parsed whole. Raises RunInfoError if the file is not a valid run.info.
    """
    keys = keys | {"format"}
    head = text.partition("\n[")[0].splitlines()
    wanted = [line for line in head if line.split(" ", 1)[0] in keys]
    data = _plain_values(wanted)
    if data is None:
        try:
            data = tomllib.loads("\n".join(wanted))
        except tomllib.TOMLDecodeError:
            data = None
    if data is not None and data.get("format") == FORMAT:
        try:
            RunInfo.from_dict(data, where)
            return data
        except RunInfoError:
            pass  # read all of it below, for the full message
    full = RunInfo.from_toml(text, where)
    parsed = tomllib.loads(text)  # valid: from_toml parsed it
    values = {k: v for k, v in parsed.items() if k in keys}
    values.update(project=full.project, run=full.run, state=full.state)
    return values


def load(path: Path, *, summary: bool = False) -> RunInfo:
    """Read the run.info at ``path``. Raises RunInfoError if missing or invalid.

    With ``summary``, only the keys that listings show are parsed (the rest keep their
    defaults): a sixth of the work, for ``status`` and resume over thousands of runs.
    """
    text = read_text(path)
    if summary:
        values = head_values(text, SUMMARY_KEYS, str(path))
        return RunInfo.from_dict({k: v for k, v in values.items() if k in SUMMARY_KEYS})
    return RunInfo.from_toml(text, str(path))


def save(path: Path, info: RunInfo) -> dict[str, Any] | None:
    """Check ``info`` is a valid run.info, then replace ``path`` atomically.

    Returns the data the file now reads back as, or None if it was written by tomlkit
    (values the fast writer does not write: read it back to know). Raises RunInfoError if
    it is not valid (or its text would not read back), OSError if it cannot be written.
    """
    data = info.to_data()
    text = tomlwrite.dumps(data)  # reads back as ``data`` (a property test), or None
    written: dict[str, Any] | None = data
    if text is not None:
        RunInfo.from_dict(data, str(path))
    else:
        text = info.to_toml()
        RunInfo.from_toml(text, str(path))
        written = None
    # The rename itself is not flushed: after a power cut a run may find its previous
    # state, and every state resumes (each step is redone from where run.info says).
    atomic_write(path, text.encode("utf-8"), "data")
    return written
