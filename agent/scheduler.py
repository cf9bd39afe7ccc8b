"""Per-host queues: each host runs at most ``slots`` runs at once, first accepted first served.

Each host has its own FIFO queue and ``slots`` worker threads, so runs on different hosts
never wait for one another, and one failing run never stops a worker.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from agent import runinfo
from agent.context import RunContext
from agent.runner import RunDriver


class HostQueue:
    """The queue and workers of one host."""

    def __init__(self, ctx: RunContext, host_name: str) -> None:
        self.ctx = ctx
        self.host = ctx.hosts[host_name]
        self.queue: queue.Queue[Path | None] = queue.Queue()
        self.lock = threading.Lock()
        self.active = 0
        self.pending = 0
        self.current: dict[int, Path] = {}
        self.idle_since = time.monotonic()
        self.workers = [
            threading.Thread(
                target=self.work, args=(slot,), name=f"{host_name}-{slot}", daemon=True
            )
            for slot in range(self.host.slots)
        ]

    def start(self) -> None:
        """Start the worker threads."""
        for worker in self.workers:
            worker.start()

    def put(self, run_dir: Path) -> None:
        """Queue a run folder."""
        with self.lock:
            self.pending += 1
        self.queue.put(run_dir)

    def busy(self) -> bool:
        """True while a run is queued or in progress on this host."""
        with self.lock:
            return self.pending > 0

    def work(self, slot: int) -> None:
        """Worker loop: take the next run and drive it until terminal or stop."""
        while not self.ctx.stop.is_set():
            run_dir = self.queue.get()
            if run_dir is None:  # the agent is stopping
                return
            with self.lock:
                self.active += 1
                self.current[slot] = run_dir
            try:
                with self.ctx.wakeups.registered(run_dir):
                    RunDriver(self.ctx, run_dir, slot).drive()
            except Exception:  # one run's failure never stops the agent
                if self.ctx.stop.is_set():
                    self.ctx.log.exception("%s: interrupted by the agent's stop", run_dir)
                else:
                    self.ctx.log.exception("%s: the run failed inside the agent", run_dir)
                    _mark_error(self.ctx, run_dir, "the agent hit an internal error; see its log")
            finally:
                with self.lock:
                    self.active -= 1
                    self.pending -= 1
                    self.current.pop(slot, None)
                    if self.pending == 0:
                        self.idle_since = time.monotonic()

    def stop(self) -> None:
        """Tell every worker to return once its current run step ends."""
        for _ in self.workers:
            self.queue.put(None)

    def in_progress(self) -> list[Path]:
        """Return the run folders that workers are driving right now."""
        with self.lock:
            return list(self.current.values())

    def check_idle(self) -> None:
        """Tell the host how long it has been idle (it may power itself off); cheap."""
        with self.lock:
            idle = 0.0 if self.pending else time.monotonic() - self.idle_since
        if idle:
            self.host.idle_for(idle)


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


class Scheduler:
    """All hosts' queues."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.queues = {name: HostQueue(ctx, name) for name in ctx.hosts}

    def start(self) -> None:
        """Start every host's workers, and the thread that lets idle hosts power off."""
        for q in self.queues.values():
            q.start()
        # Off the main loop: a power command to a host that hangs must not stall intake.
        threading.Thread(target=self.watch_idle, name="power", daemon=True).start()

    def watch_idle(self, every: float = 0.5) -> None:
        """Tell hosts how long they have been idle, every ``every`` s, until stop."""
        while not self.ctx.stop.wait(every):
            self.check_idle()

    def submit(self, run_dir: Path, info: runinfo.RunInfo) -> None:
        """Queue an accepted (or resumed) run on its host, recording ``queued`` if new."""
        if info.state == runinfo.ACCEPTED:
            info.transition(runinfo.QUEUED)
            runinfo.save(run_dir / "run.info", info)
            self.ctx.on_change(run_dir)
            self.ctx.log.info("%s/run_%d: queued on %s", info.project, info.run, info.host)
        host = info.host or "local"
        self.queues[host].put(run_dir)

    def busy(self) -> bool:
        """True while any host has queued or running work."""
        return any(q.busy() for q in self.queues.values())

    def wait_idle(self, poll: float = 0.2) -> None:
        """Block until no host has queued or running work (or the agent stops)."""
        while self.busy() and not self.ctx.stop.wait(poll):
            pass

    def check_idle(self) -> None:
        """Let idle hosts power off after their ``shutdown_after``."""
        for q in self.queues.values():
            q.check_idle()

    def join(self, timeout: float = 5.0) -> list[Path]:
        """Stop the workers (after ``ctx.stop`` was set) and wait up to ``timeout`` s.

        Returns the run folders still in a step (an upload, say) when the time was up: the
        step is abandoned, the run keeps its state and resumes at the next start.
        """
        for q in self.queues.values():
            q.stop()
        deadline = time.monotonic() + timeout
        for q in self.queues.values():
            for w in q.workers:
                w.join(max(0.0, deadline - time.monotonic()))
        return [run_dir for q in self.queues.values() for run_dir in q.in_progress()]
