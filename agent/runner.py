"""Drives one run from ``accepted`` to a terminal state, and resumes it after a restart.

Every step reads and writes ``run.info`` so that an agent killed at any moment can pick the
run up again: ``uploading`` redoes the upload (launching is idempotent on the host),
``running`` reattaches to the process, ``finishing`` redoes the final sync.
"""

from __future__ import annotations

import errno
import os

from agent import envcapture, outputs, reuse, runinfo
from agent.archive import tree_signature
from agent.hosts.base import Allocation, HostError, LaunchSpec, ProcStatus
from agent.runrecord import RunRecord, Stopped, share_full

# The launcher on the host ends a run at its limit; the agent steps in only this much
# later (a launcher killed from outside, or a host clock far off).
TIMEOUT_SLACK = 30.0
LOG_CHUNK = 1 << 20  # the most of the log one helper call brings back
# The first looks at a started run come sooner than every log_every: a script that fails
# at once (a typo, a missing file) is reported at once, and a short job frees its slot.
FIRST_POLLS = (0.05, 0.1, 0.2, 0.4, 0.8)


class RunDriver(RunRecord):
    """Takes one run folder through its states on one host."""

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
        if uploaded.moved_aside:  # the rest reaches run.info with the next state
            self.save()
        if self.cancel_requested():
            self.host.cleanup(self.ref)
            self.end(runinfo.CANCELLED, "cancelled before it started")
            return
        if not reuse.seed_output(self):  # resume_from: output_dir filled before the start
            return
        spec = self.launch_spec()
        launched = self.retry(lambda: self.host.launch(self.ref, spec), "launch")
        self.info.job_id, self.info.remote_pid = launched.job_id, launched.pid
        self.info.gpu_names = self.read_gpu_names(spec.cuda_visible_devices)
        if launched.start_epoch is None:  # the host queued it: the clock has not started
            self.move(runinfo.PENDING, f"waiting for resources on {self.host.name}")
        else:
            self.started(launched.start_epoch)

    def started(self, start: int) -> None:
        """Record that the script started at ``start`` (the host's clock) and move to
        ``running``. ``queued_s`` is the time since the move to ``pending`` (0 if the host
        started it at once)."""
        handed = self.info.entered(runinfo.PENDING)
        self.info.queued_s = max(0, start - int(handed)) if handed is not None else 0
        self.info.start_epoch = start
        self.info.start_time = runinfo.date_string(start)
        if self.info.state == runinfo.PENDING:
            self.info.reason = None  # the wait is over
        self.move(runinfo.RUNNING)

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
            signal_before=s.signal_before_timeout or 0,
            gpus=s.gpus,
            cpus=s.cpus,
            mem=s.mem,
        )

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

    def log_offset(self) -> int:
        """Return the size of ``log.log``, where the next bytes of the log go (a link
        someone put there is removed first: the script's output would be appended to
        any file the agent may write)."""
        log_path = self.run_dir / "log.log"
        if log_path.is_symlink():
            self.ctx.log.warning("%s: log.log was replaced by a link; removed", self.ref.label)
            log_path.unlink()
        return log_path.stat().st_size if log_path.exists() else 0

    def pull_log(self, polled: tuple[int, bytes] | None = None) -> None:
        """Append the log's new bytes to ``log.log`` (never through a link).

        ``polled`` is (offset, bytes) of the log as already read with the status; used
        if ``log.log`` still ends at that offset, and the rest is read from there.
        """
        log_path = self.run_dir / "log.log"
        offset = self.log_offset()
        chunk = polled[1] if polled is not None and polled[0] == offset else None
        while True:
            if chunk is None:
                chunk = self.host.read_log(self.ref, offset, LOG_CHUNK)
            if not chunk:
                return
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            with os.fdopen(os.open(log_path, flags, 0o666), "ab") as out:
                out.write(chunk)
            offset += len(chunk)
            if len(chunk) < LOG_CHUNK:  # the end of the log as it was a moment ago
                return
            chunk = None

    def mirror(self, final: bool = False) -> int:
        """Mirror ``output_dir`` into ``output/``, count the bytes; return files still pending."""
        result = outputs.mirror(
            self.host,
            self.ref,
            self.settings.output_dir,
            self.run_dir / "output",
            final=final,
            live_files=self.settings.live_files,
        )
        self.info.bytes_mirrored += result.bytes_received
        self.info.last_mirror_at = runinfo.now_iso()
        self.save()
        return result.files_pending

    def watch(self) -> None:
        """Stream the log and mirror outputs until the process ends, times out or is cancelled."""
        with self.saved_once():  # both are for the record only: redone after a restart
            if self.info.bin_sha256 is None:
                reuse.archive_run(self)
            if self.info.environment is None:
                envcapture.capture(self, self.launch_spec().cuda_visible_devices)
        # Cycles are timed from the start of a mirror, so one lasts backup_every however
        # long the mirror takes (while it takes less).
        next_mirror = self.ctx.clock() + self.settings.backup_every
        failing_since: float | None = None
        polls = 0
        while True:
            if not self.run_dir.is_dir():
                raise FileNotFoundError(errno.ENOENT, "run folder deleted", str(self.run_dir))
            try:
                offset = self.log_offset()
                status, chunk = self.host.poll(self.ref, offset, LOG_CHUNK)
                if status.allocation is not None:
                    self.note_allocation(status.allocation)
                if self.info.state == runinfo.PENDING and (
                    status.state == "running" or status.start_epoch is not None
                ):
                    self.started(status.start_epoch or int(self.ctx.clock()))
                self.pull_log((offset, chunk))
                if status.state == "exited" and len(chunk) < LOG_CHUNK:
                    # The launcher records the exit only after every process of the run
                    # ended, and the log was read after that: nothing is left to stop.
                    self.ended = status
                if status.state in ("exited", "vanished"):
                    break
                if self.cancel_requested():
                    self.stop_process(runinfo.CANCELLED, "cancelled (a cancel file was dropped)")
                    break
                limit = self.settings.timeout + self.ctx.config.kill_grace + TIMEOUT_SLACK
                limit += self.host.limit_slack
                if status.state == "pending":
                    self.note_pending(status.reason)
                elif self.ctx.clock() - (self.info.start_epoch or self.ctx.clock()) > limit:
                    self.stop_process(runinfo.TIMED_OUT, self.time_limit_reason())
                    break
                if self.sync_requested() or self.ctx.clock() >= next_mirror:
                    next_mirror = self.ctx.clock() + self.settings.backup_every
                    self.mirror()
                failing_since = None
            except (HostError, OSError) as exc:
                if share_full(exc):  # the training goes on; the final sync waits for space
                    self.note_share_full(exc)
                    next_mirror = self.ctx.clock() + self.settings.backup_every
                elif isinstance(exc, OSError) or not exc.transient:
                    raise
                # The training goes on without us: keep trying, and say so once a minute.
                elif failing_since is None or self.ctx.clock() - failing_since >= 60:
                    self.ctx.log.warning("%s: host not answering: %s", self.ref.label, exc)
                    failing_since = self.ctx.clock()
            every = self.ctx.config.log_every
            soon = FIRST_POLLS[polls] if polls < len(FIRST_POLLS) else every
            polls += 1
            self.sleep(min(soon, every, max(0.0, next_mirror - self.ctx.clock())))
        self.move(runinfo.FINISHING)

    def note_allocation(self, where: Allocation) -> None:
        """Record where a scheduler put the run (partition, node, GPUs), if that changed."""
        info = self.info
        before = (info.partition, info.node, info.gpus, info.gpu_ids)
        info.partition = where.partition or info.partition
        info.node = where.node or info.node
        if where.node is not None and where.gpus is not None:  # held once it runs
            info.gpus = where.gpus
            info.gpu_ids = list(where.gpu_ids) if where.gpu_ids is not None else info.gpu_ids
        if (info.partition, info.node, info.gpus, info.gpu_ids) != before:
            self.save()

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
        # Also after a normal exit: background jobs the script left in its process group
        # must not outlive the run dir, which is removed below. The status is the one
        # after that (a run reattached after a kill during finishing has ended by then).
        status: ProcStatus
        if self.ended is not None:  # seen exited by this driver, the log read to its end
            status = self.ended
        else:
            offset = self.log_offset()
            grace = self.ctx.config.kill_grace
            status, chunk = self.retry(
                lambda: self.host.stop(self.ref, grace, offset, LOG_CHUNK), "kill"
            )
            self.retry(lambda: self.pull_log((offset, chunk)), "log pull", wait_for_space=True)
        with self.saved_once():  # the mirror's figures and the outcome, in one save
            for _ in range(3):
                if not self.retry(
                    lambda: self.mirror(final=True), "final mirror", wait_for_space=True
                ):
                    break
            else:
                self.ctx.log.warning("%s: some outputs kept changing; not mirrored", self.ref.label)
            if not self.info.outcome:
                # Recorded before the clean-up removes the exit status: an agent killed
                # after the clean-up resumes here and must still know how the script ended.
                self.info.outcome, self.info.reason = outcome_of(status)
                if status.timed_out:
                    self.info.outcome, self.info.reason = (
                        runinfo.TIMED_OUT,
                        self.time_limit_reason(),
                    )
            if status.exit_code is not None:
                self.info.exit_code = status.exit_code
            if status.end_epoch is not None and self.info.end_epoch is None:
                self.info.end_epoch = status.end_epoch  # the real end, also if the agent was away
            self.save()
        self.retry(lambda: self.host.cleanup(self.ref), "clean-up")
        self.end(self.info.outcome, self.info.reason, self.info.exit_code, self.info.end_epoch)


def outcome_of(status: ProcStatus) -> tuple[str, str | None]:
    """Return the terminal state and reason for a process that has ended (pure)."""
    if status.outcome is not None:  # the host's verdict (a scheduler that ended the job)
        return status.outcome, status.reason
    if status.state == "exited" and status.exit_code == 0:
        return runinfo.SUCCEEDED, None
    if status.state == "exited":
        return runinfo.FAILED, f"the script exited with code {status.exit_code}"
    return (
        runinfo.FAILED,
        "the training process vanished (killed from outside, or the server restarted)",
    )
