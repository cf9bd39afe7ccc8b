"""Drives one run from ``accepted`` to a terminal state, and resumes it after a restart.

Every step reads and writes ``run.info`` so that an agent killed at any moment can pick the
run up again: ``uploading`` redoes the upload (launching is idempotent on the host),
``running`` reattaches to the process, ``finishing`` redoes the final sync.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import envcapture, reuse, runinfo
from agent.archive import make_archive, tree_signature
from agent.context import RunContext
from agent.fsutil import read_plain
from agent.hosts.base import HostError, LaunchSpec, ProcStatus, RunRef
from agent.names import CANCEL_NAMES
from agent.runinfo import RunInfo
from agent.schema import RunSettings
from agent.settings import settings_from_table

# The launcher on the host ends a run at its limit; the agent steps in only this much
# later (a launcher killed from outside, or a host clock far off).
TIMEOUT_SLACK = 30.0
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


class RunDriver:
    """Takes one run folder through its states on one host."""

    def __init__(self, ctx: RunContext, run_dir: Path, placement: Placement | None = None) -> None:
        """Load the run; ``placement`` is where the scheduler put it (default: its host)."""
        self.ctx = ctx
        self.run_dir = run_dir
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

    def save(self) -> None:
        """Write run.info atomically; say so in the log if someone else changed it."""
        if _peek(self.info_path) != self.written:
            self.ctx.log.warning(
                "%s: run.info was changed or removed by someone else; the agent rewrites it "
                "from its own record",
                self.ref.label,
            )
        runinfo.save(self.info_path, self.info)
        self.written = _peek(self.info_path)
        self.ctx.on_change(self.run_dir)

    def move(self, state: str, reason: str | None = None) -> None:
        """Record a state change in run.info and the log."""
        self.info.transition(state, reason)
        self.save()
        extra = f" ({reason})" if reason else ""
        self.ctx.log.info("%s: %s%s", self.ref.label, state, extra)

    def cancel_requested(self) -> bool:
        """True if a person dropped a ``cancel`` (or ``cancel.txt``) file into the run folder."""
        return any((self.run_dir / name).exists() for name in CANCEL_NAMES)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken (a cancel file); raise Stopped if the agent stops."""
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

    # -- the phases --------------------------------------------------------------------

    def drive(self) -> None:
        """Run every remaining phase. Returns when terminal or when the agent stops."""
        try:
            if self.info.state in (runinfo.ACCEPTED, runinfo.QUEUED, runinfo.WAKING):
                if self.cancel_requested():
                    self.end(runinfo.CANCELLED, "cancelled before it started")
                    return
                self.prepare()
            if self.info.state == runinfo.UPLOADING:
                self.upload_and_launch()
            if self.info.state in (runinfo.PENDING, runinfo.RUNNING):
                self.watch()
            if self.info.state == runinfo.FINISHING:
                self.finish()
        except Stopped:
            self.ctx.log.info("%s: left %s for the next start", self.ref.label, self.info.state)
        except OSError:
            if self.run_dir.is_dir():
                raise
            self.abandon()
        except HostError as exc:
            if self.ctx.stop.is_set():  # e.g. an rsync killed by the agent's own shutdown
                self.ctx.log.info(
                    "%s: left %s for the next start (%s)", self.ref.label, self.info.state, exc
                )
            elif not self.info.terminal:
                self.end(runinfo.ERROR, f"host {self.host.name}: {exc}")

    def prepare(self) -> None:
        """Check the code is there, wake the host if needed, and move to ``uploading``."""
        script = self.project_dir / "bin" / self.settings.run_script
        if not self.settings.code_from and not (script.is_file() or script.is_symlink()):
            self.end(
                runinfo.ERROR, f"run_script {self.settings.run_script!r} does not exist in bin/"
            )
            return
        if not self.host.reachable():
            if self.info.state != runinfo.WAKING:
                self.move(runinfo.WAKING, f"waiting for host {self.host.name} to answer")
            self.host.wake()
            self.host.wait_ready(self.host_config.wake_timeout)
        self.move(runinfo.UPLOADING)

    def upload_and_launch(self) -> None:
        """Upload ``bin/``, start the script, and move to ``running``.

        The archive is made once the script runs (gzip of a large bin/ takes seconds);
        a fingerprint taken before the upload tells whether it still matches.
        """
        self.host.run_starting()
        # Checked again here, and the real path used from now on: bin/ may have been
        # swapped for a link out of the share while the run was queued.
        bin_dir = (self.project_dir / "bin").resolve()
        if not bin_dir.is_relative_to(self.ctx.config.share.resolve()):
            self.end(runinfo.ERROR, "bin/ is a link that points outside the share")
            return
        if self.settings.code_from is not None:
            staged = reuse.stage_code(self)  # run N's archived code, not today's bin/
            if staged is None:
                return
            bin_dir = staged
        self.uploaded_signature = tree_signature(bin_dir, self.settings.exclude)
        self.info.remote_dir = self.host.remote_dir(self.ref)
        versions = self.retry(self.host.rsync_versions, "rsync version check")
        self.info.rsync_local, self.info.rsync_remote = versions.local, versions.remote
        uploaded = self.retry(
            lambda: self.host.upload(self.ref, bin_dir, self.settings.exclude), "upload"
        )
        self.info.bytes_uploaded = uploaded.bytes_sent
        if uploaded.moved_aside:
            self.info.moved_aside = uploaded.moved_aside
            self.ctx.log.warning(
                "%s: %s held another run's dir; moved it aside to %s (kept, not adopted)",
                self.ref.label,
                self.info.remote_dir,
                uploaded.moved_aside,
            )
        reuse.drop_staged_code(self)
        self.save()
        if self.cancel_requested():
            self.host.cleanup(self.ref)
            self.end(runinfo.CANCELLED, "cancelled before it started")
            return
        if not reuse.seed_output(self):  # resume_from: output_dir filled before the start
            return
        spec = self.launch_spec()
        handed = int(self.ctx.clock())
        launched = self.retry(lambda: self.host.launch(self.ref, spec), "launch")
        self.info.job_id, self.info.remote_pid = launched.job_id, launched.pid
        self.info.gpu_names = self.read_gpu_names(spec.cuda_visible_devices)
        if launched.start_epoch is None:  # the host queued it: the clock has not started
            self.info.queued_s = handed  # when it was handed over, until it starts
            self.move(runinfo.PENDING, f"waiting for resources on {self.host.name}")
        else:  # started at once: no time queued on the host
            self.started(launched.start_epoch, launched.start_epoch)

    def started(self, start: int, handed: int | None = None) -> None:
        """Record that the script started at ``start`` (the host's clock) and move to
        ``running``; the time since the run was ``handed`` to the host is ``queued_s``."""
        handed = handed if handed is not None else self.info.queued_s
        self.info.queued_s = max(0, start - handed) if handed is not None else 0
        self.info.start_epoch = start
        self.info.start_time = runinfo.date_string(start)
        if self.info.state == runinfo.PENDING:
            self.info.reason = None  # the wait is over
        self.move(runinfo.RUNNING)

    def archive(self) -> None:
        """Write ``bin.tar.gz`` and its figures into run.info; whatever makes the archive
        differ from the uploaded code is said in ``bin_note``.

        Never fails the run (the script is already running).
        """
        if self.settings.code_from is not None:
            reuse.archive_from_run(self)
            return
        bin_dir = (self.project_dir / "bin").resolve()
        if not bin_dir.is_relative_to(self.ctx.config.share.resolve()):
            # Swapped for a link out of the share since the upload: archiving it would
            # copy files from outside the share into it.
            self.note_bin("bin/ became a link out of the share after the upload: not archived")
            return
        try:
            before = tree_signature(bin_dir, self.settings.exclude)
            if before == self.uploaded_signature and reuse.link_unchanged_archive(self, before):
                return
            archive = make_archive(bin_dir, self.settings.exclude, self.run_dir / "bin.tar.gz")
            after = tree_signature(bin_dir, self.settings.exclude)
            moved_on = self.uploaded_signature != after
        except OSError as exc:
            self.note_bin(f"bin/ could not be archived: {exc}")
            return
        self.info.bin_files, self.info.bin_bytes = archive.files, archive.bytes
        self.info.bin_sha256 = archive.sha256
        notes = []
        if archive.skipped:
            notes.append(f"left out (gone or no longer a plain file): {_few(archive.skipped)}")
        if archive.changed:
            notes.append(f"changed while being archived: {_few(archive.changed)}")
        if moved_on:
            notes.append("bin/ changed after the upload (or the agent restarted in between)")
        reuse.link_equal_archive(self, archive, None if notes else after)
        if notes:
            self.note_bin("; ".join(notes) + "; bin.tar.gz may differ from the code that runs")
        else:
            self.save()

    def note_bin(self, note: str) -> None:
        """Record in run.info (and the log) why bin.tar.gz is missing or differs."""
        self.info.bin_note = note
        self.ctx.log.warning("%s: %s", self.ref.label, note)
        self.save()

    def read_gpu_names(self, devices: str | None) -> list[str] | None:
        """Return the names of the run's GPUs, or None if the host cannot tell.

        Only for the record: a failure is logged and the run goes on.
        """
        try:
            return self.host.gpu_names(devices)
        except HostError as exc:
            self.ctx.log.warning("%s: cannot read GPU names: %s", self.ref.label, exc)
            return None

    def launch_spec(self) -> LaunchSpec:
        """Return what the launcher needs; CUDA_VISIBLE_DEVICES names exactly the GPUs the
        scheduler gave the run (left unset on a host that lists no GPUs)."""
        listed = self.host_config.gpus or self.placement.gpus
        s = self.settings
        return LaunchSpec(
            run_script=s.run_script,
            args=s.args,
            env=dict(s.env) | reuse.extra_env(self),
            setup=s.setup,
            conda_env=s.conda_env,
            output_dir=s.output_dir,
            cuda_visible_devices=",".join(self.placement.gpus) if listed else None,
            run_id=self.ref.run_id,
            timeout=s.timeout,
            kill_grace=self.ctx.config.kill_grace,
        )

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
            self.save()
        except OSError as save_exc:
            self.ctx.log.warning("%s: cannot update run.info: %s", self.ref.label, save_exc)

    def abandon(self) -> None:
        """The run folder was deleted by a person: stop the run on the host and forget it."""
        self.ctx.log.warning(
            "%s: the run folder %s was deleted; stopping the run and cleaning up the host",
            self.ref.label,
            self.run_dir,
        )
        try:
            self.host.kill(self.ref, self.ctx.config.kill_grace)
            self.host.cleanup(self.ref)
        except HostError as exc:
            self.ctx.log.error("%s: cannot clean up after it: %s", self.ref.label, exc)

    def pull_log(self) -> None:
        """Append the log's new bytes to ``log.log`` (never through a link someone put there:
        the script's output would be appended to any file the agent may write)."""
        log_path = self.run_dir / "log.log"
        if log_path.is_symlink():
            self.ctx.log.warning("%s: log.log was replaced by a link; removed", self.ref.label)
            log_path.unlink()
        offset = log_path.stat().st_size if log_path.exists() else 0
        while True:
            chunk = self.host.read_log(self.ref, offset)
            if not chunk:
                return
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            with os.fdopen(os.open(log_path, flags, 0o666), "ab") as out:
                out.write(chunk)
            offset += len(chunk)

    def mirror(self, final: bool = False) -> int:
        """Mirror ``output_dir`` into ``output/``, count the bytes; return files still pending."""
        result = self.host.mirror(
            self.ref, self.settings.output_dir, self.run_dir / "output", final=final
        )
        self.info.bytes_mirrored += result.bytes_received
        self.save()
        return result.files_pending

    def watch(self) -> None:
        """Stream the log and mirror outputs until the process ends, times out or is cancelled."""
        if self.info.bin_sha256 is None:
            self.archive()
        if self.info.environment is None:
            envcapture.capture(self, self.launch_spec().cuda_visible_devices)
        last_mirror = self.ctx.clock()
        failing_since: float | None = None
        while True:
            if not self.run_dir.is_dir():
                raise FileNotFoundError(errno.ENOENT, "run folder deleted", str(self.run_dir))
            try:
                status = self.host.status(self.ref)
                if self.info.state == runinfo.PENDING and status.state != "pending":
                    self.started(status.start_epoch or int(self.ctx.clock()))
                self.pull_log()
                if status.state in ("exited", "vanished"):
                    break
                if self.cancel_requested():
                    self.stop_process(runinfo.CANCELLED, "cancelled (a cancel file was dropped)")
                    break
                limit = self.settings.timeout + self.ctx.config.kill_grace + TIMEOUT_SLACK
                if status.state == "pending":
                    self.note_pending(status.reason)
                elif self.ctx.clock() - (self.info.start_epoch or self.ctx.clock()) > limit:
                    self.stop_process(runinfo.TIMED_OUT, self.time_limit_reason())
                    break
                if self.ctx.clock() - last_mirror >= self.settings.backup_every:
                    self.mirror()
                    last_mirror = self.ctx.clock()
                failing_since = None
            except (HostError, OSError) as exc:
                if share_full(exc):  # the training goes on; the final sync waits for space
                    self.note_share_full(exc)
                    last_mirror = self.ctx.clock()
                elif isinstance(exc, OSError) or not exc.transient:
                    raise
                # The training goes on without us: keep trying, and say so once a minute.
                elif failing_since is None or self.ctx.clock() - failing_since >= 60:
                    self.ctx.log.warning("%s: host not answering: %s", self.ref.label, exc)
                    failing_since = self.ctx.clock()
            self.sleep(self.ctx.config.log_every)
        self.move(runinfo.FINISHING)

    def note_pending(self, why: str | None) -> None:
        """Record in run.info why the host still holds the run back, if that changed."""
        reason = f"waiting for resources on {self.host.name}" + (f": {why}" if why else "")
        if reason != self.info.reason:
            self.info.reason = reason
            self.save()

    def time_limit_reason(self) -> str:
        """Return the reason a timed-out run gives, with the limit as the user wrote it."""
        return f"hit the time limit of {self.info.effective.get('timeout', self.settings.timeout)}"

    def stop_process(self, outcome: str, reason: str) -> None:
        """Record why the process is being stopped, then stop its whole process group."""
        self.info.outcome = outcome
        self.info.reason = reason
        self.save()
        self.host.kill(self.ref, self.ctx.config.kill_grace)

    def finish(self) -> None:
        """Final log pull and mirror, clean up the host, and reach the terminal state."""
        status: ProcStatus = self.retry(lambda: self.host.status(self.ref), "status")
        if status.state != "not_started":
            # Also after a normal exit: background jobs the script left in its process
            # group must not outlive the run dir, which is removed below.
            self.retry(lambda: self.host.kill(self.ref, self.ctx.config.kill_grace), "kill")
            if status.state == "running":  # reattached after a kill during finishing
                status = self.host.status(self.ref)
        self.retry(self.pull_log, "log pull", wait_for_space=True)
        for _ in range(3):
            if not self.retry(lambda: self.mirror(final=True), "final mirror", wait_for_space=True):
                break
        else:
            self.ctx.log.warning("%s: some outputs kept changing; not mirrored", self.ref.label)
        if not self.info.outcome:
            # Recorded before the clean-up removes the exit status: an agent killed after
            # the clean-up resumes here and must still know how the script ended.
            self.info.outcome, self.info.reason = outcome_of(status)
            if status.timed_out:
                self.info.outcome, self.info.reason = runinfo.TIMED_OUT, self.time_limit_reason()
        if status.exit_code is not None:
            self.info.exit_code = status.exit_code
        if status.end_epoch is not None and self.info.end_epoch is None:
            self.info.end_epoch = status.end_epoch  # the real end, also if the agent was away
        self.save()
        self.retry(lambda: self.host.cleanup(self.ref), "clean-up")
        self.end(self.info.outcome, self.info.reason, self.info.exit_code, self.info.end_epoch)


def _peek(path: Path, limit: int = 1 << 20) -> bytes | None:
    """Return up to ``limit`` bytes of the plain file ``path``, None if there is none, and
    b"" for anything else (a link, a FIFO someone put there): never blocks or follows."""
    try:
        return read_plain(path, limit)
    except FileNotFoundError:
        return None
    except OSError:
        return b""


def _few(paths: tuple[str, ...], shown: int = 5) -> str:
    """Return up to ``shown`` of ``paths`` joined, and how many more there are (pure)."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def share_full(exc: BaseException) -> bool:
    """Return True if ``exc`` says a disk on the agent's side is full (pure)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def outcome_of(status: ProcStatus) -> tuple[str, str | None]:
    """Return the terminal state and reason for a process that has ended (pure)."""
    if status.state == "exited" and status.exit_code == 0:
        return runinfo.SUCCEEDED, None
    if status.state == "exited":
        return runinfo.FAILED, f"the script exited with code {status.exit_code}"
    return (
        runinfo.FAILED,
        "the training process vanished (killed from outside, or the server restarted)",
    )
