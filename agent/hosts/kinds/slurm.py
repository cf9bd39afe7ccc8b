"""Kind ``slurm``: a cluster whose login node is reached like an ssh host; runs go to its
scheduler with ``sbatch`` and are watched with one ``squeue`` per poll for all of them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from agent.fields import setting
from agent.hosts.base import Host
from agent.hosts.kinds import HostEnv, HostKind
from agent.hosts.kinds.ssh import SshConfig
from agent.tomlsrc import describe
from agent.valuetypes import INTEGER, MAX_ITEMS, STRINGS, WORD, Context, ValueType, between

# "--name" or "--name=value", the value without blanks, quotes or shell characters.
_OPTION_RE = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:/@%+=\[\]-]*)?")
# Options droprun sets itself: the run's own settings or keys say them, or the run needs them.
_OWN_OPTIONS = {
    "job-name": "droprun names the job droprun-<project>-run_N",
    "output": "the log goes into the run dir",
    "error": "the log goes into the run dir",
    "open-mode": "the log goes into the run dir",
    "chdir": "the job runs in the run dir",
    "comment": "droprun marks its jobs with the run id",
    "parsable": "droprun reads sbatch's answer",
    "wrap": "droprun writes the batch script",
    "array": "one run is one job",
    "requeue": "a run never starts twice",
    "no-requeue": "droprun sets it",
    "time": "use the run setting timeout",
    "signal": "use the run setting signal_before_timeout",
    "gres": "use the run setting gpus",
    "gpus": "use the run setting gpus",
    "cpus-per-task": "use the run setting cpus",
    "mem": "use the run setting mem",
    "partition": "use the host key partition",
    "account": "use the host key account",
}


def _options(value: object, context: Context) -> tuple[str, ...]:
    """sbatch options: each ``--name`` or ``--name=value``, none that droprun sets itself."""
    options: tuple[str, ...] = STRINGS.convert(value, context)
    for number, option in enumerate(options, start=1):
        if not _OPTION_RE.fullmatch(option):
            raise ValueError(
                f"item {number}: found {describe(option)}, expected one option like "
                '"--qos=normal": starting with "--", without blanks, line breaks, quotes '
                "or shell characters"
            )
        name = option[2:].partition("=")[0]
        if name in _OWN_OPTIONS:
            raise ValueError(f'item {number}: "--{name}" is droprun\'s: {_OWN_OPTIONS[name]}')
    return options


SBATCH_OPTIONS = ValueType("array of sbatch options", _options)


@dataclass(frozen=True, kw_only=True)
class SlurmConfig(SshConfig):
    """A ``[hosts.NAME]`` table of kind slurm: the login node (as for ssh) and the queue."""

    assigns_gpus: ClassVar[bool] = True

    partition: str | None = setting(
        WORD, None, "Partition the jobs go to (unset: the cluster's default).", example="gpu"
    )
    account: str | None = setting(
        WORD, None, "Account the jobs are charged to (unset: the user's default).", example="lab"
    )
    max_jobs: int = setting(
        INTEGER,
        4,
        "How many runs may be in the cluster's hands at once, pending or running.",
        check=between(1, MAX_ITEMS, "a number of jobs"),
    )
    sbatch_options: tuple[str, ...] = setting(
        SBATCH_OPTIONS,
        [],
        'More sbatch options, each like "--qos=normal" (no blanks or shell characters).',
        example=["--qos=normal"],
    )


def slurm_rules(config: SlurmConfig) -> list[tuple[str, str]]:
    """Return the keys of every host that a cluster's login node cannot use."""
    found = []
    if config.slots != 1:
        found.append(("slots", "a slurm host has max_jobs instead: runs in flight at once"))
    if config.gpus:
        message = 'the cluster gives runs their GPUs: leave gpus out (runs ask with "gpus = N")'
        found.append(("gpus", message))
    for key in ("wake_mac", "shutdown_after"):
        if getattr(config, key) is not None:
            found.append((key, "droprun does not power a cluster's login node on or off"))
    return found


def open_slurm(config: SlurmConfig, env: HostEnv) -> Host:
    """Return a SlurmHost over ssh to the login node; nothing connects until needed."""
    from agent.hosts.slurm import SlurmHost
    from agent.hosts.ssh import SshTransport

    transport = SshTransport(config, env.state_dir)
    return SlurmHost(
        config,
        transport,
        share_id=env.share_id,
        local_rsync=env.local_rsync,
        poll_every=env.poll_every,
    )


KIND = HostKind(
    name="slurm",
    a_host="a slurm host",
    doc="a cluster: its login node over ssh, runs through sbatch",
    config=SlurmConfig,
    open=open_slurm,
    rules=slurm_rules,
    example="cluster",
)
