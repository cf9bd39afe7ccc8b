"""``bin.tar.gz``: the code exactly as uploaded, with rsync's ``--exclude`` semantics.

The file selection must equal what rsync uploads, so the patterns follow rsync's rules:
a trailing ``/`` matches directories only; a leading ``/`` anchors the pattern to the
transfer root; a pattern with another ``/`` (or a ``**``) is matched against the end of
the path at a component boundary; any other pattern matches the name at any depth.
``*`` and ``?`` stop at ``/``, ``**`` does not, ``[...]`` is a class, ``dir/***``
matches ``dir`` and everything in it. An excluded directory is not entered.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from agent.fsutil import atomic_file

EntryKind = Literal["f", "l", "d"]


@dataclass(frozen=True)
class ArchiveInfo:
    """What went into ``bin.tar.gz``: regular files + links, their bytes, the tree hash."""

    files: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ExcludeRule:
    """One compiled ``--exclude`` pattern."""

    regex: re.Pattern[str]
    dir_only: bool
    whole_path: bool  # False: matched against the last path component only
    slashed: bool  # True: matched against "/" + path


@dataclass(frozen=True)
class Entry:
    """One selected path below the transfer root (``/``-separated, no leading ``./``)."""

    path: str
    kind: EntryKind


def _class_to_regex(pattern: str, start: int) -> tuple[str, int]:
    """Translate the ``[...]`` starting at ``start``; return (regex, index after it)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    i += negate
    items = []
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            return ("[^" if negate else "[") + "".join(items) + "]", i + 1
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            items.append(re.escape(pattern[i]))
        else:
            items.append("-" if ch == "-" else re.escape(ch))
        first = False
        i += 1
    return re.escape("["), start + 1  # no closing bracket: a literal "["


def wildmatch_regex(pattern: str) -> str:
    """Return a regex (without anchors) for rsync wildcard ``pattern``."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            j = i
            while j < len(pattern) and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i >= 2 else "[^/]*")
            i = j
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            part, i = _class_to_regex(pattern, i)
            out.append(part)
        elif ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def compile_excludes(patterns: Sequence[str]) -> list[ExcludeRule]:
    """Return the rules for rsync ``--exclude`` ``patterns`` (pure)."""
    rules = []
    for raw in patterns:
        variants = [raw]
        if raw.endswith("/***"):
            variants = [raw[:-4], raw[:-4] + "/**"]
        for pattern in variants:
            dir_only = pattern.endswith("/") and len(pattern) > 1
            pattern = pattern.rstrip("/") if dir_only else pattern
            anchored = pattern.startswith("/")
            pattern = pattern.lstrip("/") if anchored else pattern
            whole = anchored or "/" in pattern or "**" in pattern
            body = wildmatch_regex(pattern)
            # rsync matches a leading "**" against "/" + path, so "**/x" matches a top-level x
            slashed = whole and not anchored and pattern.startswith("**")
            if whole and not anchored and not slashed:
                body = f"(?:.*/)?{body}"
            rules.append(ExcludeRule(re.compile(body, re.DOTALL), dir_only, whole, slashed))
    return rules


def is_excluded(path: str, is_dir: bool, rules: Sequence[ExcludeRule]) -> bool:
    """Return True if relative ``path`` (``a/b``) is excluded by ``rules`` (pure)."""
    name = path.rsplit("/", 1)[-1]
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        text = ("/" + path if rule.slashed else path) if rule.whole_path else name
        if rule.regex.fullmatch(text):
            return True
    return False


def select_entries(root: Path, exclude: Sequence[str]) -> list[Entry]:
    """Return the sorted entries below ``root`` that rsync would send with ``exclude``.

    Symlinks are entries of their own (never followed); sockets, fifos and devices are
    left out. Raises OSError if the tree cannot be read.
    """
    rules = compile_excludes(exclude)
    found: list[Entry] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for item in entries:
            rel = prefix + item.name
            if item.is_symlink():
                kind: EntryKind = "l"
            elif item.is_dir(follow_symlinks=False):
                kind = "d"
            elif item.is_file(follow_symlinks=False):
                kind = "f"
            else:
                continue
            if is_excluded(rel, kind == "d", rules):
                continue
            found.append(Entry(rel, kind))
            if kind == "d":
                walk(Path(item.path), rel + "/")

    walk(root, "")
    return sorted(found, key=lambda e: e.path)


class _HashingReader:
    """A read-only file wrapper that feeds everything read into a hash."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        return data


def _add_entries(
    tar: tarfile.TarFile, root: Path, entries: Sequence[Entry]
) -> Iterator[tuple[Entry, int, str, int]]:
    """Add ``entries`` to ``tar``; yield (entry, mode, content digest or target, size)."""
    for entry in entries:
        full = root / entry.path
        if entry.kind == "f":
            with open(full, "rb") as fh:
                info = tar.gettarinfo(arcname=entry.path, fileobj=fh)
                reader = _HashingReader(fh)
                tar.addfile(info, fileobj=reader)  # type: ignore[arg-type]
            yield entry, stat.S_IMODE(info.mode), reader.digest.hexdigest(), info.size
        else:
            info = tar.gettarinfo(str(full), arcname=entry.path)
            tar.addfile(info)
            detail = info.linkname if entry.kind == "l" else ""
            yield entry, stat.S_IMODE(info.mode) if entry.kind == "d" else 0, detail, 0


def tree_signature(bin_dir: Path, exclude: Sequence[str]) -> str:
    """Return a cheap fingerprint (paths, kinds, sizes, mtimes) of what would be archived.

    Equal fingerprints taken before an upload and after the archive mean the archive holds
    the code exactly as uploaded. Raises OSError.
    """
    digest = hashlib.sha256()
    for entry in select_entries(bin_dir, exclude):
        try:
            st = (bin_dir / entry.path).lstat()
        except FileNotFoundError:
            digest.update(f"{entry.path}\0gone\n".encode())
            continue
        digest.update(f"{entry.path}\0{entry.kind}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def make_archive(bin_dir: Path, exclude: Sequence[str], dest: Path) -> ArchiveInfo:
    """Write ``bin_dir`` minus ``exclude`` to the file ``dest`` (``bin.tar.gz``) atomically.

    Entries are sorted and symlinks stored as links. The hash covers, in path order, each
    entry's path, type, mode and content (or link target), so the same tree always gives
    the same hash whatever the timestamps. Returns an ArchiveInfo; raises OSError.
    """
    entries = select_entries(bin_dir, exclude)
    tree_hash = hashlib.sha256()
    files = size = 0
    with (
        atomic_file(dest) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry, mode, detail, nbytes in _add_entries(tar, bin_dir, entries):
            tree_hash.update(f"{entry.kind}\0{entry.path}\0{mode:o}\0{detail}\n".encode())
            if entry.kind != "d":
                files += 1
                size += nbytes
    return ArchiveInfo(files=files, bytes=size, sha256=tree_hash.hexdigest())
