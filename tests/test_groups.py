"""Host groups and ``gpus = N``: runs go to the first member with a free slot and enough free
GPUs, never over a host's slots, each seeing exactly the GPUs it was given."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.problems import InvalidFile

from shares import drop, info, make_project, run_once, write_config
from testbed import SshServer, TestUser, running_sshd

# Records where and when it ran, then works a little: one line per start and end.
RECORD = """#!/bin/sh
echo "start $(pwd) $(date +%s.%N)" >> "$TRACE"
echo "gpus=${CUDA_VISIBLE_DEVICES-unset}"
sleep 1
echo "end $(pwd) $(date +%s.%N)" >> "$TRACE"
"""


@pytest.fixture
def two_servers(test_user: TestUser) -> Iterator[tuple[SshServer, SshServer]]:
    with (
        running_sshd(test_user, "127.0.0.1") as first,
        running_sshd(test_user, "127.0.0.1") as second,
    ):
        yield first, second


def _host(name: str, server: SshServer, slots: int = 1) -> str:
    return (
        f'[hosts.{name}]\nkind = "ssh"\naddress = "{server.address}"\nport = {server.port}\n'
        f'user = "{server.user}"\nkey = "{server.key}"\nknown_hosts = "{server.known_hosts}"\n'
        f'remote_root = "{server.remote_root}"\nslots = {slots}\n'
    )


def _intervals(trace: Path) -> dict[str, list[tuple[float, float]]]:
    """Return, per run dir on a server, when it started and ended, from the trace lines."""
    starts: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for line in trace.read_text().splitlines():
        word, run_dir, at = line.split()
        if word == "start":
            starts[run_dir] = float(at)
        else:
            spans.setdefault(run_dir.split("/proj/")[0], []).append((starts[run_dir], float(at)))
    return spans


def test_a_group_spreads_runs_over_its_hosts_and_never_overfills_one(
    root: Path, two_servers: tuple[SshServer, SshServer]
) -> None:
    first, second = two_servers
    trace = first.base / "trace"  # both servers are this machine, as the same user
    config = write_config(
        root,
        extra='[groups]\nfast = ["gpu1", "gpu2"]\n[defaults]\nhost = "fast"\n'
        + _host("gpu1", first)
        + _host("gpu2", second),
    )
    project = make_project(root / "share", "proj", {"run.sh": RECORD})
    for n in range(4):
        drop(project, f'env = {{ TRACE = "{trace}" }}\n', name=f"r{n}.request")
    run_once(config)

    hosts = []
    for n in range(4):
        result = info(project, n)
        assert result.state == runinfo.SUCCEEDED, result.reason
        assert (result.group, result.queued_s) == ("fast", 0)
        hosts.append(result.host)
    assert sorted(set(hosts)) == ["gpu1", "gpu2"]  # the second run did not wait for gpu1
    spans = _intervals(trace)
    assert sum(len(s) for s in spans.values()) == 4
    for host_spans in spans.values():  # one slot each: never two runs at once on a host
        ordered = sorted(host_spans)
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(ordered))


def test_runs_get_the_gpus_they_ask_for_and_wait_for_them(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    config = write_config(tmp_path, slots=3, host_extra='gpus = ["0", "1", "2"]\n')
    project = make_project(tmp_path / "share", "proj", {"run.sh": RECORD})
    for name, request in (("a", "gpus = 2\n"), ("b", "gpus = 2\n"), ("c", "")):
        drop(project, f'env = {{ TRACE = "{trace}" }}\n{request}', name=f"{name}.request")
    run_once(config)

    given = {}
    for n in range(3):
        result = info(project, n)
        assert result.state == runinfo.SUCCEEDED, result.reason
        log = (project / "results" / f"run_{n}" / "log.log").read_text()
        visible = log.split("gpus=")[1].split()[0]
        assert result.gpu_ids is not None and visible == ",".join(result.gpu_ids)
        assert result.gpus == len(result.gpu_ids)
        given[n] = set(result.gpu_ids)
    assert sorted(len(ids) for ids in given.values()) == [1, 2, 2]  # unset: one slot's share
    # The two runs that want 2 of the 3 GPUs never ran at the same time.
    times: dict[str, dict[str, float]] = {}
    for line in trace.read_text().splitlines():
        word, run_dir, at = line.split()
        times.setdefault(run_dir.rsplit("_", 1)[1], {})[word] = float(at)
    a, b = (times[str(n)] for n in given if len(given[n]) == 2)
    assert a["end"] <= b["start"] or b["end"] <= a["start"]


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ('fast = ["local", "nope"]', '"nope" is not a host of [hosts] (hosts: "local")'),
        ('local = ["local"]', "a host is named 'local' too"),
        ("fast = []", "an empty group"),
        ('fast = "gpu1"', "expected an array of host names"),
    ],
)
def test_bad_groups_are_refused(tmp_path: Path, groups: str, message: str) -> None:
    config = write_config(tmp_path, extra=f"[groups]\n{groups}\n")
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(config)
    assert any(message in str(p) for p in bad.value.problems), bad.value.problems


def test_more_gpus_than_any_member_has_is_refused(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        extra='[groups]\nfast = ["local", "other"]\n[hosts.other]\ngpus = ["0", "1"]\n',
        host_extra='gpus = ["0"]\n',
    )
    project = make_project(tmp_path / "share", "proj", {"run.sh": RECORD})
    drop(project, 'host = "fast"\ngpus = 3\n')
    run_once(config)
    error = (project / "run.request.error").read_text()
    assert "run.request:2: gpus: found 3 GPUs, expected at most 2" in error
    assert not (project / "results" / "run_0").exists()
