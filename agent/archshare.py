"""One copy of an unchanged ``bin.tar.gz`` shared by every run folder that holds it.

A run's archive that would equal an earlier run's of the same project (same ``bin_sha256``)
becomes a hard link to that run's file: each run folder stays complete on its own, and
deleting any of them leaves the others' archives intact. Where the share cannot hard-link,
each run keeps its own copy, as before.

The earlier run is found through a small per-project index, ``results/.archives``: one
line appended per archive written, newest last, with the archive's hash, the fingerprint
of ``bin/`` it was made from (:func:`agent.archive.tree_signature`) and the identity of
the file (inode, size, mtime). A fingerprint that equals an entry's means the archive
would be the same, so nothing is read or compressed at all; otherwise the archive is made
and then linked if its hash equals an entry's. Anyone may write to the share, so an entry
is used only while its file is still the very file the agent wrote (same inode, size and
mtime; a replaced file has another inode); a lost or garbled line only costs a copy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import NotPlainFile, atomic_write, fsync_dir, read_plain

INDEX_NAME = ".archives"
ARCHIVE_NAME = "bin.tar.gz"
MAX_INDEX_BYTES = 256 * 1024  # rewritten with its newest KEEP_ENTRIES lines beyond this
KEEP_ENTRIES = 500
_LINE = re.compile(r"1 ([0-9a-f]{64}) ([0-9a-f]{64}|-) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)")
# What os.link raises where the share cannot hard-link (or the file has too many links).
_NO_LINK = frozenset({errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Entry:
    """One archive as the agent wrote it: its hash, the fingerprint of ``bin/`` it was
    made from (None if unknown), its run, figures, and the identity of its file."""

    sha256: str
    signature: str | None
    run: int
    files: int
    bytes: int
    ino: int
    size: int
    mtime_ns: int

    def line(self) -> str:
        """Return the index line of this entry."""
        return (
            f"1 {self.sha256} {self.signature or '-'} {self.run} {self.files} {self.bytes} "
            f"{self.ino} {self.size} {self.mtime_ns}\n"
        )


def parse_index(text: str) -> list[Entry]:
    """Return the well-formed entries of an index text, oldest first (pure)."""
    entries = []
    for line in text.splitlines():
        match = _LINE.fullmatch(line)
        if match:
            sha, sig, *numbers = match.groups()
            run, files, size_in, ino, size, mtime = (int(n) for n in numbers)
            signature = None if sig == "-" else sig
            entries.append(Entry(sha, signature, run, files, size_in, ino, size, mtime))
    return entries


def archive_of(results: Path, run: int) -> Path:
    """Return the path of run ``run``'s archive in the ``results`` folder."""
    return results / f"run_{run}" / ARCHIVE_NAME


def read_index(results: Path) -> list[Entry]:
    """Return the entries of ``results/.archives`` (none if it is missing or not a plain file)."""
    try:
        data = read_plain(results / INDEX_NAME, MAX_INDEX_BYTES * 2)
    except (FileNotFoundError, NotPlainFile):
        return []
    return parse_index(data.decode("ascii", errors="replace"))


def is_intact(results: Path, entry: Entry) -> bool:
    """True if ``entry``'s run folder still holds the very archive file the agent wrote."""
    try:
        st = os.lstat(archive_of(results, entry.run))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_size, st.st_mtime_ns) == (
        entry.ino,
        entry.size,
        entry.mtime_ns,
    )


def find(
    results: Path, run: int, *, sha256: str | None = None, signature: str | None = None
) -> Entry | None:
    """Return the newest intact entry of another run than ``run`` with this hash or
    fingerprint, or None."""
    for entry in reversed(read_index(results)):
        if entry.run == run:
            continue
        same = (sha256 is not None and entry.sha256 == sha256) or (
            signature is not None and entry.signature == signature
        )
        if same and is_intact(results, entry):
            return entry
    return None


def record(
    results: Path, run: int, sha256: str, signature: str | None, files: int, size: int
) -> Entry:
    """Append the entry of run ``run``'s archive (as it is now) to the index; return it.

    Appends are single small writes (no lost lines between threads); past
    MAX_INDEX_BYTES the index is rewritten with its newest entries. Raises OSError.
    """
    st = os.lstat(archive_of(results, run))
    entry = Entry(sha256, signature, run, files, size, st.st_ino, st.st_size, st.st_mtime_ns)
    path = results / INDEX_NAME
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        fd = -1  # a link or FIFO someone put there: replaced below
    try:
        if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, entry.line().encode("ascii"))
            too_big = os.fstat(fd).st_size > MAX_INDEX_BYTES
        else:
            too_big = True
    finally:
        if fd >= 0:
            os.close(fd)
    if too_big:
        older = [e for e in read_index(results) if e.run != run]
        kept = [*older[-KEEP_ENTRIES:], entry]
        atomic_write(path, "".join(e.line() for e in kept).encode("ascii"))
    return entry


def link_archive(src: Path, dest: Path) -> bool:
    """Make ``dest`` a hard link to ``src``, replacing ``dest`` atomically if it exists.

    Returns False (leaving ``dest`` as it was) where the share cannot hard-link. Raises
    other OSErrors.
    """
    tmp = dest.with_name(f".{dest.name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    return True


def share_unchanged(results: Path, run: int, signature: str) -> Entry | None:
    """Link run ``run``'s archive to an earlier one made from a ``bin/`` with the same
    fingerprint; return that run's entry, or None (nothing done: make the archive).

    Raises OSError.
    """
    entry = find(results, run, signature=signature)
    if entry is None or not link_archive(archive_of(results, entry.run), archive_of(results, run)):
        return None
    record(results, run, entry.sha256, signature, entry.files, entry.bytes)
    return entry


def share_equal(
    results: Path, run: int, sha256: str, signature: str | None, files: int, size: int
) -> int | None:
    """Replace run ``run``'s freshly made archive by a link to an earlier equal one (same
    hash), and index it; return the earlier run's number, or None if it keeps its own.

    ``signature``: the fingerprint of ``bin/`` the archive holds exactly (None if it may
    differ). Raises OSError.
    """
    entry = find(results, run, sha256=sha256)
    linked = entry is not None and link_archive(
        archive_of(results, entry.run), archive_of(results, run)
    )
    record(results, run, sha256, signature, files, size)
    return entry.run if linked and entry is not None else None
