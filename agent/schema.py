"""The one schema of droprun's settings: every key with its type, default, doc line, example, check.

Each key is written once, as a field of the dataclass that holds it when loaded
(:class:`RunSettings`, :class:`AgentConfig`, :class:`HostConfig` and each host kind's own
config, see :mod:`agent.hosts.kinds`). Validation (:mod:`agent.settings`), ``droprun
validate``, the commented templates of ``droprun init`` (:mod:`agent.templates`) and the
defaults of the loaded values are all read from there: adding a setting is one field.

Limits against hostile input (anyone who can write to the share can drop a request):

- a request file is at most 64 KiB (``agent.settings.MAX_REQUEST_BYTES``);
- an array (``args``, ``setup``, ``exclude``, ``gpus``) has at most ``MAX_ITEMS`` items and
  ``env`` at most ``MAX_ITEMS`` variables;
- a string is at most ``MAX_STRING`` characters (``notes``: ``MAX_NOTES``, ``name``:
  ``MAX_NAME``, names of hosts, conda environments and variables: ``MAX_NAME``);
- a duration is at most ``MAX_DURATION`` seconds (a year);
- every value is a scalar, an array of scalars or a table of strings: anything nested
  deeper is a type error; keys nested more than 10 levels (``agent.tomlsrc.MAX_KEY_PARTS``)
  are refused before tomlkit parses the file, and tomlkit refuses values nested over 100;
- at most 100 problems are reported per file (``agent.settings.MAX_PROBLEMS``), then a count.

The limits and the kinds of values are in :mod:`agent.valuetypes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agent.fields import Field, Table, schema_fields, setting
from agent.sweep import SWEEP
from agent.urltypes import EVENTS, NOTIFY_EVENTS, NOTIFY_URLS, WEB_URLS
from agent.valuetypes import (
    ADDRESS,
    AMOUNT,
    COMMAND,
    CONDA_ENV,
    CURRENCY,
    DURATION,
    ENV,
    GPU_IDS,
    HOST_ALIAS,
    INTEGER,
    LOCAL_PATH,
    MAC,
    MAX_ITEMS,
    MEMORY,
    NAME,
    OUTPUT_DIR,
    RELATIVE_PATH,
    REMOTE_PATH,
    RUN_REF,
    SECONDS,
    SHELL_LINES,
    SSH_FILE,
    STRINGS,
    TEXT,
    ValueType,
    between,
    choice,
    existing_dir,
)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The merged, typed run settings of one run. Durations are in seconds."""

    host: str = setting(
        HOST_ALIAS,
        "local",
        'Where to run: a host or host group of the agent\'s config; "local" is the NAS itself.',
        example="gpu1",
    )
    run_script: str = setting(RELATIVE_PATH, "run.sh", "The script to run, relative to bin/.")
    args: tuple[str, ...] = setting(
        STRINGS,
        [],
        "Arguments for the script, each a separate word (never through a shell).",
        example=["--epochs", "10"],
    )
    timeout: int = setting(
        DURATION, "24h", 'Wall-clock limit of the training: "90m", "12h", "1d2h", or seconds.'
    )
    backup_every: int = setting(
        DURATION, "10m", "How often output_dir is mirrored back to the share while the run goes on."
    )
    output_dir: str = setting(
        OUTPUT_DIR, "output", "Where the script writes its results, relative to its run folder."
    )
    conda_env: str | None = setting(
        CONDA_ENV,
        None,
        "Conda environment to activate before the script (unset: none).",
        example="torch",
    )
    setup: tuple[str, ...] = setting(
        SHELL_LINES,
        [],
        "Shell lines run on the server before the script.",
        example=["source ~/activate_env.sh 2.4"],
    )
    env: Mapping[str, str] = setting(
        ENV, {}, "Environment variables for the script.", example={"CUDA_LAUNCH_BLOCKING": "1"}
    )
    exclude: tuple[str, ...] = setting(
        STRINGS,
        [".git/", "__pycache__/", "*.pyc"],
        "rsync-style patterns left out of the upload and the archive.",
    )
    live_files: tuple[str, ...] = setting(
        STRINGS,
        ["*.csv", "*.jsonl", "*.log", "*.txt", "events.out.tfevents.*"],
        "Files in output_dir shown on the share as they grow, every backup_every (shell "
        "patterns of the name, or of the path in output_dir if they have a /); other files "
        "appear once complete.",
    )
    code_from: str | None = setting(
        RUN_REF,
        None,
        "Run that run's archived code (its bin.tar.gz) instead of today's bin/ (unset: bin/).",
        example="run_3",
    )
    resume_from: str | None = setting(
        RUN_REF,
        None,
        "Start with that run's mirrored output already in output_dir (unset: empty).",
        example="run_3",
    )
    client: str | None = setting(
        NAME,
        None,
        "Billing label: who the run is for (droprun report groups by it).",
        example="acme",
    )
    gpus: int | None = setting(
        INTEGER,
        None,
        "How many of the host's GPUs the run needs; it waits until they are free "
        "(unset: one slot's share of the host's gpus).",
        example=2,
        check=between(0, MAX_ITEMS, "a number of GPUs"),
    )
    cpus: int | None = setting(
        INTEGER,
        None,
        "CPU cores the run needs (Slurm hosts ask for them; others ignore it).",
        example=8,
        check=between(1, 100000, "a number of CPU cores"),
    )
    mem: str | None = setting(
        MEMORY,
        None,
        "Memory the run needs (Slurm hosts ask for it; others ignore it).",
        example="32G",
    )
    signal_before_timeout: int | None = setting(
        DURATION,
        None,
        "SIGUSR1 to the script this long before its timeout, to save a checkpoint.",
        example="2m",
        check=between(1, 65535, "a number of seconds"),
    )


RUN_FIELDS: tuple[Field, ...] = schema_fields(RunSettings)

REQUEST_ONLY_FIELDS: tuple[Field, ...] = (
    Field("name", NAME, None, "A short label for this run.", example="baseline"),
    Field("notes", TEXT, None, "Free text kept with the run.", example="lr 3e-4, batch 64"),
    Field(
        "sweep",
        SWEEP,
        None,
        "One run per combination of these values, each passed as --key value and as "
        'DROPRUN_PARAM_KEY; mode = "zip" pairs them instead (at most 256 runs).',
        example={"lr": [0.1, 0.01], "batch": [64, 128]},
    ),
)


@dataclass(frozen=True, kw_only=True)
class HostConfig:
    """One ``[hosts.NAME]`` table, validated: the keys every kind of host has. A kind with
    keys of its own (ssh: address, user...) extends it (:mod:`agent.hosts.kinds`)."""

    # Not a key: the host's own scheduler gives each run its GPUs (a cluster), so the agent
    # neither counts nor names them and passes ``gpus`` on.
    assigns_gpus: ClassVar[bool] = False

    name: str
    kind: str = setting(
        NAME, "local", 'How to reach the host: "local" is this machine; other kinds are below.'
    )
    slots: int = setting(
        INTEGER,
        1,
        "How many runs may go on this host at the same time.",
        check=between(1, MAX_ITEMS, "a number of slots"),
    )
    gpus: tuple[str, ...] = setting(
        GPU_IDS,
        [],
        "GPU ids of this host; each run gets its share of them as CUDA_VISIBLE_DEVICES.",
        example=["0", "1"],
    )
    remote_root: str = setting(
        REMOTE_PATH, "~/droprun", "Folder on the server that holds each project's cache and runs."
    )
    conda_sh: str | None = setting(
        REMOTE_PATH,
        None,
        "conda.sh sourced on the server before conda_env is activated.",
        example="~/miniconda3/etc/profile.d/conda.sh",
    )
    wake_mac: str | None = setting(
        MAC,
        None,
        "Wake-on-LAN: the server's MAC address (unset: no waking).",
        example="aa:bb:cc:dd:ee:ff",
    )
    wake_broadcast: str = setting(ADDRESS, "255.255.255.255", "Where the Wake-on-LAN packet goes.")
    wake_port: int = setting(
        INTEGER,
        9,
        "UDP port of the Wake-on-LAN packet.",
        check=between(1, 65535, "a port number"),
    )
    wake_timeout: int = setting(DURATION, "5m", "How long to wait for a woken server to answer.")
    shutdown_after: int | None = setting(
        DURATION,
        None,
        "Power the server off when it has been idle this long (unset: never).",
        example="30m",
    )
    shutdown_command: str = setting(
        COMMAND, "sudo -n /sbin/shutdown -P now", "How the server is powered off."
    )
    cancel_shutdown_command: str = setting(
        COMMAND,
        "sudo -n /sbin/shutdown -c",
        "How a pending power-off is cancelled when new work arrives.",
    )
    rate_per_gpu_hour: float | None = setting(
        AMOUNT,
        None,
        "Price of one GPU-hour on this host, for droprun report (unset: no amount).",
        example=1.2,
    )
    currency: str | None = setting(CURRENCY, None, "Currency of rate_per_gpu_hour.", example="EUR")


HOST_FIELDS: tuple[Field, ...] = schema_fields(HostConfig)


@dataclass(frozen=True, kw_only=True)
class NotifyConfig:
    """The agent's ``[notify]`` table, validated. ``stalled_after`` is in seconds."""

    urls: tuple[str, ...] = setting(
        NOTIFY_URLS,
        [],
        "Where notices go: Apprise URLs (mailto://, ntfys://, slack://, msteams://, "
        "discord://, tgram://, json://...).",
        example=["ntfys://ntfy.sh/my-droprun-topic"],
    )
    on: tuple[str, ...] = setting(
        EVENTS,
        list(NOTIFY_EVENTS),
        "What sends a notice: a run ending in one of these states, or stalled.",
    )
    stalled_after: int = setting(
        DURATION,
        "30m",
        "A running run whose log has not grown for this long is stalled (one notice).",
    )


NOTIFY_FIELDS: tuple[Field, ...] = schema_fields(NotifyConfig)


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The whole ``droprun.toml``, validated. ``defaults`` is a validated settings layer."""

    path: Path
    hosts: Mapping[str, HostConfig]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    share: Path = setting(
        LOCAL_PATH,
        None,
        "The share: each folder in it that has a bin/ folder is a project.",
        example="/volume1/training",
        check=existing_dir,
        required=True,
    )
    state_dir: Path = setting(
        SSH_FILE,  # ssh's control sockets live below it
        "~/.local/state/droprun",
        "Where the agent keeps its own state.",
    )
    settle: float = setting(
        SECONDS, 1, "A request is read once it has not changed for this many seconds."
    )
    rescan: float = setting(
        SECONDS, 30, "How often the whole share is looked at, in case a change was not noticed."
    )
    watch: str = setting(
        ValueType("string", choice("inotify", "poll")),
        "inotify",
        'How new files are noticed: "inotify", or "poll" where inotify misses changes.',
    )
    log_every: float = setting(
        SECONDS, 2, "How often the log of a running training is copied to the share (seconds)."
    )
    kill_grace: float = setting(
        SECONDS, 10, "On cancel or timeout: seconds between the polite stop and the forced one."
    )

    @property
    def targets(self) -> frozenset[str]:
        """Return what a run's ``host`` may name: a host or a group of hosts."""
        return frozenset(self.hosts) | frozenset(self.groups)


AGENT_FIELDS: tuple[Field, ...] = schema_fields(AgentConfig)

# A project.toml's [notify]: more URLs for its runs, of web services only.
PROJECT_NOTIFY_FIELDS: tuple[Field, ...] = (
    Field(
        "urls",
        WEB_URLS,
        [],
        "More notice URLs for this project's runs (web services only: ntfys://, slack://, "
        "msteams://, discord://, tgram://, jsons://...).",
        example=["ntfys://ntfy.sh/my-project-topic"],
    ),
)

AGENT_TABLES: tuple[Table, ...] = (
    Table(
        "defaults",
        "Run settings for every project (project.toml and requests override).",
        RUN_FIELDS,
    ),
    Table(
        "hosts",
        "Servers that runs can go to, one [hosts.NAME] table each.",
        HOST_FIELDS,
        named=True,
    ),
    Table("notify", "Notices when runs end or stall, sent with Apprise.", NOTIFY_FIELDS),
)
