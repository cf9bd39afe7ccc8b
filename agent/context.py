"""What every run's driver shares with the agent: config, hosts, logger, stop and wake-ups."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.hosts.base import Host
from agent.schema import AgentConfig


class Wakeups:
    """One event per run being driven: set to wake its sleeping driver early.

    The agent's watcher sets it when a ``cancel`` or ``sync`` file appears; a stop sets
    them all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[Path, threading.Event] = {}

    @contextmanager
    def registered(self, run_dir: Path) -> Iterator[threading.Event]:
        """Give ``run_dir`` an event for the ``with`` block."""
        event = threading.Event()
        with self._lock:
            self._events[run_dir] = event
        try:
            yield event
        finally:
            with self._lock:
                self._events.pop(run_dir, None)

    def get(self, run_dir: Path) -> threading.Event | None:
        """Return the event of ``run_dir``, or None if no driver has registered it."""
        with self._lock:
            return self._events.get(run_dir)

    def wake(self, run_dir: Path) -> None:
        """Wake the driver of ``run_dir`` if it is sleeping (or when it next sleeps)."""
        event = self.get(run_dir)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Wake every driver."""
        with self._lock:
            events = list(self._events.values())
        for event in events:
            event.set()

    def run_dirs(self) -> list[Path]:
        """Return the run folders being driven now."""
        with self._lock:
            return list(self._events)


def _nobody_listens(_path: Path) -> None:
    """The default change listener: nothing is published."""


def _nobody_reads(_path: Path, _data: Mapping[str, Any]) -> None:
    """The default save listener: nothing is published."""


@dataclass
class RunContext:
    """What a run needs from the agent: config, hosts, a logger, the stop signal, a clock,
    and ``on_change``, told of every run.info the agent writes (a run folder) and every
    request it rejects (the project folder): the pages, bills and notices are made from
    that. ``on_saved`` is told the same of a run.info that a run's driver saved, with the
    data it wrote, so that they need not read it back. Both must return at once (they
    only queue)."""

    config: AgentConfig
    hosts: Mapping[str, Host]
    log: logging.Logger
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time
    wakeups: Wakeups = field(default_factory=Wakeups)
    on_change: Callable[[Path], None] = _nobody_listens
    on_saved: Callable[[Path, Mapping[str, Any]], None] = _nobody_reads

    def request_stop(self) -> None:
        """Tell the agent and every driver to stop; safe to call from a signal handler."""
        self.stop.set()
        self.wakeups.wake_all()
