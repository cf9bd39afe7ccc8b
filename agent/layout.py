"""The share's folders: its projects and their ``results/run_N`` run folders, listed
without reading a file, for the agent's scans, its index and ``droprun status``.

Cheap to import on purpose (no settings, no TOML): ``droprun status`` lists every run
of the share, and its start-up is part of what a person waits for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from agent.names import is_project_name

RUN_DIR_RE = re.compile(r"^run_(\d+)$")


def project_dirs(share: Path) -> list[Path]:
    """Return the folders directly under ``share`` that may hold requests, sorted by name."""
    try:
        entries = sorted(os.scandir(share), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        Path(e.path) for e in entries if is_project_name(e.name) and e.is_dir(follow_symlinks=False)
    ]


def run_names(project: str | Path) -> list[tuple[int, str]]:
    """Return (number, folder name) of every ``results/run_N`` of ``project``, by number.

    Names, not paths: ``droprun status`` lists ten thousand of them, and a Path each
    costs it more than the listing itself.
    """
    try:
        with os.scandir(os.path.join(project, "results")) as entries:
            runs = [
                (int(m.group(1)), e.name)
                for e in entries
                if (m := RUN_DIR_RE.match(e.name)) and e.is_dir(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(runs)


def run_dirs(project: Path) -> list[tuple[int, Path]]:
    """Return (number, folder) of every ``results/run_N`` of ``project``, by number."""
    results = project / "results"
    return [(n, results / name) for n, name in run_names(project)]


def iter_run_dirs(share: Path) -> Iterator[Path]:
    """Yield every run folder of every project of ``share``."""
    for project in project_dirs(share):
        for _, run_dir in run_dirs(project):
            yield run_dir
