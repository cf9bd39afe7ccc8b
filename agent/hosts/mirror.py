"""A run's output dir as the helper lists it (pure): each file's type, size, nanosecond
mtime and whether a process has it open for writing. :mod:`agent.outputs` uses two such
listings, taken around one rsync, to publish complete files onto the share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class RemoteFile:
    """One entry of the helper's ``list``: type (``f`` or ``l``), size, mtime as printed."""

    kind: str
    size: int
    mtime: str

    @property
    def mtime_ns(self) -> int:
        """The mtime in nanoseconds (``find``'s ``%T@`` prints them as a fraction)."""
        try:
            return int(Decimal(self.mtime) * 1_000_000_000)
        except InvalidOperation:
            return -1  # never matches a staged copy: the file waits


@dataclass(frozen=True)
class Listing:
    """The helper's view of an output dir: host time, whether the run is alive, files,
    and which of them some process has open for writing."""

    now: float
    alive: bool
    files: dict[str, RemoteFile]
    writing: frozenset[str] = field(default_factory=frozenset)


def parse_listing(out: bytes) -> Listing:
    """Parse ``list`` output (pure): ``NOW ALIVE\\n``, then ``TYPE\\0PATH\\0SIZE\\0MTIME\\0``
    per file (``f``) or link (``l``), then the dir's physical path (``d``) and the
    absolute paths of files open for writing (``w``), which become paths in the dir."""
    head, _, body = out.partition(b"\n")
    now, alive = head.decode().split()
    fields = body.split(b"\0")
    files = {}
    base = ""
    open_paths = []
    for i in range(0, len(fields) - 3, 4):
        kind, path, size, mtime = (f.decode("utf-8", "surrogateescape") for f in fields[i : i + 4])
        if kind == "d":
            base = path.rstrip("/") + "/"
        elif kind == "w":
            open_paths.append(path)
        else:
            files[path] = RemoteFile(kind, int(size), mtime)
    writing = frozenset(p[len(base) :] for p in open_paths if base and p.startswith(base))
    return Listing(float(now), alive == "1", files, writing)


def is_live(path: str, patterns: Sequence[str]) -> bool:
    """Return True if ``path`` (relative to the output dir) matches a ``live_files``
    pattern: by its name, or by the whole path for a pattern with a ``/`` (pure)."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatchcase(path if "/" in pat else name, pat) for pat in patterns)
