"""Shared fixtures: real sshd, smbd and network-namespace servers (see tests/testbed*.py).

Property tests run derandomized under CI (``CI`` set, or ``--hypothesis-profile=ci`` as
tests/run.sh passes): the same examples on every machine, so a red build is about the
code, not about which inputs this run happened to draw.

The sshd fixtures live here, not in testbed.py, so that the benchmarks can use the test bed
without pytest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from testbed_netns import netns_host
from testbed_slurm import SlurmLogin, slurm_login
from testbed_smb import smbd_server

from testbed import SshServer, TestUser, ensure_test_user, running_sshd

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["netns_host", "root", "slurm", "smbd_server", "sshd_server", "test_user"]


@pytest.fixture(scope="session")
def test_user() -> TestUser:
    """The unprivileged login user, created once per machine."""
    return ensure_test_user()


@pytest.fixture
def sshd_server(test_user: TestUser) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 and a free port, with its own host key, user key, known_hosts."""
    with running_sshd(test_user, "127.0.0.1") as server:
        yield server


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An agent root for ssh tests; removes the ssh control dir the agent may make in /tmp."""
    from agent.hosts.sshargs import make_control_dir

    yield tmp_path
    control_dir = make_control_dir(tmp_path / "state", os.geteuid())
    if control_dir.parent == Path("/tmp") and control_dir.exists():
        shutil.rmtree(control_dir)


@pytest.fixture(scope="session")
def slurm(test_user: TestUser) -> Iterator[SlurmLogin]:
    """One Slurm cluster and its login sshd for the whole session (starting takes seconds)."""
    with slurm_login(test_user) as login:
        yield login
