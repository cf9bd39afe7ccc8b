"""The registry of host kinds: a new kind is one module (here: this test's own) and needs
no change anywhere else to be validated, templated, opened and run on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import runinfo
from agent.agentfile import load_agent_config
from agent.fields import setting
from agent.hosts.base import Host
from agent.hosts.kinds import HostEnv, HostKind, builtin_kinds
from agent.hosts.local import LocalTransport
from agent.hosts.shell import ShellHost
from agent.problems import InvalidFile
from agent.schema import HostConfig
from agent.service import make_context, serve
from agent.templates import agent_template
from agent.valuetypes import NAME

from shares import TRAIN, drop, info, make_project


@dataclass(frozen=True, kw_only=True)
class EchoConfig(HostConfig):
    """A made-up kind: the local machine, with one key of its own."""

    greeting: str = setting(NAME, "hello", "A word the host says.", example="hi", required=True)


def open_echo(config: EchoConfig, env: HostEnv) -> Host:
    return ShellHost(config, LocalTransport(), share_id=env.share_id)


def no_shouting(config: EchoConfig) -> list[tuple[str, str]]:
    return (
        [("greeting", "found capitals, expected a quiet word")] if config.greeting.isupper() else []
    )


ECHO = HostKind(
    "echo", "an echo host", "this machine, politely", EchoConfig, open_echo, no_shouting
)
KINDS = {**builtin_kinds(), "echo": ECHO}


def _config(tmp_path: Path, host: str) -> Path:
    (tmp_path / "share").mkdir(exist_ok=True)
    path = tmp_path / "droprun.toml"
    path.write_text(
        f'share = "{tmp_path / "share"}"\nstate_dir = "{tmp_path / "state"}"\nsettle = 0.1\n'
        f'log_every = 0.2\n[defaults]\nhost = "e"\n[hosts.e]\n{host}'
    )
    return path


def test_a_new_kind_is_validated_from_its_own_fields(tmp_path: Path) -> None:
    config = load_agent_config(
        _config(tmp_path, f'kind = "echo"\ngreeting = "hi"\nremote_root = "{tmp_path}/r"\n'), KINDS
    )
    host = config.hosts["e"]
    assert isinstance(host, EchoConfig) and host.greeting == "hi" and host.slots == 1
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(_config(tmp_path, 'kind = "echo"\n'), KINDS)
    assert [p.message for p in bad.value.problems] == ["missing: an echo host needs greeting"]
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(_config(tmp_path, 'kind = "echo"\ngreeting = "HI"\n'), KINDS)
    assert [p.message for p in bad.value.problems] == ["found capitals, expected a quiet word"]
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(_config(tmp_path, 'greeting = "hi"\n'), KINDS)
    assert [p.message for p in bad.value.problems] == [
        'missing: a host with greeting needs kind = "echo"'
    ]
    with pytest.raises(InvalidFile) as bad:
        load_agent_config(_config(tmp_path, 'kind = "echo"\ngreeting = "hi"\n'))  # not known
    assert 'expected one of "local", "slurm", "ssh"' in bad.value.problems[0].message


def test_the_template_shows_the_new_kind(tmp_path: Path) -> None:
    text = agent_template(tmp_path, KINDS)
    assert '# kind = "echo"' in text and '# greeting = "hi"' in text


def test_a_run_goes_to_a_host_of_the_new_kind(tmp_path: Path) -> None:
    path = _config(tmp_path, f'kind = "echo"\ngreeting = "hi"\nremote_root = "{tmp_path}/r"\n')
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, "")
    config = load_agent_config(path, KINDS)
    serve(make_context(config, logging.getLogger("droprun.test.kinds"), KINDS), once=True)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert result.host == "e"
