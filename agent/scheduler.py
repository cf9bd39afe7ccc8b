"""Where and when runs go: each host runs at most ``slots`` runs at once, each holding the
GPUs it needs, first accepted first served.

A run's ``host`` names a host or a group of hosts. A run waits until some candidate has a
free slot and enough free GPUs; among those it takes the first awake one, and a sleeping
one (which it will wake) only when every awake one is full. A run that cannot be placed
yet does not hold back later runs that can. One thread drives each placed run, so runs
never wait for one another, and one failing run never stops the agent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import runinfo
from agent.context import RunContext
from agent.problems import UserError
from agent.runner import RunDriver
from agent.runrecord import Placement, settings_from_info
from agent.schema import HostConfig


def gpus_needed(host: HostConfig, wanted: int | None) -> int:
    """Return how many of ``host``'s GPUs a run takes: ``wanted``, or by default one slot's
    share of the host's ``gpus``; none on a host whose own scheduler gives them (pure)."""
    if host.assigns_gpus:
        return 0
    if wanted is not None:
        return wanted
    return len(host.gpus) // host.slots if host.gpus else 0


@dataclass
class HostLoad:
    """One host's runs and free GPUs (guarded by the scheduler's lock); ``slots`` is how
    many runs it takes at once (a cluster's ``max_jobs``)."""

    config: HostConfig
    slots: int
    runs: dict[Path, Placement] = field(default_factory=dict)
    free_gpus: list[str] = field(default_factory=list)
    idle_since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.free_gpus = list(self.config.gpus)

    def fits(self, gpus: int) -> bool:
        """True if a run needing ``gpus`` GPUs can start here now."""
        return len(self.runs) < self.slots and gpus <= len(self.free_gpus)

    def take(self, run_dir: Path, gpus: int, held: tuple[str, ...] = ()) -> Placement:
        """Give ``run_dir`` a slot and GPUs: those it ``held`` before a restart, else the
        first ``gpus`` free ones."""
        ids = tuple(held) or tuple(self.free_gpus[:gpus])
        self.free_gpus = [g for g in self.free_gpus if g not in ids]
        placement = Placement(self.config.name, ids)
        self.runs[run_dir] = placement
        return placement

    def give_back(self, run_dir: Path) -> None:
        """Free the slot and GPUs of ``run_dir``."""
        placement = self.runs.pop(run_dir, None)
        if placement is not None:
            self.free_gpus += [g for g in self.config.gpus if g in placement.gpus]
        if not self.runs:
            self.idle_since = time.monotonic()


@dataclass(frozen=True)
class Waiting:
    """A run waiting for a place: its candidate hosts, the GPUs it wants (None: default),
    and for a run that already started before a restart, the GPUs it held."""

    run_dir: Path
    candidates: tuple[str, ...]
    gpus: int | None
    held: tuple[str, ...] | None = None


class Scheduler:
    """Places runs on hosts and drives each placed run in its own thread."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.loads = {
            name: HostLoad(ctx.config.hosts[name], host.slots) for name, host in ctx.hosts.items()
        }
        self.waiting: list[Waiting] = []
        self.threads: dict[Path, threading.Thread] = {}
        self.changed = threading.Condition()

    def start(self) -> None:
        """Start placing runs, and the thread that lets idle hosts power off."""
        threading.Thread(target=self.place_loop, name="placer", daemon=True).start()
        # Off the main loop: a power command to a host that hangs must not stall intake.
        threading.Thread(target=self.watch_idle, name="power", daemon=True).start()

    def submit(self, run_dir: Path, info: runinfo.RunInfo) -> None:
        """Queue an accepted (or resumed) run, recording ``queued`` if new."""
        target = info.host or info.group or "local"
        if info.state == runinfo.ACCEPTED:
            info.transition(runinfo.QUEUED)
            runinfo.save(run_dir / "run.info", info)
            self.ctx.on_change(run_dir)
            self.ctx.log.info("%s/run_%d: queued on %s", info.project, info.run, target)
        started = info.state not in (runinfo.QUEUED, runinfo.WAKING)
        try:
            wanted = settings_from_info(info).gpus
        except UserError:
            wanted = None  # its driver says what is wrong with its run.info
        if started and info.host in self.loads:  # it holds a slot on its host already
            waiting = Waiting(run_dir, (info.host,), wanted, tuple(info.gpu_ids or ()))
        else:
            members = self.ctx.config.groups.get(target, (target,))
            waiting = Waiting(run_dir, tuple(members), wanted)
        with self.changed:
            self.waiting.append(waiting)
            self.changed.notify_all()

    def place_loop(self) -> None:
        """Place waiting runs whenever something changed, until the agent stops."""
        with self.changed:
            while not self.ctx.stop.is_set():
                self.place_waiting()
                self.changed.wait(1.0)

    def place_waiting(self) -> None:
        """Start every waiting run that has a place now, in order (call with the lock)."""
        for waiting in list(self.waiting):
            if self.ctx.stop.is_set():
                return
            name = self.choose(waiting)
            if name is None:
                continue
            self.waiting.remove(waiting)
            load = self.loads[name]
            need = gpus_needed(load.config, waiting.gpus)
            placement = load.take(waiting.run_dir, need, waiting.held or ())
            thread = threading.Thread(
                target=self.drive,
                args=(waiting.run_dir, placement),
                name=f"{name}:{waiting.run_dir.parent.parent.name}/{waiting.run_dir.name}",
                daemon=True,
            )
            self.threads[waiting.run_dir] = thread
            thread.start()

    def choose(self, waiting: Waiting) -> str | None:
        """Return the host for ``waiting`` now, or None if it has to wait (with the lock)."""
        if waiting.held is not None:
            return waiting.candidates[0]
        free = [
            name
            for name in waiting.candidates
            if name in self.loads
            and self.loads[name].fits(gpus_needed(self.loads[name].config, waiting.gpus))
        ]
        awake = [name for name in free if self.ctx.hosts[name].awake()]
        chosen = awake or free
        return chosen[0] if chosen else None

    def drive(self, run_dir: Path, placement: Placement) -> None:
        """Drive one run on its place until terminal or stop, then free the place."""
        try:
            with self.ctx.wakeups.registered(run_dir):
                RunDriver(self.ctx, run_dir, placement).drive()
        except Exception:  # one run's failure never stops the agent
            if self.ctx.stop.is_set():
                self.ctx.log.exception("%s: interrupted by the agent's stop", run_dir)
            else:
                self.ctx.log.exception("%s: the run failed inside the agent", run_dir)
                _mark_error(self.ctx, run_dir, "the agent hit an internal error; see its log")
        finally:
            with self.changed:
                self.loads[placement.host].give_back(run_dir)
                self.threads.pop(run_dir, None)
                self.changed.notify_all()

    def busy(self) -> bool:
        """True while any run waits for a place or is being driven."""
        with self.changed:
            return bool(self.waiting or self.threads)

    def watch_idle(self, every: float = 0.5) -> None:
        """Tell hosts how long they have been idle, every ``every`` s, until stop."""
        while not self.ctx.stop.wait(every):
            self.check_idle()

    def check_idle(self) -> None:
        """Let idle hosts power off after their ``shutdown_after``; cheap."""
        with self.changed:
            idle = {
                name: time.monotonic() - load.idle_since
                for name, load in self.loads.items()
                if not load.runs
            }
        for name, seconds in idle.items():
            self.ctx.hosts[name].idle_for(seconds)

    def join(self, timeout: float = 5.0) -> list[Path]:
        """Wait up to ``timeout`` s for the runs being driven (after ``ctx.stop`` was set).

        Returns the run folders still in a step (an upload, say) when the time was up: the
        step is abandoned, the run keeps its state and resumes at the next start.
        """
        with self.changed:
            self.changed.notify_all()
            threads = list(self.threads.items())
        deadline = time.monotonic() + timeout
        for _, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [run_dir for run_dir, thread in threads if thread.is_alive()]


def _mark_error(ctx: RunContext, run_dir: Path, reason: str) -> None:
    """Move a run that crashed its driver to ``error`` so that it is not retried forever."""
    path = run_dir / "run.info"
    try:
        info = runinfo.load(path)
        if not info.terminal:
            info.transition(runinfo.ERROR, reason)
            runinfo.save(path, info)
            ctx.on_change(run_dir)
    except (OSError, runinfo.RunInfoError, ValueError) as exc:
        ctx.log.error("%s: cannot record the error in run.info: %s", run_dir, exc)
