"""EnvCache: runs that start together list packages once, then ask side by side."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from agent.hosts.envcache import EnvCache


def test_runs_starting_together_list_the_packages_once() -> None:
    cache = EnvCache()
    asked: list[str] = []
    first_inside = threading.Event()
    release = threading.Event()

    def ask(known: Mapping[str, str | None]) -> dict[str, str | None]:
        if not known:
            first_inside.set()
            release.wait(10)
            asked.append("listed")
            return {"pip-key": "k1", "pip": "torch==1\n"}
        asked.append("same")
        return {"pip-key": known["pip-key"], "pip": "@@same@@"}

    results: list[dict[str, str | None]] = []
    first = threading.Thread(target=lambda: results.append(cache.get(None, "/v", ask)))
    first.start()
    assert first_inside.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.get(None, "/v", ask)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert asked == ["listed", "same"]
    assert [r["pip"] for r in results] == ["torch==1\n", "torch==1\n"]
    # Another interpreter has lists of its own.
    assert cache.get("torch", None, lambda known: {"pip": "x\n", "pip-key": "k2"})["pip"] == "x\n"
