"""The agent: one per share. Takes requests as they settle, resumes runs, queues them per host."""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import layout, runinfo, share
from agent.context import RunContext
from agent.hosts.kinds import HostEnv, Kinds, open_host
from agent.hosts.sync import LocalRsync
from agent.names import is_request_name
from agent.notify import Notifier
from agent.problems import UserError
from agent.publish import Publisher
from agent.scheduler import Scheduler
from agent.schema import AgentConfig
from agent.watcher import Hint, Watcher, WatchLimitError, open_watcher

TICK = 0.5  # s: the longest the main loop sleeps (it notices a stop this fast)
OPEN_LIMIT = 300.0  # s: a request open this long with no change is taken all the same
JOIN_TIMEOUT = 5.0  # s: on stop, how long runs in the middle of a step are waited for

ACTIVE_FIRST = {
    runinfo.FINISHING: 0,
    runinfo.RUNNING: 1,
    runinfo.PENDING: 2,
    runinfo.UPLOADING: 3,
    runinfo.WAKING: 4,
    runinfo.QUEUED: 5,
    runinfo.ACCEPTED: 5,
}


@contextmanager
def share_lock(share_dir: Path) -> Iterator[None]:
    """Hold the share's agent lock for the ``with`` block.

    Raises UserError if another agent already serves ``share_dir``.
    """
    lock_dir = share_dir / ".droprun"
    lock_dir.mkdir(exist_ok=True)
    fd = os.open(lock_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"another droprun agent (pid {holder}) is already serving {share_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Intake:
    """Requests seen on the share, each accepted once it has stopped changing.

    Every event about a request (re)starts its settle clock; when ``settle`` seconds pass
    with no event and the same size and mtime, it is taken. A file that inotify saw opened
    and not yet closed is still being written (an SMB client may hold all of a small file
    until its close): it waits for the close, then settles, or ``OPEN_LIMIT`` s if the
    close event never comes. A request that could not be taken for a reason of the share
    is retried only once it changes.
    """

    def __init__(self, ctx: RunContext, scheduler: Scheduler) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.pending: dict[Path, tuple[tuple[int, int], float]] = {}
        self.writing: set[Path] = set()
        self.failed: dict[Path, tuple[int, int]] = {}

    def changed(self, path: Path, now: float, writing: bool | None = None) -> None:
        """An event says ``path`` changed (opened if ``writing``): restart its settle clock."""
        if writing:
            self.writing.add(path)
        elif writing is False:
            self.writing.discard(path)
        sig = share.signature(path)
        if sig is None:
            self.pending.pop(path, None)
            self.writing.discard(path)
        else:
            self.pending[path] = (sig, now)

    def wait_of(self, path: Path) -> float:
        """Return how long ``path`` must stay unchanged before it is taken."""
        return OPEN_LIMIT if path in self.writing else self.ctx.config.settle

    def seen(self, path: Path, now: float) -> None:
        """A scan found ``path``: start its settle clock unless it is settling already."""
        if path in self.pending:
            return
        sig = share.signature(path)
        if sig is not None and self.failed.get(path) != sig:
            self.pending[path] = (sig, now)

    def forget_failed(self, present: set[Path]) -> None:
        """Drop the failure records of requests that are gone."""
        self.failed = {p: sig for p, sig in self.failed.items() if p in present}

    def next_due(self) -> float | None:
        """Return when the next request may have settled (monotonic), or None."""
        if not self.pending:
            return None
        return min(since + self.wait_of(p) for p, (_, since) in self.pending.items())

    def take_settled(self, now: float) -> None:
        """Take every request unchanged for its wait, oldest mtime first."""
        due = [p for p, (_, since) in self.pending.items() if now - since >= self.wait_of(p)]
        for path in sorted(due, key=lambda p: (self.pending[p][0][1], p)):
            sig, _ = self.pending.pop(path)
            current = share.signature(path)
            if current is None:
                self.writing.discard(path)
                continue
            if current != sig:
                self.pending[path] = (current, now)
                continue
            if path in self.writing:
                self.ctx.log.warning("%s: open for %g s with no change; taken", path, OPEN_LIMIT)
                self.writing.discard(path)
            self.take(path, sig)

    def take(self, path: Path, sig: tuple[int, int]) -> None:
        """Accept or reject one settled request; failures are logged, never fatal."""
        try:
            result = share.accept(path, self.ctx.config)
        except FileNotFoundError:
            return  # renamed or deleted by its owner meanwhile
        except Exception:  # one bad request never stops the agent
            self.ctx.log.exception("%s: cannot take the request; retried once it changes", path)
            self.failed[path] = sig
            return
        if isinstance(result, share.Rejected):
            self.ctx.on_change(path.parent)
            self.ctx.log.warning(
                "%s: rejected (%d problem(s)), see %s",
                path,
                len(result.problems),
                result.error_file.name,
            )
            return
        for run in (result, *result.more):
            info = run.info
            self.ctx.log.info("%s/run_%d: accepted from %s", info.project, info.run, path.name)
            try:
                self.scheduler.submit(run.run_dir, info)
            except (OSError, runinfo.RunInfoError) as exc:
                self.ctx.log.error(
                    "%s/run_%d: cannot queue it (%s); it is queued at the next start",
                    info.project,
                    info.run,
                    exc,
                )


def resume(ctx: RunContext, scheduler: Scheduler) -> int:
    """Queue again every run on the share that is not terminal; return how many."""
    pending: list[tuple[int, str, int, Path, runinfo.RunInfo]] = []
    for run_dir in layout.iter_run_dirs(ctx.config.share):
        path = run_dir / "run.info"
        if not path.exists():
            continue
        try:
            if runinfo.load(path, summary=True).terminal:
                continue
            info = runinfo.load(path)  # in full: it is written back
        except runinfo.RunInfoError as exc:
            ctx.log.warning("%s: skipped: %s", run_dir, exc)
            continue
        if info.terminal:
            continue
        target = info.host or info.group
        if target not in ctx.hosts and target not in ctx.config.groups:
            ctx.log.error("%s: host %r is no longer configured", run_dir, target)
            info.transition(runinfo.ERROR, f"host {target!r} is no longer in the agent config")
            runinfo.save(path, info)
            continue
        pending.append((ACTIVE_FIRST[info.state], info.accepted_at or "", info.run, run_dir, info))
    for _, _, _, run_dir, info in sorted(pending, key=lambda p: p[:3]):
        ctx.log.info("%s/run_%d: resuming (%s)", info.project, info.run, info.state)
        scheduler.submit(run_dir, info)
    return len(pending)


def requests_in(project: Path) -> list[Path]:
    """Return the request files directly in ``project`` (none if it is gone)."""
    try:
        with os.scandir(project) as entries:
            return [Path(e.path) for e in entries if is_request_name(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []


class Agent:
    """The main loop's state: the intake, the scheduler and the watcher."""

    def __init__(self, ctx: RunContext, scheduler: Scheduler, *, once: bool) -> None:
        self.ctx = ctx
        self.root = ctx.config.share
        self.scheduler = scheduler
        self.intake = Intake(ctx, scheduler)
        self.once = once
        self.hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self.watcher: Watcher | None = None
        self.projects: set[Path] = set()

    def start_watching(self) -> None:
        """Start the watcher the config asks for (polling if inotify is out of watches)."""
        self.watcher = open_watcher(self.ctx.config.watch, self.root, self.ctx.log, self.hints)

    def sync_watches(self, *, projects: bool = True) -> None:
        """Watch the project folders (unless not ``projects``) and the runs in flight.

        Falls back to polling if inotify runs out of watches.
        """
        if self.watcher is None:
            return
        try:
            if projects:
                self.watcher.sync_projects(self.projects)
            self.watcher.sync_runs(self.ctx.wakeups.run_dirs())
        except WatchLimitError as exc:
            self.ctx.log.error(
                "inotify cannot watch all %d project folders (%s); polling the share instead",
                len(self.projects),
                exc,
            )
            self.watcher.stop()
            self.watcher = open_watcher("poll", self.root, self.ctx.log, self.hints)

    def rescan(self) -> None:
        """Look at the whole share: every project folder and every waiting request."""
        now = time.monotonic()
        self.projects = set(layout.project_dirs(self.root))
        self.sync_watches()
        present = share.find_requests(self.root)
        for path in present:
            self.intake.seen(path, now)
        self.intake.forget_failed(set(present))

    def handle(self, hint: Hint) -> None:
        """Act on one hint from the watcher."""
        now = time.monotonic()
        if hint.kind == "request":
            self.intake.changed(hint.path, now, hint.writing)
        elif hint.kind in ("cancel", "sync"):
            self.ctx.wakeups.wake(hint.path)
        elif hint.kind == "rescan":  # events were lost, open/close ones too
            self.intake.writing.clear()
            self.rescan()
        elif hint.kind == "project_gone":
            self.projects.discard(hint.path)
            self.sync_watches()
        elif hint.path.is_dir() and not hint.path.is_symlink():  # a new project folder
            self.projects.add(hint.path)
            self.sync_watches()
            # Requests written before the watch existed have sent no event.
            for path in requests_in(hint.path):
                self.intake.seen(path, now)

    def wait_for_hints(self, timeout: float) -> None:
        """Handle every hint that arrives within ``timeout`` s (at least the first one)."""
        try:
            hint = self.hints.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        while True:
            self.handle(hint)
            try:
                hint = self.hints.get_nowait()
            except queue.Empty:
                return

    def loop(self) -> None:
        """Run until ``ctx.stop`` (or, with ``once``, until nothing is left to do)."""
        rescan_every = self.ctx.config.rescan
        next_rescan = time.monotonic() + rescan_every
        while not self.ctx.stop.is_set():
            now = time.monotonic()
            due = self.intake.next_due()
            wake_at = min(now + TICK, due if due is not None else now + TICK)
            if not self.once:
                wake_at = min(wake_at, next_rescan)
            self.wait_for_hints(wake_at - now)
            now = time.monotonic()
            if not self.once and now >= next_rescan:
                self.rescan()
                next_rescan = now + rescan_every
            self.intake.take_settled(now)
            if self.once and not self.intake.pending and not self.scheduler.busy():
                return
            self.sync_watches(projects=False)  # project folders change only on hints

    def close(self) -> None:
        """Stop the watcher."""
        if self.watcher is not None:
            self.watcher.stop()


def serve(ctx: RunContext, *, once: bool) -> None:
    """Run the agent on ``ctx.config.share`` until ``ctx.stop`` is set.

    With ``once``: take every request there is now, finish every run, and return.
    On stop, runs in the middle of a step (an upload, say) are left in their state for
    the next start. Raises UserError if another agent serves the share.
    """
    with share_lock(ctx.config.share):
        publisher, notifier = Publisher(ctx), Notifier(ctx)
        publisher.on_run.append(notifier.saw)
        publisher.on_log.append(notifier.log_seen)
        ctx.on_change = publisher.changed
        ctx.on_saved = publisher.run_saved
        notifier.start()
        publisher.start()
        scheduler = Scheduler(ctx)
        scheduler.start()
        agent = Agent(ctx, scheduler, once=once)
        try:
            resume(ctx, scheduler)
            if not once:
                agent.start_watching()
            agent.rescan()
            agent.loop()
        finally:
            ctx.request_stop()
            agent.close()
            for run_dir in scheduler.join(JOIN_TIMEOUT):
                ctx.log.info("%s: stopped in the middle of a step; resumed at next start", run_dir)
            publisher.stop()
            notifier.stop()
            for host in ctx.hosts.values():
                host.close()


def child_pids() -> list[int]:
    """Return the pids of this process's children (read from /proc)."""
    me = str(os.getpid())
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        if fields[1] == me:
            children.append(int(entry.name))
    return children


def terminate_children(log: logging.Logger) -> list[int]:
    """SIGTERM every child process left (an rsync in flight); return their pids.

    For the agent process only, after :func:`serve` returned: its children are its own
    rsync and helper commands. Training processes are never among them (they run in
    their own session, reparented away from the agent once launched).
    """
    pids = child_pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        log.info("stopped child process %d (a step left for the next start)", pid)
    return pids


def make_context(
    config: AgentConfig, log: logging.Logger, kinds: Kinds | None = None
) -> RunContext:
    """Open every configured host (lazily connecting) and return the agent's context.

    ``kinds`` replaces the registry of host kinds (for tests and plug-ins).
    """
    env = HostEnv(config.state_dir, share.share_id(config.share), LocalRsync(), config.log_every)
    hosts = {name: open_host(hc, env, kinds) for name, hc in config.hosts.items()}
    return RunContext(config=config, hosts=hosts, log=log)
