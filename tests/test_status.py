"""``droprun status`` and its cache of run.info summaries: the rows are always those of the
run.info files as they are now, whatever the cache holds or whether it can be written.

Real files throughout; run.info files are written by the agent's own writer and dated an
hour back (``settle``) where a test needs them cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import cli, runinfo
from agent.agentfile import load_agent_config
from agent.schema import AgentConfig
from agent.status import CACHE_FORMAT, cache_path, status_rows

from shares import write_config

START = 1_700_000_000
HOUR_AGO = time.time() - 3600


def add_run(share: Path, project: str, run: int, **values: object) -> Path:
    """Write ``share/project/results/run_N/run.info`` (succeeded after 90 s unless told)."""
    run_dir = share / project / "results" / f"run_{run}"
    run_dir.mkdir(parents=True, exist_ok=True)
    fields = {"state": runinfo.SUCCEEDED, "host": "local", "start_epoch": START + run}
    fields |= {"duration_s": 90, "exit_code": 0} | values
    info = runinfo.RunInfo(project=project, run=run, run_id=f"{run:032x}", **fields)
    runinfo.save(run_dir / "run.info", info)
    return run_dir


def settle(run_dir: Path, when: float = HOUR_AGO) -> None:
    """Date a run.info back, as every finished run's is: old enough to be cached."""
    os.utime(run_dir / "run.info", (when, when))


def make_share(tmp_path: Path) -> AgentConfig:
    """A share of two projects, five runs in all, every run.info an hour old."""
    config = load_agent_config(write_config(tmp_path))
    share = config.share
    dirs = [
        add_run(share, "alpha", 0),
        add_run(share, "alpha", 1, state=runinfo.FAILED, exit_code=3, sweep_id="ab12cd34"),
        add_run(share, "alpha", 2, state=runinfo.ERROR, host=None, start_epoch=None,
                duration_s=None, exit_code=None),
        add_run(share, "beta", 0, host="gpu1", sweep_id="ab12cd34"),
        add_run(share, "beta", 7, state=runinfo.CANCELLED, duration_s=4000, exit_code=None),
    ]  # fmt: skip
    for run_dir in dirs:
        settle(run_dir)
    for project in ("alpha", "beta"):  # the results folders too: their lists of runs
        os.utime(share / project / "results", (HOUR_AGO, HOUR_AGO))
    return config


def uncached(config: AgentConfig, tmp_path: Path, *args: str | None) -> list[list[str]]:
    """The rows as read from every run.info, through a state_dir with no cache yet."""
    fresh = tmp_path / f"fresh-{time.monotonic_ns()}"
    return status_rows(dataclasses.replace(config, state_dir=fresh), *args)


def edit_in_place(path: Path, old: str, new: str) -> None:
    """Change ``old`` to ``new`` (same length) inside the file itself: same inode, same size."""
    assert len(old) == len(new)
    text = path.read_text()
    assert old in text
    with open(path, "r+") as f:
        f.write(text.replace(old, new))


def row(rows: list[list[str]], project: str, run: str) -> list[str]:
    [found] = [r for r in rows if r[0] == project and r[1] == run]
    return found


def test_rows_from_the_cache_are_those_of_the_files(tmp_path: Path) -> None:
    config = make_share(tmp_path)
    share_before = sorted(config.share.rglob("*"))
    first = status_rows(config)
    assert first == uncached(config, tmp_path)
    assert [r[:3] for r in first] == [
        ["alpha", "run_0", "succeeded"],
        ["alpha", "run_1", "failed"],
        ["alpha", "run_2", "error"],
        ["beta", "run_0", "succeeded"],
        ["beta", "run_7", "cancelled"],
    ]
    assert row(first, "alpha", "run_1")[3:] == ["local", first[1][4], "0:01:30", "3"]
    assert row(first, "alpha", "run_2")[3:] == ["-", "-", "-", "-"]
    assert row(first, "beta", "run_7")[5:] == ["1:06:40", "-"]
    cache = json.loads(cache_path(config).read_text())
    assert cache["format"] == CACHE_FORMAT
    assert sorted(cache["projects"]["alpha"]["runs"]) == ["run_0", "run_1", "run_2"]
    assert cache["projects"]["alpha"]["listing"][2] == ["run_0", "run_1", "run_2"]
    assert status_rows(config) == first  # now from the cache
    assert status_rows(config, None, "ab12cd34") == uncached(config, tmp_path, None, "ab12cd34")
    assert status_rows(config, "beta") == uncached(config, tmp_path, "beta")
    # Nothing was written on the share: the cache is under the agent's state_dir.
    assert sorted(config.share.rglob("*")) == share_before
    assert cache_path(config).parent == config.state_dir


def test_a_run_info_whose_key_is_unchanged_is_not_read_again(tmp_path: Path) -> None:
    """Shows that the cache is used: same inode, size and mtime (put back by hand) -> the
    cached row. (Like make and rsync, a file given back its old mtime is not noticed.)"""
    config = make_share(tmp_path)
    status_rows(config)
    path = config.share / "alpha" / "results" / "run_1" / "run.info"
    st = path.stat()
    edit_in_place(path, "exit_code = 3", "exit_code = 4")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert row(status_rows(config), "alpha", "run_1")[6] == "3"
    assert row(uncached(config, tmp_path), "alpha", "run_1")[6] == "4"
    # The same for a results folder's list of runs.
    results = config.share / "beta" / "results"
    st = results.stat()
    add_run(config.share, "beta", 9)
    os.utime(results, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [r[1] for r in status_rows(config) if r[0] == "beta"] == ["run_0", "run_7"]
    assert [r[1] for r in uncached(config, tmp_path) if r[0] == "beta"] == [
        "run_0",
        "run_7",
        "run_9",
    ]


def test_what_changed_within_one_tick_of_the_clock_is_not_cached(tmp_path: Path) -> None:
    """A file system's clock ticks (2 s on FAT): a file changed twice within a tick keeps its
    mtime. Simulated by putting the mtime back; a time not yet 2 s past is never cached."""
    config = make_share(tmp_path)
    soon = time.time() + 3600  # never "2 s past" during the test, however slow the machine
    path = config.share / "alpha" / "results" / "run_1" / "run.info"
    results = config.share / "beta" / "results"
    os.utime(path, (soon, soon))
    os.utime(results, (soon, soon))
    status_rows(config)
    edit_in_place(path, "exit_code = 3", "exit_code = 8")
    os.utime(path, (soon, soon))
    add_run(config.share, "beta", 9)
    os.utime(results, (soon, soon))
    rows = status_rows(config)
    assert row(rows, "alpha", "run_1")[6] == "8"
    assert [r[1] for r in rows if r[0] == "beta"] == ["run_0", "run_7", "run_9"]
    assert "run_1" not in _cached(config, "alpha")["runs"]
    assert "listing" not in _cached(config, "beta")


@pytest.mark.parametrize("mtime", ["now", "another hour"])
def test_a_run_info_changed_in_place_to_the_same_size_is_read_again(
    tmp_path: Path, mtime: str
) -> None:
    config = make_share(tmp_path)
    assert row(status_rows(config), "alpha", "run_1")[6] == "3"
    run_dir = config.share / "alpha" / "results" / "run_1"
    inode, size = (run_dir / "run.info").stat().st_ino, (run_dir / "run.info").stat().st_size
    edit_in_place(run_dir / "run.info", "exit_code = 3", "exit_code = 5")
    if mtime == "another hour":
        settle(run_dir, HOUR_AGO - 3600)  # a changed mtime, old enough to be cached itself
    st = (run_dir / "run.info").stat()
    assert (st.st_ino, st.st_size) == (inode, size)
    for _ in range(2):  # the first call reads it again, the second uses what it cached
        rows = status_rows(config)
        assert row(rows, "alpha", "run_1")[6] == "5"
        assert rows == uncached(config, tmp_path)
    assert row(status_rows(config, "alpha"), "alpha", "run_1")[6] == "5"


def test_a_run_info_replaced_by_the_agent_is_read_again(tmp_path: Path) -> None:
    config = make_share(tmp_path)
    status_rows(config)
    add_run(config.share, "beta", 0, host="gpu2", sweep_id="ab12cd34")  # new inode, mtime now
    assert row(status_rows(config), "beta", "run_0")[3] == "gpu2"


def test_a_running_run_s_duration_counts_up_to_now_from_the_cache_too(tmp_path: Path) -> None:
    config = make_share(tmp_path)
    started = int(time.time()) - 3600
    run_dir = add_run(config.share, "beta", 8, state=runinfo.RUNNING, start_epoch=started,
                      duration_s=None, exit_code=None)  # fmt: skip
    settle(run_dir)
    start = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    for _ in range(2):
        found = row(status_rows(config), "beta", "run_8")
        assert found[2:5] == ["running", "local", start] and found[6] == "-"
        assert found[5].startswith("1:00:")


def test_a_deleted_run_disappears_and_a_new_run_appears(tmp_path: Path) -> None:
    config = make_share(tmp_path)
    status_rows(config)
    shutil.rmtree(config.share / "alpha" / "results" / "run_1")
    shutil.rmtree(config.share / "beta")
    add_run(config.share, "alpha", 3, state=runinfo.TIMED_OUT, exit_code=None)
    settle(add_run(config.share, "gamma", 0))
    rows = status_rows(config)
    assert [r[:3] for r in rows] == [
        ["alpha", "run_0", "succeeded"],
        ["alpha", "run_2", "error"],
        ["alpha", "run_3", "timed_out"],
        ["gamma", "run_0", "succeeded"],
    ]
    assert rows == uncached(config, tmp_path)
    projects = json.loads(cache_path(config).read_text())["projects"]
    assert "beta" not in projects and "run_1" not in projects["alpha"]["runs"]


def test_an_unreadable_run_info_is_shown_as_such_and_read_again_once_fixed(
    tmp_path: Path,
) -> None:
    config = make_share(tmp_path)
    path = config.share / "alpha" / "results" / "run_0" / "run.info"
    good = path.read_bytes()
    path.write_bytes(b"format = 1\nstate = [broken\n")
    settle(path.parent)
    for _ in range(2):
        assert row(status_rows(config), "alpha", "run_0") == ["alpha", "run_0", "?"] + ["-"] * 4
    path.write_bytes(good)
    settle(path.parent, HOUR_AGO - 60)
    assert row(status_rows(config), "alpha", "run_0")[2] == "succeeded"


def _cached(config: AgentConfig, project: str) -> dict[str, Any]:
    return dict(json.loads(cache_path(config).read_text())["projects"][project])


def _doc(config: AgentConfig, projects: object, **top: object) -> bytes:
    doc = {"format": CACHE_FORMAT, "share": str(config.share), "projects": projects} | top
    return json.dumps(doc).encode()


# Each makes a cache from the share's config, alpha's run_1 entry and alpha's listing as
# they would be now, but for the old exit code: a cache trusted in any way shows 3.
CORRUPT: dict[str, Callable[[AgentConfig, list[Any], list[Any]], bytes]] = {
    "empty": lambda c, e, ls: b"",
    "binary": lambda c, e, ls: b"\x00\xff garbage",
    "truncated": lambda c, e, ls: _doc(c, {"alpha": {"listing": ls, "runs": {"run_1": e}}})[:-9],
    "a list": lambda c, e, ls: b"[1, 2, 3]",
    "another format": lambda c, e, ls: _doc(
        c, {"alpha": {"listing": ls, "runs": {"run_1": e}}}, format=CACHE_FORMAT + 1
    ),
    "another share": lambda c, e, ls: _doc(
        c, {"alpha": {"listing": ls, "runs": {"run_1": e}}}, share="/elsewhere"
    ),
    # The right keys with wrong values: what a bug or a hand edit could leave.
    "wrong types": lambda c, e, ls: _doc(
        c,
        {
            "alpha": {"listing": ls, "runs": {"run_1": [*e[:5], 7, *e[6:]], "run_0": "x"}},
            "beta": [1],
        },
    ),
    "short entry": lambda c, e, ls: _doc(c, {"alpha": {"runs": {"run_1": e[:3]}}}),
    "runs not a table": lambda c, e, ls: _doc(c, {"alpha": {"listing": ls, "runs": [e]}}),
    "a listing with a name not of a run": lambda c, e, ls: _doc(
        c, {"alpha": {"listing": [*ls[:2], ["run_0", "../../beta/results/run_0"]]}}
    ),
    "a listing of the wrong shape": lambda c, e, ls: _doc(
        c, {"alpha": {"listing": [*ls[:2], ["run_0", 1]], "runs": {}}, "beta": {"listing": 5}}
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_cache_or_one_of_another_format_is_ignored_and_replaced(
    tmp_path: Path, kind: str
) -> None:
    config = make_share(tmp_path)
    truth = status_rows(config)
    entry, listing = _cached(config, "alpha")["runs"]["run_1"], _cached(config, "alpha")["listing"]
    # What the run.info says now differs from what any stale entry says.
    path = config.share / "alpha" / "results" / "run_1" / "run.info"
    edit_in_place(path, "exit_code = 3", "exit_code = 6")
    settle(path.parent, HOUR_AGO - 60)
    wanted = uncached(config, tmp_path)
    assert wanted != truth
    # A stale entry with the run.info's key as it is now.
    st = path.stat()
    entry = [st.st_ino, st.st_size, st.st_mtime_ns, *entry[3:]]
    cache_path(config).write_bytes(CORRUPT[kind](config, entry, listing))
    assert status_rows(config) == wanted
    assert json.loads(cache_path(config).read_text())["format"] == CACHE_FORMAT
    assert _cached(config, "alpha")["runs"]["run_1"][9] == 6
    assert _cached(config, "alpha")["listing"] == listing
    assert status_rows(config) == wanted


@pytest.mark.parametrize("blocker", ["state_dir is a file", "the cache is a folder"])
def test_status_works_when_the_cache_cannot_be_written(tmp_path: Path, blocker: str) -> None:
    config = make_share(tmp_path)
    if blocker == "state_dir is a file":
        config.state_dir.parent.mkdir(parents=True, exist_ok=True)
        config.state_dir.write_text("not a folder\n")
    else:
        (cache_path(config) / "inside").mkdir(parents=True)
    wanted = uncached(config, tmp_path)
    for _ in range(2):
        assert status_rows(config) == wanted
    if blocker == "state_dir is a file":
        assert config.state_dir.read_text() == "not a folder\n"
    else:
        assert [p.name for p in config.state_dir.iterdir()] == [cache_path(config).name]
        assert [p.name for p in cache_path(config).iterdir()] == ["inside"]


def test_the_command_prints_the_same_table_with_and_without_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_share(tmp_path)
    argv = ["status", "--config", str(config.path)]
    assert cli.main(argv) == 0
    cold = capsys.readouterr().out
    assert cache_path(config).exists()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == cold
    lines = cold.splitlines()
    assert lines[0].split() == ["PROJECT", "RUN", "STATE", "HOST", "START", "DURATION", "EXIT"]
    assert len(lines) == 6 and lines[3].split() == ["alpha", "run_2", "error", *"----"]
