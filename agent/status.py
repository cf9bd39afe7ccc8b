"""``droprun status``: one row per run, from a cache of run.info summaries.

A share of 10,000 runs has 10,000 run.info files, nearly all of finished runs that never
change again. The summary of each run is kept in ``<state_dir>/status-cache.json``, keyed
by its run.info's (inode, size, mtime_ns), and so is each project's list of run folders,
keyed by its ``results`` folder's (inode, mtime_ns): a listing stats every run.info (and
every ``results``) and reads only what changed. The cache is only ever a shortcut:

- an entry whose key differs from the file's is read again (the agent replaces run.info
  by rename, so each write has a new inode; an edit in place changes mtime; a run folder
  made, removed or renamed changes the mtime of ``results``);
- an entry is stored once its file is ``SETTLED_NS`` old, so a change within one tick of
  the file system's clock cannot hide behind an equal key;
- a cache that cannot be read, is corrupt, is of another share or ``CACHE_FORMAT`` is
  ignored, and one that cannot be written (a read-only state_dir) is not written.

The cache lives under the agent's ``state_dir``, never on the share: anyone may write to
the share, and a cache there could make the table lie.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import layout, runinfo
from agent.fsutil import atomic_write, read_plain

if TYPE_CHECKING:
    from agent.schema import AgentConfig

CACHE_NAME = "status-cache.json"
CACHE_FORMAT = 1
SETTLED_NS = 2_000_000_000  # FAT's clock ticks every 2 s; ext4's and btrfs's far finer
# A run: run.info's key, then what a row shows (see _entry; None: the key is absent).
# [inode, size, mtime_ns, project, run, state, host, start_epoch, duration_s, exit_code,
#  sweep_id]
Entry = list[Any]
# A project's run folders: the key of its results folder, then their names by number.
# [inode, mtime_ns, ["run_0", "run_1", ...]]
Listing = list[Any]
# Project folder name -> {"listing": Listing (absent: not kept), "runs": {name: Entry}}.
Cache = dict[str, dict[str, Any]]


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector in the block (reference counting still frees all).

    A table of 10,000 runs makes 10,000 rows and no cycles; the collector would walk them,
    and every object of every module imported, again and again: a third of the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cache_path(config: AgentConfig) -> Path:
    """Return where ``droprun status`` keeps its summaries of the runs (pure)."""
    return config.state_dir / CACHE_NAME


def load_cache(path: Path, share: Path) -> Cache:
    """Return the cached summaries of ``share`` at ``path``; empty if there are none, or
    they are unreadable, corrupt, of another share or of another format. Entries are
    checked one by one when used (:func:`_valid`)."""
    try:
        data = json.loads(read_plain(path))
    except (OSError, ValueError, RecursionError):
        return {}  # no cache, or not one that can be used: every run.info is read
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or data.get("share") != str(share)
        or not isinstance(data.get("projects"), dict)
    ):
        return {}
    return {k: v for k, v in data["projects"].items() if isinstance(v, dict)}


def save_cache(path: Path, share: Path, projects: Cache) -> None:
    """Replace the cache at ``path`` atomically with ``projects``; do nothing if it cannot
    be written (the cache only saves time: status works without it)."""
    text = json.dumps({"format": CACHE_FORMAT, "share": str(share), "projects": projects})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"), sync="none")  # made again from run.info
    except OSError:
        pass  # a read-only or foreign state_dir: the next status reads the files again


# The type of each field of a cache entry, and whether it may be null instead.
_ENTRY_TYPES: tuple[tuple[type, bool], ...] = (
    *((int, False),) * 3,
    (str, False),
    (int, False),
    (str, False),
    (str, True),
    *((int, True),) * 3,
    (str, True),
)


def _valid(entry: Any) -> bool:
    """Return True if ``entry`` has an entry's shape and types (pure)."""
    return (
        type(entry) is list
        and len(entry) == len(_ENTRY_TYPES)
        and all(
            type(value) is kind or (nullable and value is None)
            for value, (kind, nullable) in zip(entry, _ENTRY_TYPES, strict=True)
        )
    )


def _valid_listing(listing: Any) -> bool:
    """Return True if ``listing`` has a listing's shape, types and run folder names (pure)."""
    return (
        type(listing) is list
        and len(listing) == 3
        and type(listing[0]) is int
        and type(listing[1]) is int
        and type(listing[2]) is list
        and all(type(name) is str and layout.RUN_DIR_RE.match(name) for name in listing[2])
    )


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


def _entry(run_dir: str, key: list[int]) -> Entry | None:
    """Read the run.info of ``run_dir``; return its entry under ``key``, None if unreadable."""
    path = run_dir + "/run.info"
    try:
        values = runinfo.head_values(runinfo.read_text(Path(path)), runinfo.SUMMARY_KEYS, path)
    except runinfo.RunInfoError:
        return None
    return [
        *key,
        str(values["project"]),
        values["run"],
        values["state"],
        _str(values.get("host")),
        _int(values.get("start_epoch")),
        _int(values.get("duration_s")),
        _int(values.get("exit_code")),
        _str(values.get("sweep_id")),
    ]


def _summary(run_dir: str, cached: Any, settled: int) -> tuple[Entry | None, bool]:
    """Return the entry of the run in ``run_dir`` (None if its run.info cannot be read):
    ``cached`` if its key is the run.info's, else read; and whether the cache may keep it."""
    try:
        st = os.stat(run_dir + "/run.info", follow_symlinks=False)
    except OSError:
        return None, False
    key = [st.st_ino, st.st_size, st.st_mtime_ns]
    if _valid(cached) and cached[:3] == key:
        return cached, True
    entry = _entry(run_dir, key)
    return entry, entry is not None and st.st_mtime_ns <= settled


def _run_names(folder: str, cached: Any, settled: int) -> tuple[list[str], Listing | None]:
    """Return the names of the run folders of the project ``folder``, by number: those of
    ``cached`` if its key is its results folder's; and the listing the cache may keep."""
    try:
        st = os.stat(folder + "/results")
    except (FileNotFoundError, NotADirectoryError):  # as layout.run_names
        return [], None
    key = [st.st_ino, st.st_mtime_ns]
    if _valid_listing(cached) and cached[:2] == key:
        return cached[2], cached
    names = [name for _, name in layout.run_names(folder)]
    return names, [*key, names] if st.st_mtime_ns <= settled else None


def _duration(entry: Entry, now: float) -> str:
    """Return the run's wall time as H:MM:SS: recorded, or so far while it runs (pure)."""
    start, duration, state = entry[7], entry[8], entry[5]
    if duration is not None:
        seconds = duration
    elif start is not None and state not in runinfo.TERMINAL:
        seconds = int(now) - start
    else:
        return "-"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _row(entry: Entry, now: float) -> list[str]:
    """Return the table row of a run's entry (pure but for the local time zone)."""
    start = entry[7]
    return [
        entry[3],
        f"run_{entry[4]}",
        entry[5],
        entry[6] or "-",
        time.strftime("%Y-%m-%d %H:%M", time.localtime(start)) if start else "-",
        _duration(entry, now),
        "-" if entry[9] is None else str(entry[9]),
    ]


def status_rows(
    config: AgentConfig, project: str | None = None, sweep: str | None = None
) -> list[list[str]]:
    """Return one row per run: project, run, state, host, start, duration, exit code.

    With ``sweep``, only that sweep's runs, each with its values as an eighth column.
    A listing of the whole share (no ``project``) brings the cache up to date.
    """
    now = time.time()
    settled = time.time_ns() - SETTLED_NS
    path = cache_path(config)
    cached = load_cache(path, config.share)
    fresh: Cache = {}
    rows = []
    names = [p.name for p in layout.project_dirs(config.share)] if project is None else [project]
    for name in names:
        folder = os.path.join(config.share, name)
        before = cached.get(name, {})
        kept: dict[str, Entry] = {}
        runs = before.get("runs")
        known: dict[str, Any] = runs if isinstance(runs, dict) else {}
        run_names, listing = _run_names(folder, before.get("listing"), settled)
        fresh[name] = {"runs": kept} if listing is None else {"listing": listing, "runs": kept}
        for run_name in run_names:
            run_dir = f"{folder}/results/{run_name}"
            entry, keep = _summary(run_dir, known.get(run_name), settled)
            if entry is None:
                if sweep is None:
                    rows.append([name, run_name, "?", "-", "-", "-", "-"])
                continue
            if keep:
                kept[run_name] = entry
            if sweep is not None and entry[10] != sweep:
                continue
            rows.append(_row(entry, now))
            if sweep is not None:
                rows[-1].append(_sweep_values(Path(run_dir)))
    if project is None and fresh != cached:
        save_cache(path, config.share, fresh)
    return rows


def _sweep_values(run_dir: Path) -> str:
    """Return a sweep run's values as ``lr=0.1 batch=64`` ("?" if run.info is unreadable)."""
    from agent.sweep import word

    try:
        values = runinfo.load(run_dir / "run.info").sweep or {}
    except runinfo.RunInfoError:
        return "?"
    return " ".join(f"{key}={word(value)}" for key, value in values.items())
