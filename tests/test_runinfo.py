"""run.info: versioned, checked, atomically replaced."""

from __future__ import annotations

import pytest

from agent import runinfo
from agent.runinfo import RunInfo, RunInfoError


def test_round_trip_keeps_every_field(tmp_path):
    info = RunInfo(project="p", run=3, name='quote " and $(x)', exit_code=0, gpu_names=["A100"])
    info.effective = {"timeout": "1h", "sources": {"timeout": "project"}}
    info.transition(runinfo.QUEUED)
    path = tmp_path / "run.info"
    runinfo.save(path, info)
    text = path.read_text()
    assert text.startswith("format = 1\n")
    back = runinfo.load(path)
    assert back == info


def test_no_temp_files_are_left_behind(tmp_path):
    path = tmp_path / "run.info"
    for state in (runinfo.QUEUED, runinfo.UPLOADING):
        info = RunInfo(project="p", run=0)
        info.transition(state)
        runinfo.save(path, info)
    assert [p.name for p in tmp_path.iterdir()] == ["run.info"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("format = 2\nproject = 'p'\nrun = 0\nstate = 'queued'\n", "format"),
        ("format = 1\nproject = 'p'\nrun = 0\nstate = 'dancing'\n", "dancing"),
        ("format = 1\nrun = 0\nstate = 'queued'\n", "project"),
        ("format = 1\nproject = 'p'\nrun = 0\nstate = \n", "TOML"),
        ("format = 1\nproject = 'p'\nrun = 'x'\nstate = 'queued'\n", "whole number"),
    ],
)
def test_corrupted_run_info_is_reported(tmp_path, text, words):
    path = tmp_path / "run.info"
    path.write_text(text)
    with pytest.raises(RunInfoError, match=words):
        runinfo.load(path)


def test_terminal_states_are_final():
    info = RunInfo(project="p", run=0)
    info.transition(runinfo.SUCCEEDED)
    with pytest.raises(ValueError):
        info.transition(runinfo.RUNNING)


def test_summary_reads_the_top_level_keys_only(tmp_path):
    info = RunInfo(project="p", run=1, notes="a\n[not a table]\n", exit_code=2)
    info.effective = {"timeout": "1h"}
    info.transition(runinfo.FAILED)
    path = tmp_path / "run.info"
    runinfo.save(path, info)
    summary = runinfo.load(path, summary=True)
    assert (summary.state, summary.exit_code, summary.run) == ("failed", 2, 1)
    plain = RunInfo(project="p", run=2, exit_code=0)
    plain.effective = {"timeout": "1h"}
    runinfo.save(path, plain)
    summary = runinfo.load(path, summary=True)
    assert summary.exit_code == 0 and summary.effective == {}


def test_entered_says_when_the_run_last_moved_to_a_state():
    info = runinfo.RunInfo(project="p", run=0)
    assert info.entered(runinfo.PENDING) is None
    info.history = [
        {"state": "pending", "at": "2026-01-01T00:00:00+00:00"},
        {"state": "running", "at": "2026-01-01T00:05:00+00:00"},
        {"state": "pending", "at": "2026-01-01T01:00:00+00:00"},
    ]
    assert info.entered(runinfo.PENDING) == 1767229200.0
