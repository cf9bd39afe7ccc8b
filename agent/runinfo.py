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

import tomlkit

from agent.fsutil import atomic_write
from agent.problems import UserError

FORMAT = 1

ACCEPTED = "accepted"
QUEUED = "queued"
WAKING = "waking"
UPLOADING = "uploading"
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
    RUNNING,
    FINISHING,
    SUCCEEDED,
    FAILED,
    TIMED_OUT,
    CANCELLED,
    ERROR,
)
TERMINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, ERROR})


class RunInfoError(UserError):
    """A run.info that cannot be read: missing, corrupted, or of an unknown format."""


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
    state: str = ACCEPTED
    reason: str | None = None
    name: str | None = None
    notes: str | None = None
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
    remote_dir: str | None = None
    remote_pid: int | None = None
    gpu_names: list[str] | None = None
    outcome: str | None = None
    effective: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)

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

    def to_toml(self) -> str:
        """Return the TOML text of this run.info, ``format`` first."""
        doc = tomlkit.document()
        doc.add("format", FORMAT)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in ("effective", "history"):
                continue
            doc.add(f.name, value)
        if self.effective:
            doc.add("effective", self.effective)
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
        if data.get("format") != FORMAT:
            raise RunInfoError(f"{where}: format is {data.get('format')!r}, expected {FORMAT}")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
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


def load(path: Path, *, summary: bool = False) -> RunInfo:
    """Read the run.info at ``path``. Raises RunInfoError if missing or invalid.

    With ``summary``, only the top-level keys are parsed (``effective`` and ``history``
    stay empty): three times less work for listings over thousands of runs.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunInfoError(f"{path}: cannot read ({exc})") from exc
    if summary:
        head, sep, _ = text.partition("\n[")
        if sep:
            try:
                return RunInfo.from_toml(head + "\n", str(path))
            except RunInfoError:
                pass  # e.g. a multi-line string holding "\n[": read the whole file below
    return RunInfo.from_toml(text, str(path))


def save(path: Path, info: RunInfo) -> None:
    """Check ``info`` round-trips through TOML, then replace ``path`` atomically.

    Raises RunInfoError if the text would not read back, OSError if it cannot be written.
    """
    text = info.to_toml()
    RunInfo.from_toml(text, str(path))
    atomic_write(path, text.encode("utf-8"))
