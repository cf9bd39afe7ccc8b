"""SlurmHost: a cluster's login node as a ShellHost, with runs handed to Slurm.

Upload, logs, mirroring, clean-up and the environment go through the login node exactly
as for an ssh host (the run dirs are on the cluster's shared filesystem). Launching is
``sbatch`` of a batch script that runs the same launcher; the state of every run comes
from one ``squeue`` for all of the host's jobs per poll interval; cancelling is
``scancel``. Slurm's ``--time`` is the run's hard limit and ``--signal`` its warning, so
the launcher's own watchdog stays off here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import posixpath
import threading
import time

from agent.hosts.base import Allocation, HostError, Launched, LaunchSpec, ProcStatus, RunRef
from agent.hosts.kinds.slurm import SlurmConfig
from agent.hosts.launcher import make_launcher, procs_text
from agent.hosts.shell import ShellHost
from agent.hosts.slurmcmd import (
    ENDED_STATES,
    PENDING_STATES,
    RUNNING_STATES,
    TRANSIENT_WORDS,
    QueueEntry,
    allocation_of,
    batch_script,
    ended_status,
    exit_code_of,
    job_name,
    make_queue_argv,
    make_sbatch_argv,
    parse_files,
    parse_job_details,
    parse_queue,
)
from agent.hosts.sync import LocalRsync
from agent.hosts.transport import Transport

log = logging.getLogger(__name__)

# Slurm checks time limits about every 30 s, in whole minutes, and gives a job KillWait
# (30 s by default) after its TERM: the agent's own limit waits that much longer.
SLURM_LIMIT_SLACK = 150.0
# How long a cancelled job may take to leave the running states (KillWait and epilog).
CANCEL_WAIT = 120.0


class SlurmHost(ShellHost):
    """A :class:`agent.hosts.base.Host` for a Slurm cluster, through its login node.

    ``poll_every``: squeue is asked at most once in this many seconds for all runs.
    ``squeue_calls`` counts the calls (for tests and the bench).
    """

    limit_slack = SLURM_LIMIT_SLACK

    def __init__(
        self,
        config: SlurmConfig,
        transport: Transport,
        *,
        share_id: str = "",
        local_rsync: LocalRsync | None = None,
        poll_every: float = 2.0,
    ) -> None:
        super().__init__(config, transport, share_id=share_id, local_rsync=local_rsync)
        self.slurm = config
        self.slots = config.max_jobs
        self.poll_every = poll_every
        self._helper_text = (
            procs_text()
            + importlib.resources.files("agent.hosts").joinpath("slurm.sh").read_text()
            + importlib.resources.files("agent.hosts").joinpath("helper.sh").read_text()
        )
        self._queue_lock = threading.Lock()
        self._queue: dict[str, QueueEntry] = {}
        self._queue_at: float | None = None  # monotonic time the cached squeue was asked
        self._submitted: dict[str, float] = {}  # run id -> monotonic time of its sbatch
        self._last: dict[str, ProcStatus] = {}  # run id -> its last known status
        self._job_gpus: dict[str, tuple[str, ...]] = {}  # job id -> its GPU ids on the node
        self.squeue_calls = 0

    # -- submitting ------------------------------------------------------------------------

    def launch(self, ref: RunRef, spec: LaunchSpec) -> Launched:
        """Write the launcher and batch script into the run dir and submit the job once.

        An earlier submission of the run (found by its recorded job id, or in squeue by
        the run's id) is reattached, never submitted again. Raises HostError with sbatch's
        own words if it refuses the job.
        """
        run_dir = self.remote_dir(ref)
        # Slurm keeps the time limit and sends the warning: no watchdog of the launcher's.
        inner = dataclasses.replace(spec, run_id=ref.run_id, timeout=0, signal_before=0)
        droprun_dir = posixpath.join(run_dir, ".droprun")
        script = make_launcher(inner, self.config.conda_sh).encode()
        self._helper("write", posixpath.join(droprun_dir, "launch.sh"), stdin=script)
        batch = batch_script(ref.run_id).encode()
        self._helper("write", posixpath.join(droprun_dir, "job.sh"), stdin=batch)
        argv = make_sbatch_argv(
            ref,
            spec,
            run_dir,
            partition=self.slurm.partition,
            account=self.slurm.account,
            options=self.slurm.sbatch_options,
        )
        try:
            words = (run_dir, ref.run_id, job_name(ref), self.slurm.user, *argv[1:])
            out = self._helper("submit", *words)
        except HostError as exc:
            raise self._slurm_error("sbatch refused the job", exc) from exc
        job_id = out.stdout.decode(errors="replace").strip()
        self._submitted[ref.run_id] = time.monotonic()
        return Launched(job_id)

    def _slurm_error(self, what: str, exc: HostError) -> HostError:
        """Return ``exc`` told as Slurm's words: transient if the controller did not answer."""
        text = str(exc)
        words = text.split("droprun-helper: ", 1)[-1].strip()
        transient = exc.transient or any(w.lower() in text.lower() for w in TRANSIENT_WORDS)
        return HostError(f"{what}: {words}", transient=transient)

    # -- the queue -------------------------------------------------------------------------

    def _ask_queue(self, job_id: str | None = None) -> dict[str, QueueEntry]:
        """Run squeue once (all of this user's jobs, or one); return its jobs by run id."""
        self.squeue_calls += 1
        argv = make_queue_argv(self.slurm.user, job_id)
        result = self.transport.run(argv, timeout=self.command_timeout)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip()
            missing = result.exit_code == 127 or "not found" in err
            raise HostError(
                f"{self.name}: squeue failed (exit {result.exit_code}): {err}",
                transient=not missing,
            )
        return parse_queue(result.stdout)

    def _queued(self, run_id: str) -> tuple[QueueEntry | None, bool]:
        """Return the run's job in the cached squeue (asked again when older than
        ``poll_every``), and whether that answer is older than the run's submission."""
        with self._queue_lock:
            now = time.monotonic()
            if self._queue_at is None or now - self._queue_at >= self.poll_every:
                self._queue = self._ask_queue()
                self._queue_at = now
            stale = self._submitted.get(run_id, float("-inf")) >= self._queue_at
            return self._queue.get(run_id), stale

    # -- the state of a run ----------------------------------------------------------------

    def status(self, ref: RunRef) -> ProcStatus:
        """Return the run's state from squeue, and from the launcher's records once the
        job has ended or left the queue. An unknown Slurm state keeps the last one."""
        entry, stale = self._queued(ref.run_id)
        if entry is None and stale:  # submitted after the last squeue: surely still there
            return ProcStatus("pending", reason="submitted")
        if entry is None:
            status = self._gone(ref)
        elif entry.state in PENDING_STATES:
            status = ProcStatus("pending", reason=entry.reason, allocation=allocation_of(entry))
        elif entry.state in RUNNING_STATES:
            gpu_ids = self._job_gpus.get(entry.job_id)
            if gpu_ids is None and entry.gres is not None:  # asked once the job records them
                gpu_ids = self._files(ref)[1]
            status = ProcStatus(
                "running", start_epoch=entry.start, allocation=self._allocation(entry, gpu_ids)
            )
        elif entry.state in ENDED_STATES:
            files, gpu_ids = self._files(ref)
            code = None if files.state == "exited" else self._slurm_exit_code(entry.job_id)
            status = dataclasses.replace(
                ended_status(entry, files, code), allocation=self._allocation(entry, gpu_ids)
            )
        else:
            log.warning(
                "%s: %s: job %s is in the unknown Slurm state %r; keeping its last state",
                self.name,
                ref.label,
                entry.job_id,
                entry.state,
            )
            return self._last.get(ref.run_id, ProcStatus("pending", reason=entry.state))
        self._last[ref.run_id] = status
        return status

    def _gone(self, ref: RunRef) -> ProcStatus:
        """Return the state of a run whose job squeue no longer shows (ended longer ago than
        the cluster's MinJobAge, or never submitted): its records, else vanished."""
        files, _ = self._files(ref)
        if files.state in ("exited", "not_started"):
            return files
        return dataclasses.replace(
            files,
            state="vanished",
            outcome="failed",
            reason="job vanished: Slurm no longer knows it and the script recorded no exit",
        )

    def _files(self, ref: RunRef) -> tuple[ProcStatus, tuple[str, ...] | None]:
        """Return what the launcher and the batch script recorded in the run dir: the
        status, and the GPU ids of the job (None: not yet). One helper call."""
        return parse_files(self._helper("files", self.remote_dir(ref), ref.run_id).stdout)

    def _allocation(self, entry: QueueEntry, gpu_ids: tuple[str, ...] | None) -> Allocation:
        """Return where the job runs; its GPU ids, once known, are kept for later polls."""
        if entry.gres is None:  # asked for no GPUs
            gpu_ids = ()
        if gpu_ids is not None:
            self._job_gpus[entry.job_id] = gpu_ids
        return allocation_of(entry, gpu_ids)

    def _details(self, job_id: str) -> dict[str, str]:
        """Return ``scontrol show job``'s facts of one job ({} if Slurm forgot it)."""
        argv = ["scontrol", "--oneliner", "show", "job", job_id]
        result = self.transport.run(argv, timeout=self.command_timeout)
        if result.exit_code != 0:
            log.info("%s: scontrol show job %s: %s", self.name, job_id, result.stderr[:300])
            return {}
        return parse_job_details(result.stdout.decode(errors="replace"))

    def _slurm_exit_code(self, job_id: str) -> int | None:
        """Return Slurm's exit code of an ended job (when the launcher recorded none)."""
        return exit_code_of(self._details(job_id))

    # -- cancelling ------------------------------------------------------------------------

    def kill(self, ref: RunRef, grace: float) -> None:
        """``scancel`` the run's job, pending or running, and return once it has ended.

        Slurm sends TERM, and KILL after the cluster's KillWait. A job that has already
        ended is left alone.
        """
        entry = self._ask_queue().get(ref.run_id)
        if entry is None or entry.state in ENDED_STATES:
            return
        result = self.transport.run(["scancel", entry.job_id], timeout=self.command_timeout)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise HostError(f"{self.name}: scancel {entry.job_id} failed: {err}", transient=True)
        deadline = time.monotonic() + grace + CANCEL_WAIT
        while time.monotonic() < deadline:
            time.sleep(1.0)
            entry = self._ask_queue(entry.job_id).get(ref.run_id)
            if entry is None or entry.state in ENDED_STATES:
                with self._queue_lock:
                    self._queue_at = None  # the next status sees the end
                return
        raise HostError(
            f"{self.name}: job {entry.job_id} did not end within {CANCEL_WAIT:g} s of scancel",
            transient=True,
        )

    def cleanup(self, ref: RunRef) -> None:
        """Remove the run dir on the login node and forget the run."""
        super().cleanup(ref)
        self._submitted.pop(ref.run_id, None)
        self._last.pop(ref.run_id, None)

    # -- what the login node cannot tell ---------------------------------------------------

    def gpu_names(self, devices: str | None = None) -> list[str] | None:
        """Return None: the GPUs are on the compute node, not on the login node."""
        return None

    def environment(
        self, conda_env: str | None, venv: str | None, devices: str | None
    ) -> dict[str, str | None]:
        """Return the login node's environment (the software on the shared filesystem),
        without its GPUs: the run's are on a compute node."""
        sections = super().environment(conda_env, venv, None)
        return sections | {"nvidia-smi": None, "nvidia-smi-header": None}
