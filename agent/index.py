"""A summary of every run on the share, read once with the fast run.info reader and then
kept current from the runs the agent drives: what the pages and the billing files are made
from, so one state change never re-reads thousands of run.info files.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import layout, runinfo
from agent.fsutil import read_plain

INDEX_KEYS = frozenset(
    {
        "project",
        "run",
        "state",
        "reason",
        "name",
        "client",
        "host",
        "accepted_at",
        "start_epoch",
        "end_epoch",
        "duration_s",
        "exit_code",
        "gpus",
        "gpu_names",
    }
)
MAX_ERROR_TEXT = 16 * 1024


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What listings and bills show of one run. ``problem`` is set (and the rest mostly
    unknown) when its run.info cannot be read."""

    project: str
    run: int
    run_dir: Path
    state: str = "?"
    reason: str | None = None
    name: str | None = None
    client: str | None = None
    host: str | None = None
    accepted_at: str | None = None
    start_epoch: int | None = None
    end_epoch: int | None = None
    duration_s: int | None = None
    exit_code: int | None = None
    gpus: int | None = None  # recorded GPU count, None if run.info does not say
    problem: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the run has ended."""
        return self.state in runinfo.TERMINAL

    @property
    def active(self) -> bool:
        """True while the run is queued or going (not ended, run.info readable)."""
        return self.problem is None and not self.terminal

    def seconds(self, now: float) -> int | None:
        """Return the wall-clock duration: recorded, or so far while it runs (pure)."""
        if self.duration_s is not None:
            return self.duration_s
        if self.start_epoch is not None and self.end_epoch is not None:
            return self.end_epoch - self.start_epoch
        if self.start_epoch is not None and not self.terminal:
            return max(0, int(now) - self.start_epoch)
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _device_count(value: Any) -> int | None:
    """Return how many devices a CUDA_VISIBLE_DEVICES value names, None if it is not one."""
    if not isinstance(value, str):
        return None
    return len([d for d in value.split(",") if d.strip()])


def recorded_gpus(values: Mapping[str, Any], text: str | None) -> int | None:
    """Return the GPUs given to a run as run.info records them (pure).

    In order: ``gpus`` (a count, or a list of ids), the number of ``gpu_names``, the
    devices of a CUDA_VISIBLE_DEVICES recorded under ``[environment]`` or in the run's
    ``env``; None if none of them is there. ``values`` holds at least the top-level
    values; ``text`` is the file, parsed for its tables only if it names the variable
    (None: ``values`` is the whole run.info).
    """
    gpus = values.get("gpus")
    count = _int(gpus)
    if count is not None:
        return max(0, count)
    if isinstance(gpus, list):
        return len(gpus)
    names = values.get("gpu_names")
    if isinstance(names, list) and names:
        return len(names)
    if text is None:
        data = values
    elif "CUDA_VISIBLE_DEVICES" not in text:
        return None
    else:
        data = tomllib.loads(text)  # valid: head_values parsed it already
    for table in (data.get("environment"), (data.get("effective") or {}).get("env")):
        if isinstance(table, dict) and "CUDA_VISIBLE_DEVICES" in table:
            return _device_count(table["CUDA_VISIBLE_DEVICES"])
    return None


def read_summary(run_dir: Path, project: str, number: int) -> RunSummary:
    """Return the summary of the run in ``run_dir`` (with ``problem`` set if unreadable)."""
    path = run_dir / "run.info"
    try:
        text = runinfo.read_text(path)
        values = runinfo.head_values(text, INDEX_KEYS, str(path))
        gpus = recorded_gpus(values, text)
    except (runinfo.RunInfoError, tomllib.TOMLDecodeError) as exc:
        return RunSummary(project, number, run_dir, problem=str(exc))
    return _summary(run_dir, project, number, values, gpus)


def summary_of(run_dir: Path, data: Mapping[str, Any]) -> RunSummary:
    """Return the summary of the run in ``run_dir`` whose run.info reads as ``data`` (as
    the agent just wrote it: nothing is read, pure)."""
    project, number = run_dir.parent.parent.name, int(run_dir.name.removeprefix("run_"))
    return _summary(run_dir, project, number, data, recorded_gpus(data, None))


def _summary(
    run_dir: Path, project: str, number: int, values: Mapping[str, Any], gpus: int | None
) -> RunSummary:
    return RunSummary(
        project=project,
        run=number,
        run_dir=run_dir,
        state=values["state"],
        reason=_str(values.get("reason")),
        name=_str(values.get("name")),
        client=_str(values.get("client")),
        host=_str(values.get("host")),
        accepted_at=_str(values.get("accepted_at")),
        start_epoch=_int(values.get("start_epoch")),
        end_epoch=_int(values.get("end_epoch")),
        duration_s=_int(values.get("duration_s")),
        exit_code=_int(values.get("exit_code")),
        gpus=gpus,
    )


@dataclass(frozen=True)
class Rejection:
    """A request that was not accepted: the kept file and what its ``.error`` says."""

    project: str
    name: str
    error: str


def read_rejections(project_dir: Path) -> list[Rejection]:
    """Return the rejected requests waiting in ``project_dir``, by name."""
    found = []
    try:
        with os.scandir(project_dir) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".error"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for name in names:
        try:
            data = read_plain(project_dir / name, MAX_ERROR_TEXT)[:MAX_ERROR_TEXT]
        except OSError:
            continue
        found.append(Rejection(project_dir.name, name, data.decode("utf-8", errors="replace")))
    return found


class ShareIndex:
    """Every run's summary and every project's rejected requests (one thread uses it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.projects: dict[str, dict[int, RunSummary]] = {}
        self.rejections: dict[str, list[Rejection]] = {}

    @classmethod
    def build(cls, root: Path) -> ShareIndex:
        """Read every run.info of the share once (the fast head reader)."""
        index = cls(root)
        for project in layout.project_dirs(root):
            runs = {n: read_summary(d, project.name, n) for n, d in layout.run_dirs(project)}
            index.projects[project.name] = runs
            index.rejections[project.name] = read_rejections(project)
        return index

    def update(
        self, run_dir: Path, data: Mapping[str, Any] | None = None
    ) -> tuple[RunSummary | None, RunSummary | None]:
        """Read one run again (or take ``data``, its run.info as just written); return its
        summary before and now (None: not there)."""
        project, number = run_dir.parent.parent.name, int(run_dir.name.removeprefix("run_"))
        runs = self.projects.setdefault(project, {})
        old = runs.get(number)
        if not run_dir.is_dir():
            runs.pop(number, None)
            return old, None
        if data is not None:
            new = summary_of(run_dir, data)
        else:
            new = read_summary(run_dir, project, number)
        runs[number] = new
        return old, new

    def update_rejections(self, project_dir: Path) -> bool:
        """Read a project's rejected requests again; return True if they changed."""
        found = read_rejections(project_dir)
        changed = self.rejections.get(project_dir.name, []) != found
        self.rejections[project_dir.name] = found
        return changed

    def runs(self) -> Iterator[RunSummary]:
        """Yield every run of every project."""
        for runs in self.projects.values():
            yield from runs.values()

    def active(self) -> bool:
        """True if any run is queued or going."""
        return any(r.active for r in self.runs())
