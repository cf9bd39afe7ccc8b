"""tests/mindeps.py: the pins that tests/run.sh installs come from pyproject's lower bounds."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mindeps import minimum_pin, minimum_pins

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("requirement", "pin"),
    [
        ("paramiko>=3.2.0", "paramiko==3.2.0"),
        ("sh >= 2.0", "sh==2.0"),
        ("watchdog[watchmedo]>=0.10,<8", "watchdog[watchmedo]==0.10"),
        ("tomlkit<1,>=0.15.2", "tomlkit==0.15.2"),
        ('inotify_simple>=1.3.3; sys_platform == "linux"', "inotify_simple==1.3.3"),
    ],
)
def test_the_lower_bound_becomes_an_exact_pin(requirement: str, pin: str) -> None:
    assert minimum_pin(requirement) == pin


@pytest.mark.parametrize("requirement", ["paramiko", "paramiko==3.2", "paramiko<4", "pa>3"])
def test_a_dependency_without_a_lower_bound_is_refused(requirement: str) -> None:
    with pytest.raises(ValueError, match="no >= lower bound"):
        minimum_pin(requirement)


def test_every_dependency_of_the_repo_gets_a_pin() -> None:
    text = (REPO / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    pins = minimum_pins(text)
    assert len(pins) == len(deps)
    assert all("==" in pin for pin in pins)
    script = subprocess.run(
        [sys.executable, str(REPO / "tests" / "mindeps.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout.split() == pins


def test_the_script_fails_loudly_on_an_unbounded_dependency(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["sh"]\n')
    script = subprocess.run(
        [sys.executable, str(REPO / "tests" / "mindeps.py"), str(tmp_path / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert script.returncode == 1
    assert "'sh' has no >= lower bound" in script.stderr
