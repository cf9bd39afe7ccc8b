"""Notices when a run ends or stalls, sent through Apprise from the agent's own thread.

The publisher tells the notifier of every run change and, every few seconds, of each
running run's log; the notifier queues a notice and its thread sends it, so a slow or dead
service never holds up a run or the agent. Each URL gets a few tries with short timeouts;
what became of each notice is recorded in the run's run.info under ``[notify]`` (by URL
scheme and host only: the rest of a URL may hold a token) once the run has ended, when
no driver writes that run.info any more. A run is reported stalled once per agent start.

URLs: the admin's ``[notify] urls`` in droprun.toml (any Apprise scheme), plus a project's
own ``[notify] urls`` in its project.toml (web services only, never this machine: checked
when the file is read, and the host's addresses again before each send).
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent import runinfo
from agent.context import RunContext
from agent.html import clock
from agent.index import RunSummary
from agent.pages import PAGE_NAME, log_tail
from agent.problems import InvalidFile
from agent.settings import read_project_layer

TRIES = 3
BACKOFF = (1.0, 2.0)  # s between tries
TIMEOUT = 2.0  # s: Apprise's connect and read timeouts, unless a URL sets its own
FLUSH_SECONDS = 10.0  # s: on stop, how long queued notices may still take
LOG_LINES = 10


@dataclass(frozen=True)
class Notice:
    """One notice to send: ``event`` is a terminal state or "stalled"."""

    run: RunSummary
    event: str
    idle: float = 0.0


def with_timeouts(url: str) -> str:
    """Return ``url`` with Apprise's ``cto``/``rto`` set to TIMEOUT unless it sets them (pure)."""
    query = urlsplit(url).query
    extra = [f"{key}={TIMEOUT:g}" for key in ("cto", "rto") if f"{key}=" not in query]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def shown(url: str) -> str:
    """Return the part of ``url`` that may be written on the share: scheme and host (pure)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.split(":", 1)[0] + "://?"
    return f"{parts.scheme}://{host}{port}"


def reaches_this_machine(url: str) -> bool:
    """Return True if the host of ``url`` resolves to a loopback, link-local or unspecified
    address (or does not resolve)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return True
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            return True
    return False


def message(notice: Notice) -> tuple[str, str]:
    """Return the title and body of ``notice`` (reads the run's log tail)."""
    run = notice.run
    label = f"{run.project}/run_{run.run}" + (f' "{run.name}"' if run.name else "")
    what = (
        f"stalled: its log has not grown for {clock(int(notice.idle))}"
        if notice.event == "stalled"
        else run.state
    )
    lines = [
        f"{label}: {what}",
        f"state: {run.state}" + (f" ({run.reason})" if run.reason else ""),
        f"duration: {clock(run.seconds(time.time())) or '-'}, exit code: "
        + ("-" if run.exit_code is None else str(run.exit_code)),
        f"host: {run.host or '-'}" + (f", client: {run.client}" if run.client else ""),
        f"run folder: {run.run_dir}",
        f"page: {run.run_dir / PAGE_NAME}",
        "",
        "last lines of log.log:",
        *log_tail(run.run_dir / "log.log")[-LOG_LINES:],
    ]
    return f"droprun: {label} {what}", "\n".join(lines) + "\n"


class Notifier:
    """The notice queue and the thread that sends from it."""

    def __init__(self, ctx: RunContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.settings = ctx.config.notify
        self.clock = clock
        self.jobs: queue.Queue[Notice | None] = queue.Queue()
        self.stalled: set[Path] = set()
        self.pending: dict[Path, dict[str, str]] = {}  # records of runs not yet ended
        self.deadline: float | None = None  # set on stop
        self.thread = threading.Thread(target=self.serve, name="notify", daemon=True)

    # -- told by the publisher's thread ------------------------------------------------

    def saw(self, before: RunSummary | None, now: RunSummary | None) -> None:
        """A run changed: queue a notice if it has just ended in a state of ``on``."""
        if now is None or not now.terminal or (before is not None and before.terminal):
            return
        if now.state in self.settings.on:
            self.jobs.put(Notice(now, now.state))
        elif now.run_dir in self.pending:
            self.jobs.put(Notice(now, ""))  # only to record the stalled notice

    def log_seen(self, run: RunSummary, mtime: float) -> None:
        """A running run's log was last written at ``mtime``: queue a notice once if stalled."""
        if "stalled" not in self.settings.on or run.run_dir in self.stalled:
            return
        idle = self.clock() - max(mtime, run.start_epoch or 0)
        if idle >= self.settings.stalled_after:
            self.stalled.add(run.run_dir)
            self.jobs.put(Notice(run, "stalled", idle))

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Start sending."""
        self.thread.start()

    def stop(self) -> None:
        """Send what is queued, for at most FLUSH_SECONDS, then stop the thread."""
        self.deadline = time.monotonic() + FLUSH_SECONDS
        self.jobs.put(None)
        self.thread.join(FLUSH_SECONDS + 2 * TIMEOUT)

    def serve(self) -> None:
        """Send notices until the stop marker."""
        while True:
            notice = self.jobs.get()
            if notice is None:
                return
            try:
                self.handle(notice)
            except Exception:  # a notice never stops the agent
                self.ctx.log.exception("%s: cannot send its notice", notice.run.run_dir)

    def handle(self, notice: Notice) -> None:
        """Send one notice to every URL and record the outcome."""
        run = notice.run
        if notice.event:
            urls = [(url, False) for url in self.settings.urls]
            urls += [(url, True) for url in self.project_urls(run)]
            if not urls:
                return
            title, body = message(notice)
            results = [self.deliver(url, title, body, web_only) for url, web_only in urls]
            record = "; ".join(results) + f" ({runinfo.now_iso()})"
            self.pending.setdefault(run.run_dir, {})[notice.event] = record
        if run.terminal:
            self.record(run.run_dir)

    def project_urls(self, run: RunSummary) -> tuple[str, ...]:
        """Return the notice URLs of ``run``'s project.toml (none if it has none or is bad)."""
        path = self.ctx.config.share / run.project / "project.toml"
        try:
            layer = read_project_layer(path, self.ctx.config.targets)
        except InvalidFile as exc:
            self.ctx.log.warning("%s: its notice URLs are not used: %s", path, exc)
            return ()
        return tuple(layer.get("notify", {}).get("urls", ()))

    def deliver(self, url: str, title: str, body: str, web_only: bool) -> str:
        """Send to one URL with retries; return what happened, for run.info and the log."""
        import apprise  # only when a notice is sent: it takes a while to import

        where = shown(url)
        if web_only and reaches_this_machine(url):
            self.ctx.log.warning("notice to %s refused: it leads to this machine", where)
            return f"{where}: refused (leads to this machine)"
        for attempt in range(1, TRIES + 1):
            service = apprise.Apprise()
            if not service.add(with_timeouts(url)):
                self.ctx.log.error("notice URL %s: Apprise does not understand it", where)
                return f"{where}: not an Apprise URL"
            if service.notify(title=title, body=body):
                return f"{where}: sent"
            late = self.deadline is not None and time.monotonic() >= self.deadline
            if attempt == TRIES or late:
                break
            self.ctx.log.warning("notice to %s failed (try %d); trying again", where, attempt)
            time.sleep(BACKOFF[min(attempt, len(BACKOFF)) - 1])
        self.ctx.log.error("notice to %s failed after %d tries", where, attempt)
        return f"{where}: failed after {attempt} tries"

    def record(self, run_dir: Path) -> None:
        """Write the recorded notices of an ended run into its run.info ``[notify]``."""
        records = self.pending.pop(run_dir, None)
        if not records:
            return
        path = run_dir / "run.info"
        try:
            info = runinfo.load(path)
            info.notify.update(records)
            runinfo.save(path, info)
        except (OSError, runinfo.RunInfoError) as exc:
            self.ctx.log.warning("%s: cannot record its notices: %s", run_dir, exc)
            return
        self.ctx.on_change(run_dir)
