"""One run's record while the agent drives it: its run.info, its place, and its waits.

:class:`agent.runner.RunDriver` adds the phases. Every change is saved to ``run.info`` at
once (atomically), so an agent killed at any moment resumes from what is there.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import reuse, runinfo
from agent.context import RunContext
from agent.fsutil import read_plain
from agent.hosts.base import HostError, ProcStatus, RunRef
from agent.names import CANCEL_NAMES, SYNC_NAMES
from agent.runinfo import RunInfo
from agent.schema import RunSettings
from agent.settings import settings_from_table

RETRY_DELAY = 2.0
RETRY_DELAY_MAX = 60.0


def settings_from_info(info: RunInfo) -> RunSettings:
    """Rebuild the typed run settings frozen into ``info.effective``. Raises InvalidFile."""
    return settings_from_table(info.effective, "run.info")


@dataclass(frozen=True)
class Placement:
    """Where a run goes: the host, and the ids of the host's GPUs it holds."""

    host: str
    gpus: tuple[str, ...] = ()


class Stopped(Exception):
    """The agent is stopping; the run stays as it is, to be resumed later."""


class RunRecord:
    """The run.info of one run being driven, where it runs, and how it waits."""

    def __init__(self, ctx: RunContext, run_dir: Path, placement: Placement | None = None) -> None:
        """Load the run; ``placement`` is where the scheduler put it (default: its host)."""
        self.ctx = ctx
        self.run_dir = run_dir
        self.deferring = False  # inside saved_once: save() only notes that a save is due
        self.unsaved = False
        self.info_path = run_dir / "run.info"
        self.info = runinfo.load(self.info_path)
        self.written = _peek(self.info_path)  # to notice edits made by someone else
        self.settings = settings_from_info(self.info)
        self.placement = placement or Placement(self.info.host or self.settings.host)
        fresh_id = not self.info.run_id  # accepted by a version without run ids
        if fresh_id:
            self.info.run_id = runinfo.new_run_id()
        assert self.info.run_id is not None
        self.ref = RunRef(self.info.project, self.info.run, self.info.run_id)
        if self.record_placement() or fresh_id:
            self.save()
        self.host = ctx.hosts[self.placement.host]
        self.host_config = ctx.config.hosts[self.host.name]
        self.project_dir = run_dir.parent.parent
        self.uploaded_signature: str | None = None  # of bin/ as uploaded by this driver
        self.reason_before_full: str | None = None
        self.sync_seen: tuple[tuple[str, int, int], ...] = ()  # the sync files handled
        # The host's last word on an ended run whose log was then read to its end: the final
        # step need not ask again (None: it must, e.g. after a restart in ``finishing``).
        self.ended: ProcStatus | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def record_placement(self) -> bool:
        """Put the chosen host (and group) and the run's GPUs into ``info``; return True if
        that changed it."""
        info, placement = self.info, self.placement
        before = (info.host, info.group, info.gpus, info.gpu_ids)
        if self.settings.host in self.ctx.config.groups:
            info.group = self.settings.host
        info.host = placement.host
        if self.ctx.config.hosts[placement.host].gpus or placement.gpus:
            info.gpus, info.gpu_ids = len(placement.gpus), list(placement.gpus)
        return (info.host, info.group, info.gpus, info.gpu_ids) != before

    @contextlib.contextmanager
    def saved_once(self) -> Iterator[None]:
        """Within the block, save run.info once at its end instead of at every change.

        Only for changes a restart does not resume from (each save is an fsync).
        """
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
            if self.unsaved:
                self.save()

    def save(self, now: bool = False) -> None:
        """Write run.info atomically (inside :meth:`saved_once` only if ``now``); say so in
        the log if someone else changed it."""
        if self.deferring and not now:
            self.unsaved = True
            return
        self.unsaved = False
        if _peek(self.info_path) != self.written:
            self.ctx.log.warning(
                "%s: run.info was changed or removed by someone else; the agent rewrites it "
                "from its own record",
                self.ref.label,
            )
        data = runinfo.save(self.info_path, self.info)
        self.written = _peek(self.info_path)
        if data is None:
            self.ctx.on_change(self.run_dir)
        else:
            self.ctx.on_saved(self.run_dir, data)

    def move(self, state: str, reason: str | None = None) -> None:
        """Record a state change in run.info and the log."""
        self.info.transition(state, reason)
        self.save()
        extra = f" ({reason})" if reason else ""
        self.ctx.log.info("%s: %s%s", self.ref.label, state, extra)

    def cancel_requested(self) -> bool:
        """True if a person dropped a ``cancel`` (or ``cancel.txt``) file into the run folder."""
        return any((self.run_dir / name).exists() for name in CANCEL_NAMES)

    def sync_requested(self) -> bool:
        """True once per ``sync`` (or ``sync.txt``) file dropped or touched in the run
        folder since the last look: a person asks for a mirror now. The file stays."""
        stamp = []
        for name in SYNC_NAMES:
            try:
                st = (self.run_dir / name).lstat()
            except FileNotFoundError:
                continue
            stamp.append((name, st.st_ino, st.st_mtime_ns))
        fresh = bool(stamp) and tuple(stamp) != self.sync_seen
        self.sync_seen = tuple(stamp)
        return fresh

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken (a cancel or sync file); raise Stopped if the
        agent stops."""
        event = self.ctx.wakeups.get(self.run_dir)
        if event is None:
            self.ctx.stop.wait(seconds)
        elif not self.ctx.stop.is_set():
            event.wait(seconds)
            event.clear()
        if self.ctx.stop.is_set():
            raise Stopped

    def end(
        self,
        state: str,
        reason: str | None = None,
        exit_code: int | None = None,
        at: int | None = None,
    ) -> None:
        """Record the end time (``at``, default now) and move to the terminal ``state``."""
        now = int(self.ctx.clock()) if at is None else at
        self.info.end_epoch = now
        self.info.end_time = runinfo.date_string(now)
        if self.info.start_epoch is not None:
            self.info.duration_s = now - self.info.start_epoch
        if exit_code is not None:
            self.info.exit_code = exit_code
        reuse.drop_staged_code(self)
        self.move(state, reason)

    def retry(self, step: Callable[[], Any], what: str, *, wait_for_space: bool = False) -> Any:
        """Run ``step``, retrying transient HostErrors with backoff for up to wake_timeout.

        With ``wait_for_space``, a full share is waited out for as long as it takes (the
        reason is recorded in run.info meanwhile). Raises the last HostError (or OSError)
        when it is permanent or the time is up; Stopped on stop.
        """
        deadline = self.ctx.clock() + self.host_config.wake_timeout
        delay = RETRY_DELAY
        while True:
            try:
                result = step()
            except (HostError, OSError) as exc:
                if wait_for_space and share_full(exc):
                    self.note_share_full(exc)
                elif (
                    isinstance(exc, OSError)
                    or not exc.transient
                    or self.ctx.clock() + delay > deadline
                ):
                    raise
                else:
                    self.ctx.log.warning("%s: %s failed, retrying: %s", self.ref.label, what, exc)
                self.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX)
            else:
                if self.reason_before_full is not None:
                    self.info.reason = self.reason_before_full or None
                    self.reason_before_full = None
                    self.ctx.log.info("%s: the share has space again", self.ref.label)
                return result

    def note_share_full(self, exc: Exception) -> None:
        """Record in run.info (if it still fits) that the share is full, and log it."""
        if self.reason_before_full is None:
            self.reason_before_full = self.info.reason or ""
        self.info.reason = f"waiting for space on the share to finish the sync: {exc}"
        self.ctx.log.warning("%s: %s", self.ref.label, self.info.reason)
        try:
            self.save(now=True)  # the wait may be long: say why at once
        except OSError as save_exc:
            self.ctx.log.warning("%s: cannot update run.info: %s", self.ref.label, save_exc)


def _peek(path: Path, limit: int = 1 << 20) -> bytes | None:
    """Return up to ``limit`` bytes of the plain file ``path``, None if there is none, and
    b"" for anything else (a link, a FIFO someone put there): never blocks or follows."""
    try:
        return read_plain(path, limit)
    except FileNotFoundError:
        return None
    except OSError:
        return b""


def share_full(exc: BaseException) -> bool:
    """Return True if ``exc`` says a disk on the agent's side is full (pure)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)
