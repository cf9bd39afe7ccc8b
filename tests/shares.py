"""Builders for test shares: an agent config, projects with scripts, and one-shot agent runs."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from agent import runinfo
from agent.settings import load_agent_config


def write_config(root: Path, *, slots: int = 1, extra: str = "", host_extra: str = "") -> Path:
    """Write a droprun.toml for a share at ``root/share`` with a local host under ``root``."""
    (root / "share").mkdir(parents=True, exist_ok=True)
    path = root / "droprun.toml"
    path.write_text(
        f'share = "{root / "share"}"\n'
        f'state_dir = "{root / "state"}"\n'
        "settle = 0.1\nlog_every = 0.2\nkill_grace = 2\n"
        f"{extra}\n"
        "[hosts.local]\n"
        'kind = "local"\n'
        f"slots = {slots}\n"
        f'remote_root = "{root / "server"}"\n'
        f"{host_extra}\n"
    )
    return path


def make_project(
    share: Path, name: str, files: dict[str, str], project_toml: str | None = None
) -> Path:
    """Make ``share/name/bin`` with ``files`` (``*.sh`` made executable); return the project."""
    project = share / name
    for rel, text in files.items():
        path = project / "bin" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.endswith(".sh"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (project / "bin").mkdir(parents=True, exist_ok=True)
    if project_toml is not None:
        (project / "project.toml").write_text(project_toml)
    return project


def drop(project: Path, text: str, name: str = "run.request") -> Path:
    """Drop a request the way a client does: write a temp file, then rename it into place."""
    tmp = project / f".{name}.part"
    tmp.write_text(text)
    os.replace(tmp, project / name)
    return project / name


def run_once(config_path: Path) -> None:
    """Run ``droprun agent --once`` in this process."""
    from agent.service import make_context, serve

    config = load_agent_config(config_path)
    serve(make_context(config, logging.getLogger("droprun.test")), once=True)


def info(project: Path, run: int = 0) -> runinfo.RunInfo:
    """Return the run.info of ``project``'s run ``run``."""
    return runinfo.load(project / "results" / f"run_{run}" / "run.info")


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def write_ssh_config(
    root: Path,
    server: Any,
    *,
    name: str = "gpu",
    slots: int = 1,
    extra: str = "",
    host_extra: str = "",
    port: int | None = None,
    known_hosts: Path | None = None,
    defaults: str = "",
) -> Path:
    """Write a droprun.toml whose requests go by default to ssh host ``name`` on ``server``.

    ``server`` is a ``testbed.SshServer``; ``port`` and ``known_hosts`` replace its own
    (for a server that starts later, or a wrong key); ``defaults`` adds lines to
    ``[defaults]``. The local host stays as well.
    """
    path = write_config(root, extra=extra)
    with path.open("a") as out:
        out.write(
            f'\n[defaults]\nhost = "{name}"\n{defaults}\n'
            f"[hosts.{name}]\n"
            'kind = "ssh"\n'
            f'address = "{server.address}"\n'
            f"port = {port or server.port}\n"
            f'user = "{server.user}"\n'
            f'key = "{server.key}"\n'
            f'known_hosts = "{known_hosts or server.known_hosts}"\n'
            f'remote_root = "{server.remote_root}"\n'
            f"slots = {slots}\n"
            f"{host_extra}\n"
        )
    return path
