"""The cascade of run settings, and loading the agent's droprun.toml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomlkit

from agent.agentfile import load_agent_config
from agent.problems import InvalidFile
from agent.schema import HostConfig, RunSettings
from agent.settings import (
    Effective,
    merge,
    parse_request,
    read_project_layer,
    settings_from_table,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_each_layer_overrides_the_one_below_and_sources_say_which():
    agent = {"timeout": 3600, "backup_every": 60, "host": "gpu1", "args": ("a",)}
    project = {"timeout": 7200, "env": {"A": "1"}, "exclude": ("data/",), "client": "acme"}
    request = {"timeout": 60, "args": ("b", "c"), "name": "try", "notes": "n"}
    effective = merge(agent, project, request)
    s = effective.settings
    assert (s.timeout, s.backup_every, s.host, s.args) == (60, 60, "gpu1", ("b", "c"))
    assert dict(s.env) == {"A": "1"}
    assert s.exclude == ("data/",)
    assert s.run_script == "run.sh"
    assert s.client == "acme"
    assert (effective.name, effective.notes) == ("try", "n")
    assert dict(effective.sources) == {
        "host": "agent",
        "run_script": "built-in",
        "args": "request",
        "timeout": "request",
        "backup_every": "agent",
        "output_dir": "built-in",
        "conda_env": "built-in",
        "setup": "built-in",
        "env": "project",
        "exclude": "project",
        "live_files": "built-in",
        "code_from": "built-in",
        "resume_from": "built-in",
        "client": "project",
        "gpus": "built-in",
        "cpus": "built-in",
        "mem": "built-in",
        "signal_before_timeout": "built-in",
    }


def test_tables_and_arrays_are_replaced_whole_not_merged():
    effective = merge({"env": {"A": "1"}}, {}, {"env": {"B": "2"}})
    assert dict(effective.settings.env) == {"B": "2"}


def test_empty_layers_give_the_built_in_settings():
    effective = merge({}, {}, {})
    assert effective.settings == RunSettings()
    assert set(effective.sources.values()) == {"built-in"}
    assert effective.name is None


def test_merged_settings_are_frozen():
    effective = merge({}, {}, {"env": {"A": "1"}})
    with pytest.raises(TypeError):
        effective.settings.env["B"] = "2"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        effective.settings.timeout = 5  # type: ignore[misc]


def test_to_table_is_toml_and_round_trips():
    request = parse_request(
        b'timeout = 5400\nargs = ["x"]\nenv = { A = "1" }\nconda_env = "t"\n', "r", None
    )
    effective = merge({}, {}, request)
    table = effective.to_table()
    assert table["timeout"] == "1h30m"
    assert table["backup_every"] == "10m"
    assert table["args"] == ["x"]
    assert table["env"] == {"A": "1"}
    assert table["sources"]["timeout"] == "request"
    text = tomlkit.dumps({"effective": table})
    back = tomlkit.parse(text).unwrap()["effective"]
    assert settings_from_table(back) == effective.settings


def test_to_table_leaves_out_an_unset_conda_env():
    assert "conda_env" not in merge({}, {}, {}).to_table()


def test_settings_from_table_refuses_a_broken_table():
    with pytest.raises(InvalidFile, match=r"effective\.timeout"):
        settings_from_table({"timeout": "soon"})


def test_project_layer(tmp_path):
    assert read_project_layer(tmp_path / "project.toml", {"local"}) == {}
    path = write(tmp_path / "project.toml", 'timeout = "2h"\nsetup = ["source a.sh"]\n')
    assert read_project_layer(path, {"local"}) == {"timeout": 7200, "setup": ("source a.sh",)}
    write(path, 'host = "gpu1"\nname = "x"\n')
    with pytest.raises(InvalidFile) as info:
        read_project_layer(path, {"local"})
    assert [(p.line, p.key) for p in info.value.problems] == [(1, "host"), (2, "name")]


def test_agent_config_resolves_paths_and_adds_the_local_host(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "etc" / "share").mkdir(parents=True)
    path = write(
        tmp_path / "etc" / "droprun.toml",
        'share = "share"\nstate_dir = "~/state"\nsettle = 0.5\nrescan = "2m"\nwatch = "poll"\n'
        '[defaults]\nhost = "gpu1"\ntimeout = "12h"\n'
        '[hosts.gpu1]\nkind = "ssh"\naddress = "10.0.0.2"\nuser = "train"\nkey = "keys/id"\n'
        'known_hosts = "~/.ssh/known_hosts"\ngpus = [0, "1"]\nslots = 2\n'
        'wake_mac = "AA-BB-CC-DD-EE-FF"\nshutdown_after = "30m"\n',
    )
    config = load_agent_config(path)
    assert config.path == path
    assert config.share == tmp_path / "etc" / "share"
    assert config.state_dir == tmp_path / "home" / "state"
    assert (config.settle, config.rescan, config.watch) == (0.5, 120.0, "poll")
    assert (config.log_every, config.kill_grace) == (2.0, 10.0)
    assert dict(config.defaults) == {"host": "gpu1", "timeout": 43200}
    assert set(config.hosts) == {"gpu1", "local"}
    assert config.hosts["local"] == HostConfig(name="local", kind="local")
    gpu1 = config.hosts["gpu1"]
    assert gpu1.key == tmp_path / "etc" / "keys" / "id"
    assert gpu1.known_hosts == tmp_path / "home" / ".ssh" / "known_hosts"
    assert gpu1.gpus == ("0", "1")
    assert gpu1.wake_mac == "aa:bb:cc:dd:ee:ff"
    assert (gpu1.shutdown_after, gpu1.wake_timeout, gpu1.port) == (1800, 300, 22)


def test_the_config_may_redefine_the_local_host(tmp_path):
    path = write(
        tmp_path / "droprun.toml",
        f'share = "{tmp_path}"\n[hosts.local]\nslots = 3\nremote_root = "/srv/runs"\n',
    )
    local = load_agent_config(path).hosts["local"]
    assert (local.kind, local.slots, local.remote_root) == ("local", 3, "/srv/runs")


def test_agent_config_reports_every_problem(tmp_path):
    path = write(
        tmp_path / "droprun.toml",
        'settle = "x"\ntimeout = "1h"\n[defaults]\nhost = "gpu2"\n'
        '[hosts.gpu1]\nkind = "ssh"\nport = 0\n',
    )
    with pytest.raises(InvalidFile) as info:
        load_agent_config(path)
    found = [(p.line, p.key) for p in info.value.problems]
    assert found == [
        (None, "share"),
        (1, "settle"),
        (2, "timeout"),
        (4, "defaults.host"),
        (5, "hosts.gpu1.address"),
        (5, "hosts.gpu1.user"),
        (7, "hosts.gpu1.port"),
    ]
    assert all(p.file == str(path) for p in info.value.problems)


def test_an_unreadable_agent_config_is_an_invalid_file(tmp_path):
    with pytest.raises(InvalidFile, match="cannot read"):
        load_agent_config(tmp_path / "nope.toml")


def test_effective_is_built_from_validated_layers(tmp_path):
    (tmp_path / "share").mkdir()
    config = load_agent_config(
        write(tmp_path / "droprun.toml", 'share = "share"\n[defaults]\nbackup_every = "5m"\n')
    )
    project = read_project_layer(write(tmp_path / "project.toml", "timeout = 600\n"), config.hosts)
    request = parse_request(b'args = ["1"]\n', "run.request", config.hosts)
    effective = merge(config.defaults, project, request)
    assert isinstance(effective, Effective)
    assert (effective.settings.backup_every, effective.settings.timeout) == (300, 600)
    assert effective.sources["backup_every"] == "agent"
    assert effective.sources["timeout"] == "project"
    assert effective.sources["args"] == "request"
