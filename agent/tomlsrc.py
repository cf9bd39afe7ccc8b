"""TOML source text: parse it, and find the line of every key for messages.

A valid file is parsed with tomllib (several times faster, and a command that reads only
valid files never imports tomlkit); a broken one is parsed again with tomlkit, whose
errors say where and what.

tomlkit gives no positions for keys, and stops at the first duplicate key with an imprecise
line, so a small scanner here maps each key path to the line that defines it and lists
duplicate definitions.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.problems import Problem

KeyPath = tuple[str, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Characters that change the scanner's state inside a value.
_VALUE_SPECIAL = re.compile(r"[\"'\[\]{}#\n]")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = MappingProxyType(
    {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}
)
# No droprun key is nested deeper than 3 (defaults.env.NAME). Refusing deeper keys before
# tomlkit sees them keeps hostile input cheap: tomlkit spends seconds on 64 KiB of deep tables.
MAX_KEY_PARTS = 10
# tomllib takes values nested deeper than tomlkit's limit (100); no droprun file nests
# more than 4, so deeper data is left to tomlkit, which refuses it as it always did.
TOMLLIB_MAX_NESTING = 20
_TOMLKIT_WHERE = re.compile(r"\s+at line \d+ col \d+$")
# Byte order marks of encodings that are not UTF-8 (UTF-32 first: it starts like UTF-16).
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def describe(value: object) -> str:
    """Return how a TOML value is shown after "found" in a message: ``"x" (a string)``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number with a fraction)"
    if isinstance(value, str):
        import tomlkit  # messages only: see the module's docstring

        shown = value if len(value) <= 40 else value[:40] + "..."
        return tomlkit.string(shown).as_string() + " (a string)"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    kind = type(value).__name__.replace("datetime", "date-time")
    return f"{value} (a {kind})"


def key_name(path: Iterable[str]) -> str:
    """Return a key path as written in TOML: ``hosts.gpu1.port``, ``env."MY VAR"``."""
    import tomlkit  # messages only: see the module's docstring

    return ".".join(
        part if _BARE_KEY.fullmatch(part) else tomlkit.string(part).as_string() for part in path
    )


@dataclass(frozen=True)
class Duplicate:
    """A key defined a second time: its path, the line of the repeat and of the first."""

    path: KeyPath
    line: int
    first_line: int


@dataclass(frozen=True)
class KeyLines:
    """Where each key path of a TOML text is defined, and which ones are defined twice."""

    lines: Mapping[KeyPath, int] = field(default_factory=dict)
    duplicates: tuple[Duplicate, ...] = ()
    too_deep: int | None = None  # first line with a key of more than MAX_KEY_PARTS parts

    def line_of(self, path: Sequence[str]) -> int | None:
        """Return the line of ``path``, else of its nearest enclosing key, else None."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class _Scanner:
    """Walks TOML text once, recording the line of every key; tolerant of broken input."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.first: dict[KeyPath, int] = {}
        self.explicit: dict[KeyPath, int] = {}
        self.duplicates: list[Duplicate] = []
        self.array_counts: dict[KeyPath, int] = {}
        self.too_deep: int | None = None

    def _advance(self, count: int = 1) -> None:
        end = min(self.pos + count, len(self.text))
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def _skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self._advance((len(self.text) if end < 0 else end + 1) - self.pos)

    def _read_string(self) -> str | None:
        """Read a quoted string at pos (any of the four TOML kinds); None if unterminated."""
        text, start = self.text, self.pos
        quote = text[start]
        triple = text.startswith(quote * 3, start)
        delim = quote * 3 if triple else quote
        i = start + len(delim)
        while i < len(text):
            char = text[i]
            if char == "\\" and quote == '"':
                i += 2
                continue
            if char == "\n" and not triple:
                return None
            if text.startswith(delim, i):
                end = i + len(delim)
                if triple:  # up to two quotes may sit right before the closing delimiter
                    while end < len(text) and text[end] == quote and end - i < 5:
                        end += 1
                body = text[start + len(delim) : end - len(delim)]
                self._advance(end - start)
                return _unescape(body) if quote == '"' else body
            i += 1
        return None

    def _read_key(self) -> list[str] | None:
        """Read a dotted key at pos; None if there is none."""
        parts: list[str] = []
        while True:
            self._skip_blanks()
            if self.pos >= len(self.text):
                return None
            if self.text[self.pos] in "\"'":
                part = self._read_string()
                if part is None:
                    return None
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if match is None:
                    return None
                part = match.group()
                self.pos = match.end()
            parts.append(part)
            if len(parts) > MAX_KEY_PARTS:
                self.too_deep = self.too_deep or self.line
                return None
            self._skip_blanks()
            if not self.text.startswith(".", self.pos):
                return parts
            self.pos += 1

    def _skip_value(self) -> None:
        """Skip a value up to the end of its (last) line: strings, arrays, inline tables."""
        depth = 0
        while True:
            match = _VALUE_SPECIAL.search(self.text, self.pos)
            if match is None:
                self._advance(len(self.text) - self.pos)
                return
            self._advance(match.start() - self.pos)
            char = match.group()
            if char in "\"'":
                if self._read_string() is None:
                    return
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self._advance((len(self.text) if end < 0 else end) - self.pos)
            elif char == "\n" and depth == 0:
                return
            else:
                depth += 1 if char in "[{" else -1 if char in "]}" else 0
                depth = max(depth, 0)
                self._advance()

    def _define(self, path: KeyPath, line: int, *, header: bool) -> None:
        if len(path) > MAX_KEY_PARTS:
            self.too_deep = self.too_deep or line
            return
        for i in range(1, len(path)):
            self.first.setdefault(path[:i], line)
        clash = self.explicit.get(path)
        if clash is None and not header:
            clash = self.first.get(path)
        if clash is not None:
            self.duplicates.append(Duplicate(path, line, clash))
            return
        self.explicit[path] = line
        self.first.setdefault(path, line)

    def scan(self) -> KeyLines:
        table: KeyPath = ()
        text = self.text
        while True:
            while self.pos < len(text) and text[self.pos] in " \t\r\n":
                self._advance()
            if self.pos >= len(text):
                break
            line = self.line
            if text[self.pos] == "#":
                self._skip_line()
            elif text[self.pos] == "[":
                table = self._header(line) or table
                self._skip_line()
            else:
                key = self._read_key()
                self._skip_blanks()
                if key is None or not text.startswith("=", self.pos):
                    self._skip_line()
                    continue
                self._advance()
                self._define(table + tuple(key), line, header=False)
                self._skip_value()
        first = MappingProxyType(dict(self.first))
        return KeyLines(first, tuple(self.duplicates), self.too_deep)

    def _header(self, line: int) -> KeyPath | None:
        """Read a ``[table]`` or ``[[array]]`` header; return the path its keys go under."""
        is_array = self.text.startswith("[[", self.pos)
        self._advance(2 if is_array else 1)
        key = self._read_key()
        if key is None:
            return None
        path = tuple(key)
        if not is_array:
            self._define(path, line, header=True)
            return path
        index = self.array_counts.get(path, 0)
        self.array_counts[path] = index + 1
        for i in range(1, len(path) + 1):
            self.first.setdefault(path[:i], line)
        return (*path, f"[{index}]")


def _unescape(body: str) -> str:
    """Decode the escapes of a TOML basic string (only as far as keys need)."""

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "uU" and len(code) > 1:
            return chr(int(code[1:], 16)) if int(code[1:], 16) < 0x110000 else ""
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPE.sub(replace, body)


def scan_keys(text: str) -> KeyLines:
    """Return the line of every key path in ``text`` and its duplicate definitions.

    Handles ``[table]``, ``[a.b]``, ``[[array]]``, dotted and quoted keys, and skips
    multi-line strings and arrays. Never raises: on broken input it records what it could.
    """
    return _Scanner(text).scan()


@dataclass(frozen=True)
class Parsed:
    """A parsed TOML file: plain data (None if it could not be parsed), key lines, problems."""

    data: dict[str, Any] | None
    lines: KeyLines
    problems: tuple[Problem, ...] = ()


def _plain_parse_message(message: str) -> str:
    """Return tomlkit's parse error message in plainer words for the common cases."""
    if "use \\u000d instead" in message:
        return (
            "a carriage return without a line feed (old Mac line endings): "
            "save the file with Unix (LF) or Windows (CRLF) line endings"
        )
    if "use \\u000a instead" in message:
        return "a string is not closed: its closing quote is missing on this line"
    if message == "Unexpected character: '\\n'":
        return "unexpected end of the line (is a value missing?)"
    if message[:2].istitle():
        return message[0].lower() + message[1:]
    return message or "cannot be parsed"


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """Return True if arrays and tables in ``data`` are nested more than ``limit`` deep."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack += [(item, depth + 1) for item in value.values()]
        elif isinstance(value, list):
            stack += [(item, depth + 1) for item in value]
    return False


def parse_text(text: str, filename: str) -> Parsed:
    """Parse TOML ``text`` into plain Python data and the lines of its keys.

    Broken TOML gives one problem at the parser's line; duplicate keys give one problem
    per repeat, at its line. Never raises for bad input.
    """
    text = text.removeprefix("\ufeff")
    lines = scan_keys(text)
    if lines.too_deep is not None:
        message = f"keys are nested more than {MAX_KEY_PARTS} levels deep"
        return Parsed(None, lines, (Problem(filename, lines.too_deep, None, message),))
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        data = None  # not valid: parsed again below, for tomlkit's message and line
    if data is not None and not _nested_deeper_than(data, TOMLLIB_MAX_NESTING):
        return Parsed(data, lines)
    import tomlkit
    from tomlkit.exceptions import ParseError, TOMLKitError

    try:
        data = tomlkit.parse(text).unwrap()
    except RecursionError:
        problem = Problem(filename, None, None, "not valid TOML: values are nested too deeply")
        return Parsed(None, lines, (problem,))
    except TOMLKitError as exc:
        message = _TOMLKIT_WHERE.sub("", str(exc))
        if "already exists" in message and lines.duplicates:
            problems = tuple(
                Problem(
                    filename,
                    dup.line,
                    key_name(p for p in dup.path if not p.startswith("[")),
                    f"set a second time (first set on line {dup.first_line})",
                )
                for dup in lines.duplicates
            )
            return Parsed(None, lines, problems)
        line = exc.line if isinstance(exc, ParseError) else None
        column = f" (column {exc.col + 1})" if isinstance(exc, ParseError) else ""
        message = _plain_parse_message(message)
        problem = Problem(filename, line, None, f"not valid TOML: {message}{column}")
        return Parsed(None, lines, (problem,))
    return Parsed(data, lines)


def parse_bytes(data: bytes, filename: str) -> Parsed:
    """Decode ``data`` as UTF-8 (a leading BOM is allowed) and parse it like parse_text.

    UTF-16/32 text (Windows Notepad's "Unicode") and binary data get a message that says
    so, instead of a puzzling complaint about one byte.
    """
    for bom, encoding in _OTHER_BOMS:
        if data.startswith(bom):
            message = f"the file is {encoding} text; save it as UTF-8"
            return Parsed(None, KeyLines(), (Problem(filename, 1, None, message),))
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        message = (
            "not text: the file contains NUL bytes (binary data, or UTF-16 text); "
            "save it as UTF-8 text"
        )
        return Parsed(None, KeyLines(), (Problem(filename, line, None, message),))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = (
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded; "
            "save the file as UTF-8"
        )
        return Parsed(None, KeyLines(), (Problem(filename, line, None, message),))
    return parse_text(text, filename)
