"""Sweeps: one request with a ``[sweep]`` table becomes one run per combination.

Whole runs on the local host; ``droprun status --sweep`` as a real process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import runinfo

from shares import REPO, drop, make_project, run_once, write_config

SHOW = """#!/bin/sh
echo "args: $*"
echo "env: lr=$DROPRUN_PARAM_LR batch=$DROPRUN_PARAM_BATCH_SIZE"
"""


def runs(project: Path) -> list[runinfo.RunInfo]:
    folders = sorted((project / "results").glob("run_*"), key=lambda p: int(p.name[4:]))
    return [runinfo.load(p / "run.info") for p in folders]


def log(project: Path, run: int) -> str:
    return (project / "results" / f"run_{run}" / "log.log").read_text()


def status(config: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == code, result.stderr
    return result


def test_a_2x3_sweep_makes_six_runs_with_their_args_and_env(tmp_path: Path) -> None:
    config = write_config(tmp_path, slots=2)
    project = make_project(tmp_path / "share", "proj", {"run.sh": SHOW})
    text = (
        'name = "grid"\nargs = ["--epochs", "3"]\n\n'
        '[sweep]\nlr = [0.1, 0.01]\nbatch-size = [32, 64, "auto"]\n'
    )
    drop(project, text)
    run_once(config)
    made = runs(project)
    assert [r.run for r in made] == [0, 1, 2, 3, 4, 5]
    assert {r.state for r in made} == {runinfo.SUCCEEDED}
    assert len({r.sweep_id for r in made}) == 1 and made[0].sweep_id
    seen = set()
    for r in made:
        assert r.name == "grid"
        assert r.sweep is not None
        lr, batch = r.sweep["lr"], r.sweep["batch-size"]
        seen.add((lr, batch))
        words = ["--epochs", "3", "--lr", str(lr), "--batch-size", str(batch)]
        assert r.effective["args"] == words
        assert r.effective["sources"]["args"] == "sweep"
        assert f"args: {' '.join(words)}" in log(project, r.run)
        assert f"env: lr={lr} batch={batch}" in log(project, r.run)
        request = project / "results" / f"run_{r.run}" / "run.request"
        assert request.read_text() == text  # each run folder is complete on its own
    assert seen == {(lr, b) for lr in (0.1, 0.01) for b in (32, 64, "auto")}

    drop(project, "")  # a run of no sweep
    run_once(config)
    sweep_id = made[0].sweep_id
    assert sweep_id is not None
    out = status(config, "--sweep", sweep_id).stdout.splitlines()
    assert out[0].split()[-1] == "VALUES"
    assert len(out) == 7 and all("run_6" not in line for line in out)
    assert "lr=0.1 batch-size=auto" in out[-1] or any("batch-size=auto" in x for x in out)
    assert "no runs of sweep" in status(config, "--sweep", "nope", code=1).stderr


def test_zip_pairs_the_values(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": SHOW})
    drop(project, '[sweep]\nmode = "zip"\nlr = [0.1, 0.01, 0.001]\nbatch_size = [8, 16, 32]\n')
    run_once(config)
    made = runs(project)
    assert [r.sweep for r in made] == [
        {"lr": 0.1, "batch_size": 8},
        {"lr": 0.01, "batch_size": 16},
        {"lr": 0.001, "batch_size": 32},
    ]
    assert "args: --lr 0.001 --batch_size 32" in log(project, 2)


BAD = [
    (
        "[sweep]\nlr = 0.1\n",
        "run.request:2: sweep.lr: found 0.1 (a number with a fraction), expected an array",
    ),
    ("[sweep]\nlr = []\n", "run.request:2: sweep.lr: found an empty array"),
    ("[sweep]\n", "run.request:1: sweep: found an empty sweep"),
    ('[sweep]\nmode = "zip"\n', "found an empty sweep"),
    ("sweep = 3\n", "run.request:1: sweep: found 3 (an integer), expected a table"),
    (
        'args = ["--lr", "1"]\n[sweep]\nlr = [0.1]\n',
        'run.request:3: sweep.lr: args already hold "--lr"',
    ),
    ('args = ["--lr=1"]\n[sweep]\nlr = [0.1]\n', 'args already hold "--lr"'),
    (
        'env = { DROPRUN_PARAM_LR = "1" }\n[sweep]\nlr = [0.1]\n',
        "env already sets DROPRUN_PARAM_LR",
    ),
    (
        "[sweep]\na = ["
        + ", ".join(map(str, range(17)))
        + "]\nb = ["
        + ", ".join(map(str, range(17)))
        + "]\n",
        "found 289 combinations, a sweep makes at most 256 runs",
    ),
    ('[sweep]\nmode = "zip"\na = [1, 2]\nb = [1]\n', "a has 2, b has 1"),
    (
        '[sweep]\nmode = "grid"\na = [1]\n',
        'run.request:2: sweep.mode: found "grid" (a string), expected "product" or "zip"',
    ),
    ('[sweep]\n"a b" = [1]\n', "not a parameter name"),
    ("[sweep]\nb-c = [1]\nb_c = [2]\n", "gives the same variable DROPRUN_PARAM_B_C as b-c"),
    ("[sweep]\na = [[1], 2]\n", "item 1: found an array"),
    ("[sweep]\na = [nan]\n", "expected a finite number"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_sweep_is_refused_and_nothing_runs(tmp_path: Path, text: str, message: str) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": SHOW})
    drop(project, text)
    run_once(config)
    error = (project / "run.request.error").read_text()
    assert message in error, error
    assert not list((project / "results").glob("run_*"))


def test_a_sweep_key_in_the_projects_args_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(
        tmp_path / "share", "proj", {"run.sh": SHOW}, 'args = ["--batch", "8"]\n'
    )
    drop(project, "[sweep]\nbatch = [1, 2]\n")
    run_once(config)
    error = (project / "run.request.error").read_text()
    assert 'run.request:2: sweep.batch: args already hold "--batch"' in error
    assert not list((project / "results").glob("run_*"))


def test_submit_writes_a_sweep(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": SHOW})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "submit",
            "--config",
            str(config),
            "proj",
            "sweep.lr=[0.1, 0.01]",
            "sweep.mode=zip",
            "sweep.batch_size=[1, 2]",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    run_once(config)
    assert [r.sweep for r in runs(project)] == [
        {"lr": 0.1, "batch_size": 1},
        {"lr": 0.01, "batch_size": 2},
    ]
