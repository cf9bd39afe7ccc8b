"""A host's last ``envinfo`` answers, so that runs in a row do not each ask it all again.

A whole answer is reused while its stamp (``envstamp``: the boot, where the tools resolve
on PATH, and the interpreter, package folders and nvcc as files) is unchanged, and for at
most :data:`REUSE_FOR` seconds: one cheap helper call instead of starting python. When it
changed, the package lists (pip freeze, conda list: seconds) are still skipped while their
own keys are unchanged. Runs that start together would each list them before any list is
kept: until one is kept they ask one after another, so only the first lists them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.envcapture import reuse_lists

Sections = dict[str, str | None]
REUSE_FOR = 600.0  # a whole answer is asked again after this long, stamp or not


@dataclass(frozen=True)
class _Answer:
    sections: Sections
    paths: tuple[str, ...]
    stamp: str
    at: float


def stamp_of(sections: Mapping[str, str | None]) -> tuple[tuple[str, ...], str] | None:
    """Return the stamp paths and stamp text of an answer, or None if it has none (pure)."""
    paths, stamp = sections.get("stamp-paths"), sections.get("stamp")
    if paths is None or stamp is None:
        return None
    return tuple(line for line in paths.splitlines() if line), stamp.strip()


class EnvCache:
    """The last answer per (conda_env, venv, devices) and the package lists per
    (conda_env, venv), with a lock for each (held across a call only while no list is kept).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str | None, str | None], threading.Lock] = {}
        self._lists: dict[tuple[str | None, str | None], dict[str, str | None]] = {}
        self._answers: dict[tuple[str | None, str | None, str | None], _Answer] = {}

    def get(
        self,
        conda_env: str | None,
        venv: str | None,
        ask: Callable[[Mapping[str, str | None]], Sections],
        *,
        devices: str | None = None,
        stamp: Callable[[Sequence[str]], str] | None = None,
    ) -> Sections:
        """Return the environment: the last answer if ``stamp(paths)`` says it still holds,
        else ``ask(known)``'s sections (``known``: the kept lists and their keys) with the
        lists it left out as unchanged filled in. Keeps what it got for the next call.

        Raises what ``ask`` and ``stamp`` raise.
        """
        with self._lock:
            last = self._answers.get((conda_env, venv, devices))
        fresh = last is not None and self._clock() - last.at < REUSE_FOR
        if stamp is not None and last is not None and fresh and self._holds(last, stamp):
            return dict(last.sections)
        sections = self._ask(conda_env, venv, ask)
        stamped = stamp_of(sections)
        if stamped is not None:
            answer = _Answer(dict(sections), *stamped, self._clock())
            with self._lock:
                self._answers[(conda_env, venv, devices)] = answer
        return sections

    @staticmethod
    def _holds(last: _Answer, stamp: Callable[[Sequence[str]], str]) -> bool:
        """Return True if the host's stamp of ``last``'s paths is still ``last``'s."""
        return stamp(last.paths).strip() == last.stamp

    def _ask(
        self,
        conda_env: str | None,
        venv: str | None,
        ask: Callable[[Mapping[str, str | None]], Sections],
    ) -> Sections:
        """Return ``ask(known)`` with the kept lists filled in; keep its lists."""
        key = (conda_env, venv)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            known = self._lists.get(key)
            if known is None:  # the first call lists the packages; the others wait for it
                sections, self._lists[key] = reuse_lists(ask({}), {})
                return sections
        sections, kept = reuse_lists(ask(known), known)
        with key_lock:
            self._lists[key] = kept
        return sections
