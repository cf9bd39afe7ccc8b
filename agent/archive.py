"""``bin.tar.gz``: the code exactly as uploaded, with rsync's ``--exclude`` semantics.

The file selection must equal what rsync uploads, so the patterns follow rsync's rules:
a trailing ``/`` matches directories only; a leading ``/`` anchors the pattern to the
transfer root; a pattern with another ``/`` (or a ``**``) is matched against the end of
the path at a component boundary; any other pattern matches the name at any depth.
``*`` and ``?`` stop at ``/``, ``**`` does not, ``[...]`` is a class, ``dir/***``
matches ``dir`` and everything in it. An excluded directory is not entered.

Anyone on the share may change ``bin/`` while it is read, so the tree is walked with
directory fds and ``O_NOFOLLOW`` at every step: a file or folder swapped for a link after
it was selected is never followed (that would copy a file from outside the share into
``bin.tar.gz``, which lies on the share), and a FIFO swapped in never blocks. An entry that
changed type or vanished between selection and reading is left out of the archive and
listed in ``ArchiveInfo.skipped``; the archive and its hash hold exactly what was read.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import gzip
import hashlib
import os
import pwd
import re
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.fsutil import atomic_file, open_dir

EntryKind = Literal["f", "l", "d"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
# What a path that changed under us gives: gone, now a link, or a folder on the way that
# is now a link or a file.
_RACED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EINVAL})


@dataclass(frozen=True)
class ArchiveInfo:
    """What went into ``bin.tar.gz``: regular files + links, their bytes, the tree hash.

    ``skipped``: selected paths left out because they vanished or changed type before they
    were read. ``changed``: files stored, but whose size or time changed while being read
    (one that shrank is padded with zero bytes to the size it had when opened).
    """

    files: int
    bytes: int
    sha256: str
    skipped: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


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
    items: list[str] = []
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


def _open_root(root: Path) -> int:
    """Return a directory fd of ``root``; raises OSError (also if ``root`` is a link)."""
    return os.open(root, _DIR_FLAGS)


def _select(root_fd: int, rules: Sequence[ExcludeRule]) -> list[Entry]:
    """Return the sorted entries below the directory ``root_fd`` (see select_entries)."""
    found: list[Entry] = []

    def walk(dir_fd: int, prefix: str) -> None:
        with os.scandir(dir_fd) as it:
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
                try:
                    sub = os.open(item.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno not in _RACED:
                        raise
                    continue  # swapped or gone since scandir: its own entry is checked later
                try:
                    walk(sub, rel + "/")
                finally:
                    os.close(sub)

    walk(root_fd, "")
    return sorted(found, key=lambda e: e.path)


def select_entries(root: Path, exclude: Sequence[str]) -> list[Entry]:
    """Return the sorted entries below ``root`` that rsync would send with ``exclude``.

    Symlinks are entries of their own (never followed); sockets, fifos and devices are
    left out. Raises OSError if the tree cannot be read.
    """
    root_fd = _open_root(root)
    try:
        return _select(root_fd, compile_excludes(exclude))
    finally:
        os.close(root_fd)


class _SizedReader:
    """Reads exactly ``size`` bytes of the open file ``fd`` for tarfile, hashing them.

    A file that shrank since its size was taken is padded with zero bytes (the tar header
    already holds the size); ``short`` then says so.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size
        self.short = False
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = b""
        while len(data) < want:
            chunk = os.read(self._fd, want - len(data))
            if not chunk:
                self.short = True
                data += bytes(want - len(data))
                break
            data += chunk
        self._left -= want
        self.digest.update(data)
        return data


def _tarinfo(arcname: str, st: os.stat_result, linkname: str = "") -> tarfile.TarInfo:
    """Return the tar header of ``st`` (as ``TarFile.gettarinfo`` makes it)."""
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, linkname
    else:
        info.type, info.size = tarfile.REGTYPE, st.st_size
    # An id without a name here keeps only its number in the header.
    with contextlib.suppress(KeyError):
        info.uname = pwd.getpwuid(st.st_uid).pw_name
    with contextlib.suppress(KeyError):
        info.gname = grp.getgrgid(st.st_gid).gr_name
    return info


def _kind(mode: int) -> EntryKind | None:
    """Return the entry kind of an ``st_mode``, None for fifos, sockets and devices."""
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISDIR(mode):
        return "d"
    return "f" if stat.S_ISREG(mode) else None


@dataclass(frozen=True)
class _Added:
    """One entry as stored: mode, content digest (or link target), size, changed on read."""

    mode: int
    detail: str
    size: int
    changed: bool = False


def _add_file(tar: tarfile.TarFile, parent: int, name: str, arcname: str) -> _Added | None:
    """Store the regular file ``name`` of folder ``parent``; None if it is not one now."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=parent)  # a link: ELOOP; a FIFO: no blocking
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        info = _tarinfo(arcname, before)
        reader = _SizedReader(fd, info.size)
        tar.addfile(info, fileobj=reader)
        after = os.fstat(fd)
        grew = os.read(fd, 1) != b""
    finally:
        os.close(fd)
    moved = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    return _Added(info.mode, reader.digest.hexdigest(), info.size, reader.short or grew or moved)


def _add_entry(tar: tarfile.TarFile, root_fd: int, entry: Entry) -> _Added | None:
    """Store ``entry`` as it is now; None if it vanished or is no longer of its kind.

    Raises OSError for other failures (reading the tree, writing the archive).
    """
    *folders, name = entry.path.split("/")
    try:
        parent = open_dir(root_fd, folders)
    except OSError as exc:
        if exc.errno in _RACED:
            return None
        raise
    try:
        if entry.kind == "f":
            return _add_file(tar, parent, name, entry.path)
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if _kind(st.st_mode) != entry.kind:
            return None
        target = os.readlink(name, dir_fd=parent) if entry.kind == "l" else ""
        tar.addfile(_tarinfo(entry.path, st, target))
        return _Added(stat.S_IMODE(st.st_mode) if entry.kind == "d" else 0, target, 0)
    except OSError as exc:
        if exc.errno in _RACED:
            return None
        raise
    finally:
        os.close(parent)


def tree_signature(bin_dir: Path, exclude: Sequence[str]) -> str:
    """Return a cheap fingerprint (paths, kinds, modes, sizes, mtimes) of what would be archived.

    Equal fingerprints taken before an upload and after the archive mean the archive holds
    the code exactly as uploaded; equal to an earlier run's, that the archive would be the
    same (the quick check rsync trusts too). Raises OSError.
    """
    digest = hashlib.sha256()
    for entry in select_entries(bin_dir, exclude):
        try:
            st = (bin_dir / entry.path).lstat()
        except FileNotFoundError:
            digest.update(f"{entry.path}\0gone\n".encode())
            continue
        digest.update(
            f"{entry.path}\0{entry.kind}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def _write(root_fd: int, entries: Sequence[Entry], dest: Path) -> ArchiveInfo:
    """Write ``entries`` below the directory ``root_fd`` to ``dest`` (see make_archive)."""
    tree_hash = hashlib.sha256()
    files = size = 0
    skipped: list[str] = []
    changed: list[str] = []
    with (
        atomic_file(dest) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,  # gzip(1)'s
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            added = _add_entry(tar, root_fd, entry)
            if added is None:
                skipped.append(entry.path)
                continue
            if added.changed:
                changed.append(entry.path)
            tree_hash.update(
                f"{entry.kind}\0{entry.path}\0{added.mode:o}\0{added.detail}\n".encode()
            )
            if entry.kind != "d":
                files += 1
                size += added.size
    return ArchiveInfo(files, size, tree_hash.hexdigest(), tuple(skipped), tuple(changed))


def write_archive(bin_dir: Path, entries: Sequence[Entry], dest: Path) -> ArchiveInfo:
    """Write the already selected ``entries`` of ``bin_dir`` to ``dest`` atomically.

    Each entry is stored as what it is when read, never through a link; one that vanished
    or changed type since it was selected is left out and listed in ``skipped``. Returns
    an ArchiveInfo; raises OSError if ``bin_dir`` (not a link) or ``dest`` fails.
    """
    root_fd = _open_root(bin_dir)
    try:
        return _write(root_fd, entries, dest)
    finally:
        os.close(root_fd)


def make_archive(bin_dir: Path, exclude: Sequence[str], dest: Path) -> ArchiveInfo:
    """Write ``bin_dir`` minus ``exclude`` to the file ``dest`` (``bin.tar.gz``) atomically.

    Entries are sorted and symlinks stored as links. The hash covers, in path order, each
    stored entry's path, type, mode and content (or link target), so the same tree always
    gives the same hash whatever the timestamps. A path that changes under the archive is
    handled as in write_archive, without failing. Returns an ArchiveInfo; raises OSError if
    ``bin_dir`` is missing or a link, cannot be read, or ``dest`` cannot be written.
    """
    root_fd = _open_root(bin_dir)
    try:
        return _write(root_fd, _select(root_fd, compile_excludes(exclude)), dest)
    finally:
        os.close(root_fd)
