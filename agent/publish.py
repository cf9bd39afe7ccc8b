"""The agent's publisher: one thread that keeps the status pages and the billing files on
the share current, and tells the notifier what happened to each run.

It is told of changes through ``RunContext.on_change`` (a queue put, so a run's driver never
waits for it). It reads every run.info once at start (:class:`agent.index.ShareIndex`),
then only the run that changed, so one state change costs the same on a share of ten runs
as of ten thousand: that run is read again, and its page, its project's page and
``droprun.html`` are made again, at most once every ``MIN_INTERVAL`` s (a run that changed
state five times in between is read once), and a page is written (atomically) only if its
text changed. The billing file of a month is written in the same rounds, once per round
however many of its runs ended. Every ``LOOK_EVERY`` s it looks at the logs of running
runs, so their pages follow the log and a stalled run is noticed. A failure here is logged
and never stops the agent or a run.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import billing, layout
from agent.context import RunContext
from agent.fsutil import atomic_write, read_plain
from agent.index import RunSummary, ShareIndex
from agent.pages import PAGE_NAME, ROOT_PAGE, project_page, root_page, run_page

MIN_INTERVAL = 2.0  # s between two rounds of page writing
LOOK_EVERY = 5.0  # s between two looks at the logs of running runs
RESCAN_EVERY = 30.0  # s between two looks for new projects and changed rejected requests
MAX_PAGE_READ = 64 << 20
BACKFILL_PER_ROUND = 25  # pages of older runs that have none, written per round

Event = tuple[Path, Mapping[str, Any] | None]
Listener = Callable[[RunSummary | None, RunSummary | None], None]
LogListener = Callable[[RunSummary, float], None]


class Publisher:
    """Pages and billing files, made from the share's index in one thread."""

    def __init__(self, ctx: RunContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.root = ctx.config.share
        self.clock = clock
        # (path, its run.info as just written or None: read it), or None to stop
        self.events: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self.index = ShareIndex(self.root)
        self.digests: dict[Path, bytes] = {}  # page -> sha256 of the text last written
        self.dirty_runs: set[Path] = set()
        self.dirty_projects: set[str] = set()
        self.dirty_root = False
        self.dirty_months: set[str] = set()  # billing files to write (months of ended runs)
        # told of, not read yet (in order, each once), with the data last saved, if known
        self.changes: dict[Path, Mapping[str, Any] | None] = {}
        self.log_sizes: dict[Path, int] = {}
        self.bills: dict[Path, tuple[RunSummary, billing.BillLine | None, str]] = {}
        self.backfill: list[Path] = []  # ended runs without a page (filed before pages were)
        self.on_run: list[Listener] = []  # told (before, now) of every run that changed
        self.on_log: list[LogListener] = []  # told (run, log mtime) of every running run
        self.thread = threading.Thread(target=self.serve, name="publish", daemon=True)

    # -- called from other threads ---------------------------------------------------------

    def changed(self, path: Path) -> None:
        """A run.info was written (``path``: the run folder) or a request rejected (the
        project folder). Returns at once."""
        self.events.put((path, None))

    def run_saved(self, path: Path, data: Mapping[str, Any]) -> None:
        """A run's driver saved its run.info (``path``: the run folder) as ``data``, which
        must not change after. Returns at once."""
        self.events.put((path, data))

    def start(self) -> None:
        """Start the thread (it reads the share's runs first)."""
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is pending and stop the thread (waiting up to ``timeout`` s)."""
        self.events.put(None)
        self.thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------

    def serve(self) -> None:
        """Read the share, then follow changes until :meth:`stop`."""
        self.guarded("read the share", self.load)
        next_round = next_look = time.monotonic()
        next_rescan = next_look + RESCAN_EVERY
        while True:
            pending = self.pending()
            wake = min(next_look, next_round) if pending else next_look
            events = self.wait(max(0.0, wake - time.monotonic()))
            stopping = None in events
            for event in events:
                if event is not None:
                    self.changes.pop(event[0], None)  # in the order of the last change
                    self.changes[event[0]] = event[1]
            now = time.monotonic()
            if now >= next_look or stopping:
                self.guarded("look at the logs", self.look_at_logs)
                next_look = now + LOOK_EVERY
            if now >= next_rescan:
                self.guarded("look at the projects", self.rescan)
                next_rescan = now + RESCAN_EVERY
            if self.pending() and (stopping or now >= next_round):
                changes, self.changes = self.changes, {}
                for path, data in changes.items():
                    self.guarded(f"follow {path}", self.note, path, data)
                months, self.dirty_months = self.dirty_months, set()
                if months:  # in rounds too: a burst of ended runs rewrites each month once
                    self.guarded("write the bills", self.write_bills, sorted(months))
                self.guarded("write the pages", self.write_pages, changes)
                next_round = now + MIN_INTERVAL
            if stopping:
                return

    def pending(self) -> bool:
        """True if some page is to be written."""
        return bool(
            self.changes
            or self.dirty_root
            or self.dirty_projects
            or self.dirty_runs
            or self.dirty_months
            or self.backfill
        )

    def guarded(self, what: str, step: Callable[..., object], *args: object) -> None:
        """Run ``step(*args)``; log (never raise) what goes wrong: publishing never stops
        the agent."""
        try:
            step(*args)
        except Exception:
            self.ctx.log.exception("publishing: cannot %s", what)

    def wait(self, timeout: float) -> list[Event | None]:
        """Return the events that arrive within ``timeout`` s (all queued by then)."""
        try:
            events = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def load(self) -> None:
        """Read every run, bring every month's billing file up to date, and mark the pages
        to write: the share's, every project's, and each run's that is missing or active."""
        self.index = ShareIndex.build(self.root)
        self.write_bills(None)
        self.dirty_root = True
        self.dirty_projects = set(self.index.projects)
        missing = []
        for run in self.index.runs():
            if run.active:
                self.dirty_runs.add(run.run_dir)
            elif not (run.run_dir / PAGE_NAME).exists():
                missing.append(run)
        # Oldest last, so that pop() takes the newest; a few per round, not all at once.
        self.backfill = [r.run_dir for r in sorted(missing, key=lambda r: r.accepted_at or "")]
        if self.backfill:
            self.ctx.log.info("writing the pages of %d earlier runs", len(self.backfill))

    def note(self, path: Path, data: Mapping[str, Any] | None = None) -> None:
        """Take one change: read the run (or the project's rejections) again, or take
        ``data``, its run.info as its driver saved it."""
        if path.parent.name != "results":
            if self.index.update_rejections(path):
                self.dirty_root = True
                self.dirty_projects.add(path.name)
            return
        before, now = self.index.update(path, data)
        self.dirty_root = True
        self.dirty_projects.add(path.parent.parent.name)
        if now is not None:
            self.dirty_runs.add(path)
            if now.terminal and (before is None or not before.terminal):
                line = billing.bill_line(now, self.ctx.config.hosts)
                if line is not None:
                    self.dirty_months.add(line.month)
        for listener in self.on_run:
            self.guarded(f"tell of {path}", listener, before, now)

    def rescan(self) -> None:
        """Follow what no run change tells: projects made or removed, rejected requests that
        their owners removed (one folder listing per project)."""
        present = {p.name: p for p in layout.project_dirs(self.root)}
        for name in set(self.index.projects) - set(present):
            del self.index.projects[name]
            self.index.rejections.pop(name, None)
            self.dirty_root = True
        for name, project in present.items():
            if name not in self.index.projects:
                self.index.projects[name] = {}
                self.dirty_root = True
            if self.index.update_rejections(project):
                self.dirty_root = True
                self.dirty_projects.add(name)

    def write_bills(self, months: list[str] | None) -> None:
        """Rewrite the billing files of ``months`` (None: of every month).

        Each run's line and CSV row are made once and kept while its summary is the same
        object (the index makes a new one when the run changes).
        """
        cache: dict[Path, tuple[RunSummary, billing.BillLine | None, str]] = {}
        for run in self.index.runs():
            entry = self.bills.get(run.run_dir)
            if entry is None or entry[0] is not run:
                line = billing.bill_line(run, self.ctx.config.hosts)
                entry = (run, line, "" if line is None else billing.month_row(line))
            cache[run.run_dir] = entry
        self.bills = cache
        lines = sorted(
            (line for _, line, _ in cache.values() if line is not None),
            key=lambda line: (line.at, line.run.project, line.run.run),
        )
        billing.write_months(self.root, lines, months, lambda line: cache[line.run.run_dir][2])

    def look_at_logs(self) -> None:
        """Mark the page of each running run whose log grew; tell the log listeners."""
        sizes: dict[Path, int] = {}
        for run in self.index.runs():
            if run.state != "running":
                continue
            try:
                st = (run.run_dir / "log.log").stat()
            except OSError:
                continue
            sizes[run.run_dir] = st.st_size
            if self.log_sizes.get(run.run_dir) != st.st_size:
                self.dirty_runs.add(run.run_dir)
            for listener in self.on_log:
                self.guarded(f"tell of {run.run_dir}'s log", listener, run, st.st_mtime)
        self.log_sizes = sizes

    def write_pages(self, known: Mapping[Path, Mapping[str, Any] | None] | None = None) -> None:
        """Make the marked pages and write those whose text changed; ``known``: the
        round's changes, with each run.info as its driver saved it (None: read the file)."""
        known = known or {}
        now = self.clock()
        runs, projects, share = self.dirty_runs, self.dirty_projects, self.dirty_root
        self.dirty_runs, self.dirty_projects, self.dirty_root = set(), set(), False
        for _ in range(min(BACKFILL_PER_ROUND, len(self.backfill))):
            runs.add(self.backfill.pop())
        for run_dir in sorted(runs):
            summary = self.index.projects.get(run_dir.parent.parent.name, {}).get(
                int(run_dir.name.removeprefix("run_"))
            )
            if summary is not None and run_dir.is_dir():
                self.write(run_dir / PAGE_NAME, run_page(summary, now, known.get(run_dir)))
        for project in sorted(projects):
            results = self.root / project / "results"
            if project in self.index.projects and results.is_dir():
                self.write(results / PAGE_NAME, project_page(self.index, project, now))
        if share:
            self.write(self.root / ROOT_PAGE, root_page(self.index, now))

    def write(self, path: Path, text: str) -> bool:
        """Write ``path`` atomically if its text changed; return True if it was written.

        Never through a folder that leads out of the share (a link a share user put there).
        """
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).digest()
        if self.digests.get(path) == digest:
            return False
        if path not in self.digests:  # first time since start: compare with the file
            try:
                if read_plain(path, MAX_PAGE_READ) == data:
                    self.digests[path] = digest
                    return False
            except OSError:
                pass
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            self.ctx.log.warning("%s: leads out of the share; page not written", path.parent)
            return False
        atomic_write(path, data, "none")  # made again from run.info at any time
        self.digests[path] = digest
        return True
