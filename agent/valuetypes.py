"""Kinds of values in settings files: each turns a TOML value into a typed one, or says
what it found and what it expected. The limits against hostile input live here; the keys
that use these kinds are in :mod:`agent.schema`."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.durations import format_duration, parse_duration
from agent.tomlsrc import describe

MAX_ITEMS = 1000
MAX_STRING = 4096
MAX_NOTES = 16384
MAX_NAME = 200
MAX_DURATION = 366 * 86400

# Not starting with "-", so that conda cannot read the name as an option.
CONDA_ENV_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")
# ssh words: never starting with "-", so that they cannot be read as an option. An
# address is an IP address (parsed by ipaddress) or a host name matching this.
_HOST_NAME_ADDRESS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RUN_REF_RE = re.compile(r"run_(0|[1-9][0-9]{0,8})")


@dataclass(frozen=True)
class Context:
    """What a check needs beyond the value: defined host names (None: skip that check) and
    the folder that relative local paths resolve against (None: the current folder)."""

    host_names: Collection[str] | None = None
    base_dir: Path | None = None


class BadEntries(ValueError):
    """Several entries of a table value are wrong; ``entries`` holds (entry name, message)."""

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        self.entries = tuple(entries)
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.entries))


@dataclass(frozen=True)
class ValueType:
    """A kind of value: ``name`` is shown in templates; ``convert`` turns the TOML value into
    the typed value or raises ValueError saying what was found and what was expected."""

    name: str
    convert: Callable[[object, Context], Any]


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """Return ``' (did you mean "x"?)'`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _fail(value: object, expected: str) -> ValueError:
    return ValueError(f"found {describe(value)}, expected {expected}")


def _plain_string(value: object, expected: str, limit: int) -> str:
    """Return ``value`` if it is a string without NUL of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise _fail(value, expected)
    if "\0" in value:
        raise _fail(value, f"{expected} without NUL characters")
    if len(value) > limit:
        raise ValueError(f"found a string of {len(value)} characters, expected at most {limit}")
    return value


def _string(
    limit: int, *, empty_ok: bool = True, one_line: bool = False
) -> Callable[[object, Context], str]:
    def convert(value: object, _context: Context) -> str:
        text = _plain_string(value, "a string", limit)
        if not empty_ok and not text.strip():
            raise _fail(value, "a string that is not empty")
        if one_line and not text.isprintable():
            raise _fail(value, "a string on one line, without control characters")
        return text

    return convert


def _pattern(regex: re.Pattern[str], expected: str) -> Callable[[object, Context], str]:
    def convert(value: object, _context: Context) -> str:
        text = _plain_string(value, expected, MAX_NAME)
        if not regex.fullmatch(text):
            raise _fail(value, expected)
        return text

    return convert


def _relative_path(value: object, _context: Context) -> str:
    expected = 'a relative path like "run.sh" or "sub/dir"'
    text = _plain_string(value, expected, MAX_STRING)
    parts = text.replace("\\", "/").split("/")
    if not text.strip():
        raise _fail(value, f"{expected}, not empty")
    if not text.isprintable():
        raise _fail(value, f"{expected}, without line breaks or control characters")
    if text.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", text):
        raise _fail(value, f"{expected}, not an absolute path")
    if ".." in parts:
        raise _fail(value, f'{expected} without ".." in it')
    return text


def _output_dir(value: object, context: Context) -> str:
    """A relative path that names a folder inside the run folder, not droprun's own."""
    text = _relative_path(value, context)
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    expected = 'a folder inside the run folder like "output" or "out/ckpt"'
    if not parts:
        raise _fail(value, f"{expected}, not the run folder itself")
    if parts[0] == ".droprun":
        raise _fail(value, f"{expected}, not droprun's own .droprun folder")
    return text


def _shell_lines(value: object, context: Context) -> tuple[str, ...]:
    """An array of strings, each one shell line (the launcher runs them line by line)."""
    lines = _strings(value, context)
    for number, line in enumerate(lines, start=1):
        if "\n" in line or "\r" in line:
            raise ValueError(
                f"item {number}: found {describe(line)}, expected one shell line without "
                "line breaks (put each line in its own item)"
            )
    return lines


def _local_path(value: object, context: Context) -> Path:
    text = _plain_string(value, "a path", MAX_STRING)
    if not text.strip():
        raise _fail(value, "a path, not empty")
    path = Path(text).expanduser()
    if not path.is_absolute() and context.base_dir is not None:
        path = context.base_dir / path
    return path


def _ssh_file(value: object, context: Context) -> Path:
    """A local path that goes into an ssh option: no quotes, backslashes or control characters
    (ssh_config parses quotes and backslashes in option values)."""
    path = _local_path(value, context)
    if any(c in str(path) for c in "\"'\\") or not str(path).isprintable():
        raise _fail(
            value, "a path without quotes, backslashes or control characters (for ssh options)"
        )
    return path


def _remote_path(value: object, _context: Context) -> str:
    expected = 'an absolute path on the server, or one in the home folder like "~/droprun"'
    text = _plain_string(value, expected, MAX_STRING)
    if not text.strip():
        raise _fail(value, f"{expected}, not empty")
    if not text.isprintable():
        raise _fail(value, f"{expected}, without line breaks or control characters")
    if not (text.startswith("/") or under_home(text) is not None):
        raise _fail(value, expected)
    return text


def _address(value: object, _context: Context) -> str:
    expected = "a host name or IP address"
    text = _plain_string(value, expected, MAX_NAME)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return text
    if not _HOST_NAME_ADDRESS_RE.fullmatch(text):
        hint = " (the port goes in port)" if re.fullmatch(r"[^:]+:\d+", text) else ""
        raise _fail(value, f"{expected}{hint}")
    return text


def _strings(value: object, _context: Context) -> tuple[str, ...]:
    expected = "an array of strings"
    if not isinstance(value, list):
        raise _fail(value, expected)
    if len(value) > MAX_ITEMS:
        raise ValueError(f"found an array of {len(value)} items, expected at most {MAX_ITEMS}")
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            raise ValueError(f"found {describe(item)} as item {number}, expected {expected}")
        try:
            _plain_string(item, "a string", MAX_STRING)
        except ValueError as exc:
            raise ValueError(f"item {number}: {exc}") from None
    return tuple(value)


def _gpu_ids(value: object, context: Context) -> tuple[str, ...]:
    if isinstance(value, list):
        value = [
            str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v
            for v in value
        ]
    try:
        return _strings(value, context)
    except ValueError as exc:
        raise ValueError(f"{exc}; GPU ids are strings or whole numbers like 0") from None


def _env(value: object, _context: Context) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise _fail(value, 'a table of strings like { CUDA_LAUNCH_BLOCKING = "1" }')
    if len(value) > MAX_ITEMS:
        raise ValueError(f"found {len(value)} variables, expected at most {MAX_ITEMS}")
    bad: list[tuple[str, str]] = []
    for name, item in value.items():
        if not ENV_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
            bad.append(
                (
                    name,
                    "not a valid variable name: expected letters, digits and _, "
                    "not starting with a digit",
                )
            )
            continue
        try:
            _plain_string(item, "a string", MAX_STRING)
        except ValueError as exc:
            bad.append((name, str(exc)))
    if bad:
        raise BadEntries(bad)
    return MappingProxyType(dict(value))


def _duration(value: object, _context: Context) -> int:
    seconds = parse_duration(value)
    if seconds > MAX_DURATION:
        raise _fail(value, f"a duration of at most {format_duration(MAX_DURATION)}")
    return seconds


def _seconds(value: object, context: Context) -> float:
    if isinstance(value, float) and not isinstance(value, bool):
        if not 0 < value <= MAX_DURATION:  # also refuses nan
            raise _fail(value, f"a number of seconds above 0 and at most {MAX_DURATION}")
        return value
    try:
        return float(_duration(value, context))
    except ValueError as exc:
        raise ValueError(f"{exc} (fractions like 0.5 are fine)") from None


def _integer(value: object, _context: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(value, "a whole number")
    return value


def _amount(value: object, _context: Context) -> float:
    """A non-negative finite number (a price): whole or with a fraction."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(value, "a number like 1.5")
    if not 0 <= value < 1e12:  # also refuses nan and inf
        raise _fail(value, "a number from 0 to below 1e12")
    return value


def parse_mac(text: str) -> bytes:
    """Return the 6 bytes of a MAC address written ``aa:bb:cc:dd:ee:ff``, ``aa-bb-...`` or
    ``aabbccddeeff``. Raises ValueError for anything else."""
    if not _MAC_RE.fullmatch(text.strip()):
        raise ValueError(f"not a MAC address: {text!r} (expected like aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(text.strip().replace(":", "").replace("-", ""))


def under_home(path: str) -> str | None:
    """Return the part of ``path`` after ``~`` if it is ``~`` or starts with ``~/`` (``""``
    or ``"/..."``), else None: the one rule for paths in the home folder of a host's user."""
    return path[1:] if path == "~" or path.startswith("~/") else None


def _mac(value: object, _context: Context) -> str:
    text = _plain_string(value, 'a MAC address like "aa:bb:cc:dd:ee:ff"', MAX_NAME)
    try:
        return ":".join(f"{byte:02x}" for byte in parse_mac(text))
    except ValueError:
        raise _fail(value, 'a MAC address like "aa:bb:cc:dd:ee:ff"') from None


def choice(*options: str) -> Callable[[object, Context], str]:
    expected = "one of " + ", ".join(f'"{o}"' for o in options)

    def convert(value: object, _context: Context) -> str:
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            raise ValueError(f"found {describe(value)}, expected {expected}{hint}")
        return value

    return convert


def _host_alias(value: object, context: Context) -> str:
    text = _plain_string(value, "the name of a host", MAX_NAME)
    names = context.host_names
    if names is not None and text not in names:
        known = ", ".join(f'"{n}"' for n in sorted(names))
        raise ValueError(
            f"found {describe(value)}, expected one of the agent's hosts: {known}"
            f"{did_you_mean(text, names)}"
        )
    return text


def existing_dir(value: Path, _context: Context) -> None:
    if not value.is_dir():
        raise ValueError(f'found "{value}", expected an existing folder')


def between(low: int, high: int, what: str) -> Callable[[Any, Context], None]:
    def check(value: int, _context: Context) -> None:
        if not low <= value <= high:
            raise ValueError(f"found {value}, expected {what} from {low} to {high}")

    return check


NAME = ValueType("string", _string(MAX_NAME, one_line=True))
TEXT = ValueType("string", _string(MAX_NOTES))
COMMAND = ValueType("string (a shell line on the server)", _string(MAX_STRING, empty_ok=False))
RELATIVE_PATH = ValueType("relative path", _relative_path)
LOCAL_PATH = ValueType("path", _local_path)
SSH_FILE = ValueType("path", _ssh_file)
OUTPUT_DIR = ValueType("relative path", _output_dir)
SHELL_LINES = ValueType("array of shell lines", _shell_lines)
REMOTE_PATH = ValueType("path on the server", _remote_path)
STRINGS = ValueType("array of strings", _strings)
GPU_IDS = ValueType("array of GPU ids", _gpu_ids)
ENV = ValueType("table of strings", _env)
DURATION = ValueType('duration ("90m", "12h", "1d2h" or seconds)', _duration)
SECONDS = ValueType("seconds (a number, or a duration)", _seconds)
INTEGER = ValueType("whole number", _integer)
MAC = ValueType("MAC address", _mac)
AMOUNT = ValueType("number", _amount)
CURRENCY = ValueType(
    "currency code", _pattern(re.compile(r"[A-Za-z]{1,8}"), 'a currency code like "EUR"')
)
HOST_ALIAS = ValueType("host name", _host_alias)
CONDA_ENV = ValueType(
    "conda environment name",
    _pattern(CONDA_ENV_RE, "a conda environment name (letters, digits, _ . -)"),
)
ADDRESS = ValueType("host name or IP address", _address)
RUN_REF = ValueType(
    'run of this project ("run_3")',
    _pattern(
        RUN_REF_RE, 'a run of this project like "run_3" (another project\'s runs cannot be named)'
    ),
)
WORD = ValueType(
    "word",
    _pattern(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,-]*"),
        "a plain word (letters, digits, _ . , -), not starting with -",
    ),
)
MEMORY = ValueType(
    "memory size",
    _pattern(
        re.compile(r"[1-9][0-9]{0,9}[KMGT]?"),
        'a memory size like "32G" (a whole number, then K, M, G or T; megabytes without)',
    ),
)
USER = ValueType("user name", _pattern(_USER_RE, "a user name (letters, digits, _ . -)"))
