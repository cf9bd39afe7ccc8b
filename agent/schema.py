"""The one schema of droprun's settings: every key with its type, default, doc line, example, check.

Validation (:mod:`agent.settings`), ``droprun validate`` and the commented templates that
``droprun init`` writes (:mod:`agent.templates`) are all driven from the tables here.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    USER,
    Context,
    ValueType,
    between,
    choice,
    existing_dir,
)


@dataclass(frozen=True)
class Field:
    """One key of one table. ``default`` and ``example`` are TOML values (None: unset)."""

    name: str
    type: ValueType
    default: Any
    doc: str
    example: Any = None
    check: Callable[[Any, Context], None] | None = None
    required: bool = False

    def convert(self, value: object, context: Context) -> Any:
        """Return ``value`` typed and checked; raises ValueError (or BadEntries)."""
        converted = self.type.convert(value, context)
        if self.check is not None:
            self.check(converted, context)
        return converted


@dataclass(frozen=True)
class Table:
    """A table of the agent file: ``[name]``, or ``[name.ANY]`` for each entry if ``named``."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    named: bool = False


RUN_FIELDS: tuple[Field, ...] = (
    Field(
        "host",
        HOST_ALIAS,
        "local",
        'Where to run: a host of the agent\'s [hosts]; "local" is the NAS itself.',
        example="gpu1",
    ),
    Field(
        "run_script",
        RELATIVE_PATH,
        "run.sh",
        "The script to run, relative to bin/.",
    ),
    Field(
        "args",
        STRINGS,
        [],
        "Arguments for the script, each a separate word (never through a shell).",
        example=["--epochs", "10"],
    ),
    Field(
        "timeout",
        DURATION,
        "24h",
        'Wall-clock limit of the training: "90m", "12h", "1d2h", or seconds.',
    ),
    Field(
        "backup_every",
        DURATION,
        "10m",
        "How often output_dir is mirrored back to the share while the run goes on.",
    ),
    Field(
        "output_dir",
        OUTPUT_DIR,
        "output",
        "Where the script writes its results, relative to its run folder.",
    ),
    Field(
        "conda_env",
        CONDA_ENV,
        None,
        "Conda environment to activate before the script (unset: none).",
        example="torch",
    ),
    Field(
        "setup",
        SHELL_LINES,
        [],
        "Shell lines run on the server before the script.",
        example=["source ~/activate_env.sh 2.4"],
    ),
    Field(
        "env",
        ENV,
        {},
        "Environment variables for the script.",
        example={"CUDA_LAUNCH_BLOCKING": "1"},
    ),
    Field(
        "exclude",
        STRINGS,
        [".git/", "__pycache__/", "*.pyc"],
        "rsync-style patterns left out of the upload and the archive.",
    ),
    Field(
        "code_from",
        RUN_REF,
        None,
        "Run that run's archived code (its bin.tar.gz) instead of today's bin/ (unset: bin/).",
        example="run_3",
    ),
    Field(
        "resume_from",
        RUN_REF,
        None,
        "Start with that run's mirrored output already in output_dir (unset: empty).",
        example="run_3",
    ),
    Field(
        "client",
        NAME,
        None,
        "Billing label: who the run is for (droprun report groups by it).",
        example="acme",
    ),
)

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

AGENT_FIELDS: tuple[Field, ...] = (
    Field(
        "share",
        LOCAL_PATH,
        None,
        "The share: each folder in it that has a bin/ folder is a project.",
        example="/volume1/training",
        check=existing_dir,
        required=True,
    ),
    Field(
        "state_dir",
        SSH_FILE,  # ssh's control sockets live below it
        "~/.local/state/droprun",
        "Where the agent keeps its own state.",
    ),
    Field("settle", SECONDS, 1, "A request is read once it has not changed for this many seconds."),
    Field(
        "rescan",
        SECONDS,
        30,
        "How often the whole share is looked at, in case a change was not noticed.",
    ),
    Field(
        "watch",
        ValueType("string", choice("inotify", "poll")),
        "inotify",
        'How new files are noticed: "inotify", or "poll" where inotify misses changes.',
    ),
    Field(
        "log_every",
        SECONDS,
        2,
        "How often the log of a running training is copied to the share (seconds).",
    ),
    Field(
        "kill_grace",
        SECONDS,
        10,
        "On cancel or timeout: seconds between the polite stop and the forced one.",
    ),
)

HOST_FIELDS: tuple[Field, ...] = (
    Field(
        "kind",
        ValueType("string", choice("local", "ssh")),
        "local",
        'How to reach the host: "ssh", or "local" for this machine.',
        example="ssh",
    ),
    Field(
        "address",
        ADDRESS,
        None,
        "Host name or IP address of the server (ssh).",
        example="192.168.1.50",
    ),
    Field("port", INTEGER, 22, "ssh port.", check=between(1, 65535, "a port number")),
    Field("user", USER, None, "Login name on the server (ssh).", example="train"),
    Field(
        "key",
        SSH_FILE,
        None,
        "Private key file for ssh (unset: ssh's default).",
        example="~/.ssh/id_ed25519",
    ),
    Field(
        "known_hosts",
        SSH_FILE,
        None,
        "known_hosts file with the server's key (unset: ssh's default).",
        example="~/.ssh/known_hosts",
    ),
    Field(
        "slots",
        INTEGER,
        1,
        "How many runs may go on this host at the same time.",
        check=between(1, MAX_ITEMS, "a number of slots"),
    ),
    Field(
        "gpus",
        GPU_IDS,
        [],
        "GPU ids: run slot i gets CUDA_VISIBLE_DEVICES=gpus[i].",
        example=["0", "1"],
    ),
    Field(
        "remote_root",
        REMOTE_PATH,
        "~/droprun",
        "Folder on the server that holds each project's cache and runs.",
    ),
    Field(
        "conda_sh",
        REMOTE_PATH,
        None,
        "conda.sh sourced on the server before conda_env is activated.",
        example="~/miniconda3/etc/profile.d/conda.sh",
    ),
    Field(
        "wake_mac",
        MAC,
        None,
        "Wake-on-LAN: the server's MAC address (unset: no waking).",
        example="aa:bb:cc:dd:ee:ff",
    ),
    Field("wake_broadcast", ADDRESS, "255.255.255.255", "Where the Wake-on-LAN packet goes."),
    Field(
        "wake_port",
        INTEGER,
        9,
        "UDP port of the Wake-on-LAN packet.",
        check=between(1, 65535, "a port number"),
    ),
    Field("wake_timeout", DURATION, "5m", "How long to wait for a woken server to answer."),
    Field(
        "shutdown_after",
        DURATION,
        None,
        "Power the server off when it has been idle this long (unset: never).",
        example="30m",
    ),
    Field(
        "shutdown_command",
        COMMAND,
        "sudo -n /sbin/shutdown -P now",
        "How the server is powered off.",
    ),
    Field(
        "cancel_shutdown_command",
        COMMAND,
        "sudo -n /sbin/shutdown -c",
        "How a pending power-off is cancelled when new work arrives.",
    ),
    Field(
        "rate_per_gpu_hour",
        AMOUNT,
        None,
        "Price of one GPU-hour on this host, for droprun report (unset: no amount).",
        example=1.2,
    ),
    Field("currency", CURRENCY, None, "Currency of rate_per_gpu_hour.", example="EUR"),
)

NOTIFY_FIELDS: tuple[Field, ...] = (
    Field(
        "urls",
        NOTIFY_URLS,
        [],
        "Where notices go: Apprise URLs (mailto://, ntfys://, slack://, msteams://, "
        "discord://, tgram://, json://...).",
        example=["ntfys://ntfy.sh/my-droprun-topic"],
    ),
    Field(
        "on",
        EVENTS,
        list(NOTIFY_EVENTS),
        "What sends a notice: a run ending in one of these states, or stalled.",
    ),
    Field(
        "stalled_after",
        DURATION,
        "30m",
        "A running run whose log has not grown for this long is stalled (one notice).",
    ),
)

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
