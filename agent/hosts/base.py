"""The one small interface that every kind of host implements (local, ssh, later slurm).

The runner drives a run only through these calls, so a new kind of host is a new
class, not a change to the run logic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from agent.hosts.mirror import Listing
    from agent.hosts.sync import RsyncVersions


class HostError(Exception):
    """The host could not do its part. ``transient`` errors may be retried later."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class HostKeyError(HostError):
    """The server's host key is unknown or changed: never retried, never auto-accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


@dataclass(frozen=True)
class RunRef:
    """Names one run: the project folder name, the run number, and the run's unique id.

    The id (``run_id`` in run.info) is written into the run dir on the host; a dir of the
    same name with another id belongs to another run and is never adopted.
    """

    project: str
    run: int
    run_id: str

    @property
    def label(self) -> str:
        """``project/run_N``, for logs and messages."""
        return f"{self.project}/run_{self.run}"


@dataclass(frozen=True)
class LaunchSpec:
    """What the launcher on the host needs to start the training script."""

    run_script: str
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    setup: Sequence[str] = ()
    conda_env: str | None = None
    output_dir: str = "output"
    cuda_visible_devices: str | None = None
    run_id: str = ""
    timeout: int = 0  # seconds; 0: no limit on the host
    kill_grace: float = 10.0  # seconds between TERM and KILL
    signal_before: int = 0  # seconds before the limit that the script gets SIGUSR1; 0: none
    gpus: int | None = None  # for a host that assigns GPUs itself (a cluster)
    cpus: int | None = None  # for a cluster
    mem: str | None = None  # for a cluster, like "32G"


@dataclass(frozen=True)
class Launched:
    """A run handed to the host: its opaque job handle (the launcher's pid on local and ssh
    hosts, a scheduler's job id elsewhere), the pid if there is one, and when the script
    started by the host's clock (None: the host queued it, see ``pending``)."""

    job_id: str
    pid: int | None = None
    start_epoch: int | None = None


@dataclass(frozen=True)
class Allocation:
    """Where a scheduler put a run: partition, node, how many GPUs it holds and their ids
    on the node (None: not known, or not yet)."""

    partition: str | None = None
    node: str | None = None
    gpus: int | None = None
    gpu_ids: tuple[str, ...] | None = None


ProcState = Literal["not_started", "pending", "running", "exited", "vanished"]


@dataclass(frozen=True)
class ProcStatus:
    """The training process as the host sees it.

    ``not_started``: no launch marker; ``pending``: the host has the run and waits for
    resources (``reason`` says which); ``running``: a process of the run is alive;
    ``exited``: the launcher recorded an exit status; ``vanished``: launched, not alive,
    and no exit status (killed from outside, or the server rebooted). ``timed_out``: the
    launcher ended the script at its time limit; ``end_epoch``: when the script ended, by
    the host's clock, and ``start_epoch`` when it started. ``outcome``: how the run ended
    when the host says so whatever the exit code ("cancelled", "failed"; ``reason`` says
    why); ``allocation``: where a scheduler put it.
    """

    state: ProcState
    pid: int | None = None
    exit_code: int | None = None
    timed_out: bool = False
    end_epoch: int | None = None
    start_epoch: int | None = None
    reason: str | None = None
    outcome: str | None = None
    allocation: Allocation | None = None


@dataclass(frozen=True)
class Uploaded:
    """What an upload did: bytes of code sent, and where a stranger's run dir was moved."""

    bytes_sent: int
    moved_aside: str | None = None


@dataclass(frozen=True)
class Orphan:
    """A run dir on a host, as ``status --orphans`` lists it."""

    path: str
    run_id: str | None
    start_epoch: int | None
    kbytes: int
    alive: bool


class Host(Protocol):
    """A place where runs execute. All methods raise :class:`HostError` on failure."""

    name: str
    slots: int
    # How late (s) the host's own time limit may end a run (a scheduler's granularity):
    # the agent steps in only after that.
    limit_slack: float

    def awake(self) -> bool:
        """Return False if the host is known to sleep (powered off by us, or not answering);
        cheap, never asks the host. A group prefers awake members."""
        ...

    def reachable(self) -> bool:
        """Return True if the host answers now (cheap check, no waiting)."""
        ...

    def wake(self) -> None:
        """Ask the host to power on (Wake-on-LAN where configured; no-op otherwise)."""
        ...

    def wait_ready(self, timeout: float) -> None:
        """Wait with backoff until the host answers; raise HostError after ``timeout`` s."""
        ...

    def remote_dir(self, ref: RunRef) -> str:
        """Return the run directory on the host (absolute path as the host sees it)."""
        ...

    def rsync_versions(self) -> RsyncVersions:
        """Return the rsync versions of the agent and of the host (for run.info)."""
        ...

    def upload(self, ref: RunRef, bin_dir: Path, exclude: Sequence[str]) -> Uploaded:
        """Sync ``bin_dir`` into the project's persistent cache, then make the run dir from it.

        A dir of the run's name that belongs to another run is moved aside, never adopted.
        Returns the bytes that crossed the network for the code, and any such move.
        """
        ...

    def launch(self, ref: RunRef, spec: LaunchSpec) -> Launched:
        """Start the script detached. Idempotent: never starts twice."""
        ...

    def status(self, ref: RunRef) -> ProcStatus:
        """Return the state of the run's process on the host."""
        ...

    def read_log(self, ref: RunRef, offset: int, limit: int = 1 << 20) -> bytes:
        """Return at most ``limit`` bytes of the run's log starting at byte ``offset``."""
        ...

    def list_outputs(self, ref: RunRef, output_dir: str) -> Listing:
        """Return the run's ``output_dir`` as listed on the host (see :mod:`agent.outputs`)."""
        ...

    def poll(self, ref: RunRef, offset: int, limit: int = 1 << 20) -> tuple[ProcStatus, bytes]:
        """Return :meth:`status` and :meth:`read_log` ``(offset, limit)`` together (no log
        while pending)."""
        ...

    def stop(
        self, ref: RunRef, grace: float, offset: int, limit: int = 1 << 20
    ) -> tuple[ProcStatus, bytes]:
        """Kill what is left of a started run (:meth:`kill`); return its status after that
        and :meth:`read_log` ``(offset, limit)``."""
        ...

    def pull_outputs(self, ref: RunRef, output_dir: str, staging: Path) -> int:
        """Copy the run's ``output_dir`` into the local folder ``staging`` (new and changed
        files, each written whole under a temp name first); return the bytes received."""
        ...

    def pulls_nanoseconds(self) -> bool:
        """Return True if pulls compare mtimes to the nanosecond."""
        ...

    def seed_output(
        self, ref: RunRef, src: Path, output_dir: str, link_dest: str | None = None
    ) -> int:
        """Copy the folder ``src`` (on this machine) into the run's ``output_dir`` before
        the script starts; files equal to those in ``link_dest`` (a folder on the host)
        are hard-linked from there instead. Returns the bytes sent."""
        ...

    def kill(self, ref: RunRef, grace: float) -> None:
        """TERM every process of the run, KILL what is left after ``grace`` seconds."""
        ...

    def cleanup(self, ref: RunRef) -> None:
        """Remove the run dir on the host (the project cache stays)."""
        ...

    def gpu_names(self, devices: str | None = None) -> list[str] | None:
        """Return the names of GPUs ``devices`` (ids as in CUDA_VISIBLE_DEVICES; all if None).

        Returns None if the host cannot tell (no ``nvidia-smi``).
        """
        ...

    def environment(
        self, conda_env: str | None, venv: str | None, devices: str | None
    ) -> dict[str, str | None]:
        """Return the host's environment by section (see :mod:`agent.envcapture`; None:
        absent): python and packages in ``conda_env`` or ``venv``, GPUs ``devices`` (all
        if None), OS, host name."""
        ...

    def orphans(self) -> list[Orphan]:
        """Return every run dir this agent has on the host (the caller picks the unclaimed)."""
        ...

    def run_starting(self) -> None:
        """Called before a run uses the host (cancels a pending power-off)."""
        ...

    def idle_for(self, seconds: float) -> None:
        """Called when the host has had no run for ``seconds`` (may power it off)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
