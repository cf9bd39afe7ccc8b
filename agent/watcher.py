"""Notices changes on the share and turns them into hints for the agent's intake.

Events are only hints: the intake confirms every request by its size and mtime, and a full
rescan catches anything missed. Two kinds of watcher:

- :class:`InotifyWatcher`: one inotify instance (``inotify_simple``, read by one thread of
  ours) with one watch on the share root, one on each project folder (never recursive:
  ``results/`` and ``bin/`` would eat the kernel's watch budget) and one on each run in
  flight (a ``cancel`` file wakes its driver). watchdog's public API cannot share one
  instance between folders: each ``Observer.schedule`` opens its own inotify instance and
  emitter thread, so 1,000 projects would be 1,000 threads and hit the default limit of
  128 inotify instances per user.
- :class:`PollWatcher`: watchdog's polling observer with a single emitter that lists only
  the share root and the files directly in each project folder, for network mounts where
  inotify sees nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from inotify_simple import INotify
from inotify_simple import flags as F
from watchdog.events import FileSystemEvent, FileSystemEventHandler, FileSystemMovedEvent
from watchdog.observers.polling import PollingObserverVFS

from agent.names import is_cancel_name, is_project_name, is_request_name, is_sync_name

HintKind = Literal["request", "project", "project_gone", "cancel", "sync", "rescan"]
POLL_INTERVAL = 1.0
LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE)
STOP_TIMEOUT = 5.0

_MASKS = {
    "share": F.CREATE | F.MOVED_TO | F.MOVED_FROM | F.DELETE | F.ONLYDIR,
    "project": F.CREATE
    | F.OPEN
    | F.CLOSE_NOWRITE
    | F.MODIFY
    | F.ATTRIB
    | F.CLOSE_WRITE
    | F.MOVED_TO
    | F.MOVED_FROM
    | F.DELETE
    | F.ONLYDIR,
    "run": F.CREATE | F.MOVED_TO | F.ONLYDIR,
}


@dataclass(frozen=True)
class Hint:
    """Something may have changed: a request file, a project folder, a run's cancel file.

    ``writing``: for a request, True if it was just opened, False if just closed, None if
    the watcher cannot tell.
    """

    kind: HintKind
    path: Path
    writing: bool | None = None


class WatchLimitError(OSError):
    """The kernel's inotify watch or instance limit is reached."""


class Watcher(Protocol):
    """Posts :class:`Hint` objects to ``hints`` from its own thread."""

    hints: queue.SimpleQueue[Hint]

    def start(self) -> None:
        """Start watching the share root."""
        ...

    def sync_projects(self, projects: Iterable[Path]) -> None:
        """Watch exactly these project folders. Raises WatchLimitError."""
        ...

    def sync_runs(self, run_dirs: Iterable[Path]) -> None:
        """Watch exactly these run folders (runs in flight). Raises WatchLimitError."""
        ...

    def stop(self) -> None:
        """Stop watching and release the threads and descriptors."""
        ...


# -- inotify -----------------------------------------------------------------------------


class InotifyWatcher:
    """Every watch on one inotify instance read by one thread."""

    def __init__(self, share: Path, hints: queue.SimpleQueue[Hint]) -> None:
        self.share = share
        self.hints = hints
        self._inotify: INotify | None = None
        self._reader: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that tells the reader to end
        # kind of folder -> path -> wd; wd -> (kind, path). The reader thread reads the
        # second map, the agent's main thread changes both, holding the lock around each
        # add_watch so that no event arrives for a wd the maps do not know yet.
        self._lock = threading.Lock()
        self._by_path: dict[str, dict[Path, int]] = {"share": {}, "project": {}, "run": {}}
        self._by_wd: dict[int, tuple[str, Path]] = {}

    def start(self) -> None:
        """Open the inotify instance and watch the share root. Raises WatchLimitError."""
        try:
            self._inotify = INotify()
        except OSError as exc:
            raise _limit_or_raise(exc) from exc
        self._wake = os.pipe()
        self._reader = threading.Thread(
            target=self._read_events,
            args=(self._inotify, self._wake[0]),
            name="droprun-inotify",
            daemon=True,
        )
        self._reader.start()
        self._add("share", self.share)

    def _add(self, kind: str, path: Path) -> None:
        """Watch ``path``; a folder that vanished meanwhile is left out. Raises WatchLimitError."""
        assert self._inotify is not None
        with self._lock:
            if path in self._by_path[kind]:
                return
            try:
                wd: int = self._inotify.add_watch(path, _MASKS[kind])
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return
                raise _limit_or_raise(exc) from exc
            self._by_path[kind][path] = wd
            self._by_wd[wd] = (kind, path)

    def _remove(self, kind: str, path: Path) -> None:
        """Stop watching ``path`` (no-op if it is not watched or its folder is gone)."""
        assert self._inotify is not None
        with self._lock:
            wd = self._by_path[kind].pop(path, None)
            if wd is None:
                return
            self._by_wd.pop(wd, None)
            try:
                self._inotify.rm_watch(wd)
            except OSError as exc:
                # EINVAL: the kernel dropped the watch already (its folder was deleted).
                if exc.errno != errno.EINVAL:
                    raise

    def _sync(self, kind: str, paths: Iterable[Path]) -> None:
        """Make the watched folders of ``kind`` exactly ``paths``. Raises WatchLimitError."""
        wanted = paths if isinstance(paths, set) else set(paths)
        with self._lock:
            have = set(self._by_path[kind])
        if have == wanted:
            return
        for gone in have - wanted:
            self._remove(kind, gone)
        for new in sorted(wanted - have):
            self._add(kind, new)

    def sync_projects(self, projects: Iterable[Path]) -> None:
        """Watch exactly ``projects`` (besides the share root). Raises WatchLimitError."""
        self._sync("project", projects)

    def sync_runs(self, run_dirs: Iterable[Path]) -> None:
        """Watch exactly ``run_dirs`` for a ``cancel`` file. Raises WatchLimitError."""
        self._sync("run", run_dirs)

    def stop(self) -> None:
        """End the reader thread and close the inotify instance (which drops every watch)."""
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
            self._reader = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._wake is not None:
            os.close(self._wake[0])
            os.close(self._wake[1])
            self._wake = None

    # -- the reader thread -----------------------------------------------------------------

    def _read_events(self, inotify: INotify, wake: int) -> None:
        """Turn events into hints until ``wake`` becomes readable."""
        poller = select.poll()
        poller.register(inotify.fileno(), select.POLLIN)
        poller.register(wake, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if wake in ready:
                return
            for event in inotify.read(timeout=0):
                self._on_event(event.wd, event.mask, event.name)

    def _on_event(self, wd: int, mask: int, name: str) -> None:
        """Turn one inotify event into a hint (cheap: no file system access)."""
        if mask & F.Q_OVERFLOW:
            self.hints.put(Hint("rescan", self.share))  # events were lost
            return
        with self._lock:
            if mask & F.IGNORED:
                # The watch is gone (its folder was deleted, or we removed it): forget it;
                # the next rescan settles the rest. The kernel does not reuse a wd soon.
                kind, folder = self._by_wd.pop(wd, ("", None))
                if folder is not None:
                    self._by_path[kind].pop(folder, None)
                return
            kind, folder = self._by_wd.get(wd, ("", None))
        if folder is None or not name:
            return
        path = folder / name
        is_dir = bool(mask & F.ISDIR)
        if kind == "share" and is_dir and is_project_name(name):
            gone = bool(mask & (F.DELETE | F.MOVED_FROM))
            self.hints.put(Hint("project_gone" if gone else "project", path))
        elif kind == "project" and not is_dir and is_request_name(name):
            writing: bool | None = None
            if mask & F.OPEN:
                writing = True
            elif mask & (F.CLOSE_WRITE | F.CLOSE_NOWRITE):
                writing = False
            self.hints.put(Hint("request", path, writing))
        elif kind == "run" and is_cancel_name(name):
            self.hints.put(Hint("cancel", folder))
        elif kind == "run" and is_sync_name(name):
            self.hints.put(Hint("sync", folder))


def _limit_or_raise(exc: OSError) -> OSError:
    """Return a WatchLimitError for the kernel's limits, else ``exc`` itself."""
    if exc.errno in LIMIT_ERRNOS:
        return WatchLimitError(exc.errno, f"{exc.strerror} (fs.inotify limits)")
    return exc


# -- polling -----------------------------------------------------------------------------


class _ShallowLister:
    """``listdir`` for watchdog's snapshots: the share root's folders, each project's requests."""

    def __init__(self, share: Path) -> None:
        self.share = os.fspath(share)

    def __call__(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        assert path is not None
        parent = os.path.dirname(path)
        with os.scandir(path) as entries:
            if path == self.share:
                wanted = [e for e in entries if is_project_name(e.name)]
            elif parent == self.share:
                wanted = [e for e in entries if is_request_name(e.name)]
            else:
                wanted = []
        return iter(wanted)


class _PollHandler(FileSystemEventHandler):
    """Maps the polling observer's events to hints."""

    def __init__(self, share: Path, hints: queue.SimpleQueue[Hint]) -> None:
        self.share = share
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Post a hint for a changed request or a new or removed project folder."""
        paths = [os.fsdecode(event.src_path)]
        if isinstance(event, FileSystemMovedEvent):
            paths.append(os.fsdecode(event.dest_path))
        for i, raw in enumerate(paths):
            path = Path(raw)
            if path.parent == self.share and event.is_directory:
                gone = event.event_type == "deleted" or (event.event_type == "moved" and i == 0)
                self.hints.put(Hint("project_gone" if gone else "project", path))
            elif path.parent.parent == self.share and is_request_name(path.name):
                self.hints.put(Hint("request", path))


class PollWatcher:
    """watchdog's polling observer with a single emitter over the share (two threads)."""

    def __init__(
        self, share: Path, hints: queue.SimpleQueue[Hint], interval: float = POLL_INTERVAL
    ) -> None:
        self.share = share
        self.hints = hints
        self.observer = PollingObserverVFS(
            os.stat, _ShallowLister(share), polling_interval=interval
        )
        self.observer.daemon = True

    def start(self) -> None:
        """Take the first snapshot and start polling."""
        self.observer.schedule(
            _PollHandler(self.share, self.hints), os.fspath(self.share), recursive=True
        )
        self.observer.start()

    def sync_projects(self, projects: Iterable[Path]) -> None:
        """Nothing to do: every snapshot lists every project folder."""

    def sync_runs(self, run_dirs: Iterable[Path]) -> None:
        """Nothing to do: a running driver looks for ``cancel`` and ``sync`` every few seconds."""

    def stop(self) -> None:
        """Stop the observer and wait for its threads."""
        self.observer.stop()
        self.observer.join(timeout=5.0)


def open_watcher(
    mode: str,
    share: Path,
    log: logging.Logger,
    hints: queue.SimpleQueue[Hint] | None = None,
) -> InotifyWatcher | PollWatcher:
    """Start the watcher for ``mode`` ("inotify" or "poll"); fall back to polling if inotify
    is out of watches.

    Hints go to ``hints`` (a new queue if not given), also the returned watcher's ``hints``.
    """
    hints = queue.SimpleQueue() if hints is None else hints
    if mode == "inotify":
        watcher = InotifyWatcher(share, hints)
        try:
            watcher.start()
            return watcher
        except WatchLimitError as exc:
            watcher.stop()
            log.error("cannot watch %s with inotify (%s); polling instead", share, exc)
    poller = PollWatcher(share, hints)
    poller.start()
    return poller
