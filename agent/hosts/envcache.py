"""The package lists a host's ``envinfo`` gave lately, and one ``envinfo`` at a time per
interpreter.

Listing packages (pip freeze, conda list) takes seconds; the helper skips it while the
packages are unchanged since the list kept here. Runs that start together would each list
them before any list is kept, all at once: until a list is kept they ask one after
another, so only the first lists them; after that they ask side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from agent.envcapture import reuse_lists

Sections = dict[str, str | None]


class EnvCache:
    """Package lists (with their keys) per (conda_env, venv), and a lock for each (held
    across a call only while no list is kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str | None, str | None], threading.Lock] = {}
        self._lists: dict[tuple[str | None, str | None], dict[str, str | None]] = {}

    def get(
        self,
        conda_env: str | None,
        venv: str | None,
        ask: Callable[[Mapping[str, str | None]], Sections],
    ) -> Sections:
        """Return ``ask(known)``'s sections (``known``: the kept lists and their keys) with
        the lists it left out as unchanged filled in; keep its lists for the next call.

        Raises what ``ask`` raises.
        """
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
