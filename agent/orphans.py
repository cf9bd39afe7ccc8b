"""``droprun status --orphans HOST``: run dirs on a host that no active run on the share owns.

They are what an agent killed mid-run, a deleted ``results/`` folder or a restored share
leaves behind, and the ``run_N.orphan-*`` dirs that a new run moved out of its way.
droprun never removes them by itself: a person decides, with the command printed here.
"""

from __future__ import annotations

import shlex

from agent import layout, runinfo, share
from agent.hosts.base import Orphan
from agent.hosts.kinds import HostEnv, open_host
from agent.hosts.kinds.ssh import SshConfig
from agent.problems import UserError
from agent.schema import AgentConfig


def claimed_run_ids(config: AgentConfig) -> set[str]:
    """Return the ids of the runs on the share that still own a dir on a host (not ended)."""
    claimed = set()
    for run_dir in layout.iter_run_dirs(config.share):
        try:
            info = runinfo.load(run_dir / "run.info", summary=True)
        except runinfo.RunInfoError:
            continue
        if info.run_id and not info.terminal:
            claimed.add(info.run_id)
    return claimed


def find_orphans(config: AgentConfig, host_name: str) -> list[Orphan]:
    """Return the run dirs on ``host_name`` that no active run on the share claims.

    Raises UserError for an unknown host, HostError if the host cannot be asked.
    """
    if host_name not in config.hosts:
        known = ", ".join(sorted(config.hosts))
        raise UserError(f"no host {host_name!r} in {config.path} (hosts: {known})")
    env = HostEnv(config.state_dir, share.share_id(config.share))
    host = open_host(config.hosts[host_name], env)
    try:
        found = host.orphans()
    finally:
        host.close()
    claimed = claimed_run_ids(config)
    return [o for o in found if o.run_id is None or o.run_id not in claimed]


def orphan_rows(orphans: list[Orphan], now: float) -> list[list[str]]:
    """Return one table row per orphan: path, age, size, whether a process runs in it (pure)."""
    rows = []
    for o in orphans:
        age = "-" if o.start_epoch is None else _age(now - o.start_epoch)
        size = f"{o.kbytes / 1024:.1f} MiB"
        rows.append([o.path, age, size, "yes" if o.alive else "no"])
    return rows


def removal_hint(config: AgentConfig, host_name: str, orphans: list[Orphan]) -> str:
    """Return the command a person can run to remove the orphans that run nothing (pure)."""
    idle = [o.path for o in orphans if not o.alive]
    if not idle:
        return ""
    words = ["rm", "-rf", "--", *idle]
    hc = config.hosts[host_name]
    if not isinstance(hc, SshConfig):
        return shlex.join(words)
    return shlex.join(["ssh", "-p", str(hc.port), f"{hc.user}@{hc.address}", shlex.join(words)])


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds // 3600 % 24}h"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
