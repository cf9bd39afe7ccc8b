"""The droprun command line, run as a real process."""

from __future__ import annotations

import compileall
import os
import re
import shutil
import subprocess
import sys

import pytest

from agent.cli import make_parser
from agent.demo import copy_example_share, example_share

from shares import make_project, write_config


def droprun(*args, check_code: int | None = 0, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)], capture_output=True, text=True, **kw
    )
    if check_code is not None:
        assert result.returncode == check_code, result.stderr + result.stdout
    return result


def test_usage_error_exits_2():
    assert droprun("frobnicate", check_code=None).returncode == 2


# reStructuredText that docstrings use and a terminal shows as noise: ``x``, :func:`x`, `x`_
RST_MARKUP = re.compile(r"``|:[a-z]+:`|`_")
COMMANDS = ("agent", "validate", "init", "status", "tail", "cancel", "submit", "demo")


def test_help_is_plain_text():
    result = droprun("--help")
    assert "Drop a run.request file on a NAS share" in result.stdout
    assert "exit codes:" in result.stdout
    assert not RST_MARKUP.search(result.stdout), result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: droprun {command}")
    assert not RST_MARKUP.search(out), out


def test_validate_reports_every_problem_and_exits_1(tmp_path):
    bad = tmp_path / "run.request"
    bad.write_text('timout = "1h"\nargs = "x"\n')
    good = tmp_path / "ok.request"
    good.write_text('timeout = "1h"\n')
    result = droprun("validate", bad, good, check_code=1)
    assert "run.request:1" in result.stderr and "timeout" in result.stderr
    assert "run.request:2" in result.stderr
    assert "Traceback" not in result.stderr
    assert droprun("validate", good).returncode == 0


def test_init_writes_templates_and_never_overwrites(tmp_path):
    share = tmp_path / "share"
    droprun("init", share)
    config = share / "droprun.toml"
    assert config.exists()
    config.write_text("# mine\n" + config.read_text())
    droprun("init", share)
    assert config.read_text().startswith("# mine\n")
    assert droprun("validate", config).returncode == 0


def test_submit_status_tail_cancel(tmp_path):
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": "#!/bin/sh\necho hello\n"})
    env = {**os.environ, "DROPRUN_CONFIG": str(config)}
    droprun("submit", "proj", "timeout=2h", 'args=["a b"]', "name=x", env=env)
    droprun("submit", "proj", "name=y", env=env)
    assert sorted(p.name for p in project.glob("*.request")) == ["run-1.request", "run.request"]
    assert droprun("submit", "proj", "timeout=-1", env=env, check_code=1).stderr
    droprun("agent", "--config", config, "--once", env=env)
    status = droprun("status", env=env).stdout
    assert "succeeded" in status and "run_1" in status
    assert "hello" in droprun("tail", "proj", "0", env=env).stdout
    assert "already ended" in droprun("cancel", "proj", "run_0", env=env, check_code=1).stderr
    assert droprun("tail", "proj", "9", env=env, check_code=1).stderr


def test_demo_runs_the_example_to_success(tmp_path):
    result = droprun("demo", "--dir", tmp_path / "demo")
    assert "succeeded" in result.stdout
    output = tmp_path / "demo" / "share" / "tiny-regression" / "results" / "run_0" / "output"
    assert (output / "checkpoint-008.json").exists()
    # The demo ends with a page that shows the training curve: one point per epoch.
    page = (output.parent / "index.html").read_text()
    assert "From metrics.csv." in page
    assert page.count('<polyline data-series="loss" points="') == 1
    points = page.split('<polyline data-series="loss" points="')[1].split('"')[0].split()
    assert len(points) == 8
    assert "index.html" in result.stdout
    assert not list((tmp_path / "demo" / "share").rglob("__pycache__"))


def test_the_demo_copies_no_bytecode_of_the_installed_example(tmp_path):
    # pip compiles the installed example's bin/*.py; the copy must not carry that along.
    installed = tmp_path / "installed"
    shutil.copytree(example_share(), installed)
    assert compileall.compile_dir(installed, quiet=1)
    assert list(installed.rglob("__pycache__/*.pyc"))
    copy_example_share(tmp_path / "share", installed)
    copied = sorted(p.relative_to(tmp_path / "share") for p in (tmp_path / "share").rglob("*"))
    assert copied == sorted(
        p.relative_to(installed)
        for p in installed.rglob("*")
        if "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    assert (tmp_path / "share" / "tiny-regression" / "bin" / "train.py").is_file()


def test_a_second_agent_on_the_same_share_is_refused(tmp_path):
    config = write_config(tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = tmp_path / "share" / ".droprun" / "agent.lock"
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.1)
        second = droprun("agent", "--config", config, "--once", check_code=1)
        assert "already serving" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert first.returncode == 0


def test_agent_with_a_bad_config_names_the_file(tmp_path):
    config = tmp_path / "droprun.toml"
    config.write_text('share = 5\nsettle = "x"\n')
    result = droprun("agent", "--config", config, "--once", check_code=1)
    assert "droprun.toml:1" in result.stderr
    assert "Traceback" not in result.stderr
