"""The systemd unit passes `systemd-analyze verify` without a single warning."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from testbed import require_tool

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "droprun.service"


def exec_start_program(unit_text: str) -> str:
    """Return the program of the unit's single ExecStart= line."""
    lines = re.findall(r"^ExecStart=(\S+)", unit_text, flags=re.MULTILINE)
    assert len(lines) == 1, lines
    return lines[0]


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `systemd-analyze verify` on ``unit_text`` with ExecStart pointing at a stub.

    verify refuses a unit whose ExecStart program does not exist ("is not executable"),
    and droprun need not be installed where the tests run.
    """
    stub = tmp_path / "droprun"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "droprun.service"
    unit.write_text(unit_text.replace(exec_start_program(unit_text), str(stub), 1))
    return subprocess.run(
        [require_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_verifies_with_no_output_at_all(tmp_path: Path) -> None:
    # verify exits 0 on unknown keys and bad values, only warning on stderr.
    done = verify(UNIT.read_text(), tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    done = verify(
        UNIT.read_text().replace("[Service]\n", "[Service]\nProtectSytem=strict\n"), tmp_path
    )
    assert "Unknown key" in done.stderr


def test_unit_runs_the_agent_as_droprun_confined() -> None:
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.MULTILINE))
    assert text.count("ExecStart=") == 1
    assert settings["ExecStart"].split()[1:] == ["agent", "--config", "/etc/droprun/droprun.toml"]
    assert exec_start_program(text).endswith("/droprun")
    assert (settings["User"], settings["Restart"]) == ("droprun", "on-failure")
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "droprun"),
        ("PrivateTmp", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
    ]:
        assert settings.get(key) == value, key
    assert "/srv/droprun" in settings["ReadWritePaths"]
