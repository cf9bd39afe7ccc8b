"""Writing files on the share so that a reader never sees half of one.

Nothing here sets permissions: files are created read-write for everyone and folders
open to everyone, minus the umask, or as the folder's default ACL says. A chmod on a
NAS share would replace the ACL that gives the share's users their access.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temp(folder: Path, prefix: str) -> tuple[int, Path]:
    """Create a new empty file ``folder/<prefix><random>.tmp``; return its fd and path.

    Mode 0o666 before the umask or the folder's default ACL (``mkstemp`` would make it
    0o600, and only a chmod could widen that). Raises OSError.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = folder / f"{prefix}{os.urandom(6).hex()}.tmp"  # secrets.token_hex(6)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(folder))


# How much of an atomic write survives a power cut: "all" (the data and the rename),
# "data" (the new data, or the old file: never an empty one) and "none" (for files that
# are made again from others, such as pages and bills; still never half written).
Sync = Literal["all", "data", "none"]


@contextmanager
def atomic_file(path: Path, sync: Sync = "all") -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; when the block ends without error, flush it to
    disk as ``sync`` says and rename it over ``path``. On error the temp file is removed
    and ``path`` is untouched.
    """
    fd, tmp = create_temp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            if sync != "none":
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync == "all":
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, sync: Sync = "all") -> None:
    """Replace ``path`` with ``data`` atomically (temp file beside it, fsync as ``sync``
    says, rename)."""
    with atomic_file(path, sync) as out:
        out.write(data)


_TYPE_NAMES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}


class NotPlainFile(OSError):
    """A path that is not a regular file: ``what`` says what it is instead ("a link"...)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path}: is {what}, not a regular file")
        self.what = what


def read_plain(path: Path, limit: int | None = None, *, follow: bool = False) -> bytes:
    """Return the bytes of the regular file ``path`` (at most ``limit + 1`` of them).

    Anyone may write to the share, so the file is opened once, without blocking and (unless
    ``follow``) without following a link, and the open file itself is checked: a FIFO,
    device or link put there is refused unread instead of blocking, reading forever or
    leaking another file. Raises NotPlainFile, FileNotFoundError, or OSError.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise NotPlainFile(path, "a link") from exc
        if exc.errno == errno.ENXIO:  # opening a socket
            raise NotPlainFile(path, "a socket") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotPlainFile(path, _TYPE_NAMES.get(stat.S_IFMT(mode), "a special file"))
        if limit is None:
            return b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


def open_dir(start: Path | int, parts: Sequence[str] = (), *, create: bool = False) -> int:
    """Return a new fd of the folder ``start/parts...``, never following a link on the way.

    Walking with folder fds and O_NOFOLLOW means a link put on the way by a share user
    cannot lead a read or a write out of the folder. ``start`` is a path or a folder fd
    (not closed); ``create`` makes missing folders. Raises OSError (ELOOP or ENOTDIR for
    a link in the way).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.dup(start) if isinstance(start, int) else os.open(start, flags)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            fd, old = os.open(part, flags, dir_fd=fd), fd
            os.close(old)
    except BaseException:
        os.close(fd)
        raise
    return fd
