"""EnvCache: runs that start together list packages once, then ask side by side."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from agent.hosts.envcache import REUSE_FOR, EnvCache


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


def answer(pip: str, stamp: str) -> dict[str, str | None]:
    return {"pip-key": pip, "pip": f"{pip}==1\n", "stamp-paths": "/py\n/site\n", "stamp": stamp}


def test_a_whole_answer_is_reused_while_its_stamp_holds_and_not_too_long() -> None:
    now = [1000.0]
    cache = EnvCache(clock=lambda: now[0])
    stamps = ["s1\n"]
    asked: list[str] = []
    checked: list[tuple[str, ...]] = []

    def ask(known: Mapping[str, str | None]) -> dict[str, str | None]:
        asked.append(stamps[0])
        return answer(f"k{len(asked)}", stamps[0])

    def stamp(paths: Sequence[str]) -> str:
        checked.append(tuple(paths))
        return stamps[0]

    first = cache.get(None, "/v", ask, devices="0", stamp=stamp)
    again = cache.get(None, "/v", ask, devices="0", stamp=stamp)
    assert asked == ["s1\n"] and again == first and checked == [("/py", "/site")]
    stamps[0] = "s2\n"  # a package was installed, or the host rebooted
    assert cache.get(None, "/v", ask, devices="0", stamp=stamp)["pip"] == "k2==1\n"
    now[0] += REUSE_FOR  # unchanged stamp, but old: asked again
    assert cache.get(None, "/v", ask, devices="0", stamp=stamp)["pip"] == "k3==1\n"
    # Other GPUs are another answer; without a stamp check nothing is reused.
    assert cache.get(None, "/v", ask, devices="1", stamp=stamp)["pip"] == "k4==1\n"
    assert cache.get(None, "/v", ask, devices="0")["pip"] == "k5==1\n"
    assert asked == ["s1\n", "s2\n", "s2\n", "s2\n", "s2\n"]


def test_an_answer_without_a_stamp_is_never_reused() -> None:
    cache = EnvCache()
    calls: list[int] = []

    def ask(known: Mapping[str, str | None]) -> dict[str, str | None]:
        calls.append(1)
        return {"python": "Python 3.11.7\n"}

    for _ in range(2):
        cache.get(None, None, ask, stamp=lambda paths: "")
    assert len(calls) == 2
