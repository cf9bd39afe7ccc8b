"""Templates for droprun init: valid as written, every schema key documented."""

from __future__ import annotations

import re
from pathlib import Path

import tomlkit

from agent.agentfile import load_agent_config, validate_paths
from agent.schema import AGENT_FIELDS, HOST_FIELDS, REQUEST_ONLY_FIELDS, RUN_FIELDS
from agent.settings import parse_request, read_project_layer
from agent.templates import agent_template, project_template, request_template


def keys_shown(text: str) -> set[str]:
    return set(re.findall(r"^(?:# )?([a-z_]+) = ", text, flags=re.MULTILINE))


def test_agent_template_is_valid_and_documents_every_key(tmp_path):
    share = tmp_path / "my share"
    share.mkdir()
    text = agent_template(share)
    path = tmp_path / "droprun.toml"
    path.write_text(text)
    config = load_agent_config(path)
    assert config.share == share
    assert set(config.hosts) == {"local"}
    assert config.defaults == {}
    assert validate_paths([path], None) == []
    names = {f.name for f in AGENT_FIELDS + RUN_FIELDS + HOST_FIELDS}
    assert names <= keys_shown(text)
    assert "# [hosts.gpu1]" in text


def test_the_ssh_host_example_is_valid_when_uncommented(tmp_path):
    text = agent_template(tmp_path)
    head, example = text.split("# [hosts.gpu1]\n")
    example = example.split("\n#\n# A ")[0]  # up to the next kind's example
    uncommented = [line[2:] for line in example.splitlines() if re.match(r"# [a-z_]+ = ", line)]
    path = tmp_path / "droprun.toml"
    path.write_text(head + "[hosts.gpu1]\n" + "\n".join(uncommented) + "\n")
    host = load_agent_config(path).hosts["gpu1"]
    assert host.kind == "ssh"
    assert host.address == "192.168.1.50"
    assert host.wake_mac == "aa:bb:cc:dd:ee:ff"
    assert host.shutdown_after == 1800


def test_project_template_sets_nothing_and_documents_every_run_setting(tmp_path):
    text = project_template()
    path = tmp_path / "project.toml"
    path.write_text(text)
    assert read_project_layer(path, {"local"}) == {}
    assert keys_shown(text) == {f.name for f in RUN_FIELDS} | {"urls"}  # [notify] urls
    assert tomlkit.parse(text).unwrap() == {}


def test_request_template_is_an_empty_request_documenting_every_key():
    text = request_template()
    assert parse_request(text.encode(), "run.request", {"local"}) == {}
    assert keys_shown(text) == {f.name for f in RUN_FIELDS + REQUEST_ONLY_FIELDS}


def test_every_commented_value_in_the_templates_is_valid(tmp_path):
    lines = [
        line[2:] for line in request_template().splitlines() if re.match(r"# [a-z_]+ = ", line)
    ]
    layer = parse_request("\n".join(lines).encode(), "run.request", {"local"})
    assert set(layer) == {f.name for f in RUN_FIELDS + REQUEST_ONLY_FIELDS}


def test_template_lines_fit_an_editor():
    for text in (
        agent_template(Path("/srv/share")),
        project_template(),
        request_template(),
    ):
        assert max(len(line) for line in text.splitlines()) <= 100
