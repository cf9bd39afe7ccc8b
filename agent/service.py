"""The agent: one per share. Takes requests as they settle, resumes runs, queues them per host."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import runinfo, share
from agent.config import AgentConfig
from agent.hosts import open_host
from agent.problems import UserError
from agent.runner import RunContext
from agent.scheduler import Scheduler

ACTIVE_FIRST = {
    runinfo.FINISHING: 0,
    runinfo.RUNNING: 1,
    runinfo.UPLOADING: 2,
    runinfo.WAKING: 3,
    runinfo.QUEUED: 4,
    runinfo.ACCEPTED: 4,
}


@contextmanager
def share_lock(share_dir: Path) -> Iterator[None]:
    """Hold the share's agent lock for the ``with`` block.

    Raises UserError if another agent already serves ``share_dir``.
    """
    lock_dir = share_dir / ".droprun"
    lock_dir.mkdir(exist_ok=True)
    fd = os.open(lock_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
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
    """Finds requests on the share and accepts each one once it has stopped changing."""

    def __init__(self, ctx: RunContext, scheduler: Scheduler) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def poll(self) -> int:
        """Accept every settled request; return how many are still settling."""
        settle = self.ctx.config.settle
        now = time.monotonic()
        present = share.find_requests(self.ctx.config.share)
        for path in present:
            sig = share.signature(path)
            if sig is None:
                continue
            previous = self.seen.get(path)
            if previous is None or previous[0] != sig:
                # A file untouched for the settle time already is stable on first sight.
                if time.time() - sig[1] / 1e9 < settle:
                    self.seen[path] = (sig, now)
                    continue
            elif now - previous[1] < settle:
                continue
            self.seen.pop(path, None)
            self.take(path)
        for gone in set(self.seen) - set(present):
            del self.seen[gone]
        return len(self.seen)

    def take(self, path: Path) -> None:
        """Accept or reject one settled request; share errors are logged, not fatal."""
        try:
            result = share.accept(path, self.ctx.config)
        except FileNotFoundError:
            return  # renamed or deleted by its owner meanwhile
        except OSError as exc:
            self.ctx.log.error("%s: cannot take the request: %s", path, exc)
            return
        if isinstance(result, share.Rejected):
            self.ctx.log.warning(
                "%s: rejected (%d problem(s)), see %s",
                path,
                len(result.problems),
                result.error_file.name,
            )
            return
        info = result.info
        self.ctx.log.info("%s/run_%d: accepted from %s", info.project, info.run, path.name)
        self.scheduler.submit(result.run_dir, info)


def resume(ctx: RunContext, scheduler: Scheduler) -> int:
    """Queue again every run on the share that is not terminal; return how many."""
    pending: list[tuple[int, str, int, Path, runinfo.RunInfo]] = []
    for run_dir in share.iter_run_dirs(ctx.config.share):
        path = run_dir / "run.info"
        if not path.exists():
            continue
        try:
            info = runinfo.load(path)
        except runinfo.RunInfoError as exc:
            ctx.log.warning("%s: skipped: %s", run_dir, exc)
            continue
        if info.terminal:
            continue
        if info.host not in ctx.hosts:
            ctx.log.error("%s: host %r is no longer configured", run_dir, info.host)
            info.transition(runinfo.ERROR, f"host {info.host!r} is no longer in the agent config")
            runinfo.save(path, info)
            continue
        pending.append((ACTIVE_FIRST[info.state], info.accepted_at or "", info.run, run_dir, info))
    for _, _, _, run_dir, info in sorted(pending, key=lambda p: p[:3]):
        ctx.log.info("%s/run_%d: resuming (%s)", info.project, info.run, info.state)
        scheduler.submit(run_dir, info)
    return len(pending)


def serve(ctx: RunContext, *, once: bool, poll_every: float = 0.5) -> None:
    """Run the agent on ``ctx.config.share`` until ``ctx.stop`` is set.

    With ``once``: take every request there is now, finish every run, and return.
    Raises UserError if another agent serves the share.
    """
    with share_lock(ctx.config.share):
        scheduler = Scheduler(ctx)
        scheduler.start()
        try:
            resume(ctx, scheduler)
            intake = Intake(ctx, scheduler)
            while not ctx.stop.is_set():
                settling = intake.poll()
                if once and not settling and not scheduler.busy():
                    break
                scheduler.check_idle()
                ctx.stop.wait(poll_every)
        finally:
            ctx.stop.set()
            scheduler.join()
            for host in ctx.hosts.values():
                host.close()


def make_context(config: AgentConfig, log: logging.Logger) -> RunContext:
    """Open every configured host (lazily connecting) and return the agent's context."""
    hosts = {name: open_host(hc, config.state_dir) for name, hc in config.hosts.items()}
    return RunContext(config=config, hosts=hosts, log=log)
