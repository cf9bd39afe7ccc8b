"""InotifyWatcher on a real folder: the hints it posts, watches that vanish, a clean stop."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify_simple import flags

from agent.watcher import Hint, InotifyWatcher, open_watcher

DEADLINE = 10.0


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[InotifyWatcher]:
    share = tmp_path / "share"
    share.mkdir()
    w = InotifyWatcher(share, queue.SimpleQueue())
    w.start()
    yield w
    w.stop()


def next_hint(w: InotifyWatcher, kind: str, writing: bool | None = None) -> Hint:
    """Return the next hint of ``kind`` (and ``writing``, if given), skipping others; fail
    if none comes in time."""
    while True:
        try:
            hint = w.hints.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no {kind} hint within {DEADLINE} s") from None
        if hint.kind == kind and (writing is None or hint.writing == writing):
            return hint


def test_projects_requests_and_cancels_become_hints(watcher: InotifyWatcher) -> None:
    project = watcher.share / "alpha"
    project.mkdir()
    assert next_hint(watcher, "project") == Hint("project", project)

    watcher.sync_projects({project})
    request = project / "run.request"
    with open(request, "w") as out:
        assert next_hint(watcher, "request", writing=True).path == request  # IN_OPEN
        out.write("x = 1\n")
    assert next_hint(watcher, "request", writing=False).path == request  # IN_CLOSE_WRITE
    (project / "notes.txt").write_text("not a request")
    (project / "b.request.txt").write_text("")
    assert next_hint(watcher, "request").path == project / "b.request.txt"

    run = project / "results" / "run_0"
    run.mkdir(parents=True)
    watcher.sync_runs([run])
    (run / "cancel").write_text("")
    assert next_hint(watcher, "cancel") == Hint("cancel", run)

    os.rename(project, watcher.share / ".alpha-old")
    assert next_hint(watcher, "project_gone") == Hint("project_gone", project)


def test_a_deleted_project_folder_is_forgotten_and_watched_again_when_back(
    watcher: InotifyWatcher,
) -> None:
    project = watcher.share / "p"
    project.mkdir()
    watcher.sync_projects([project])
    shutil.rmtree(project)
    assert next_hint(watcher, "project_gone") == Hint("project_gone", project)
    # The kernel drops the watch (IN_IGNORED); syncing to the same set then re-adds it.
    project.mkdir()
    watcher.sync_projects([project])
    (project / "run.request").write_text("")
    assert next_hint(watcher, "request").path == project / "run.request"
    watcher.sync_projects([])
    watcher.sync_projects([watcher.share / "never-made"])  # vanished meanwhile: left out


def test_a_lost_event_queue_asks_for_a_rescan(watcher: InotifyWatcher) -> None:
    # The kernel reports an overflow with wd -1; the limit is global, so it is not provoked.
    watcher._on_event(-1, flags.Q_OVERFLOW, "")
    assert watcher.hints.get_nowait() == Hint("rescan", watcher.share)


def test_stop_ends_the_reader_thread_and_closes_every_descriptor(tmp_path: Path) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    (tmp_path / "share" / "p").mkdir(parents=True)
    w = open_watcher("inotify", tmp_path / "share", logging.getLogger("test"))
    assert isinstance(w, InotifyWatcher)
    w.sync_projects([tmp_path / "share" / "p"])
    w.stop()
    assert threading.active_count() == threads_before
    assert set(os.listdir("/proc/self/fd")) == fds_before
