"""Publishing a run's outputs onto the share: the share side of mirroring.

The host lists the run's output dir and rsyncs it into a hidden staging dir next to the
destination (:meth:`agent.hosts.base.Host.list_outputs`, ``pull_outputs``); a file is then
published into the destination (a hard link + rename, so never half-written) in the same
cycle once it is complete: the same size and nanosecond mtime in the listings taken
before and after the transfer, and (while the run lives) no process of the server with it
open for writing, which tells a writer that pauses from a finished file. Files matching
``live_files`` (growing logs, metrics) are published every cycle as the copy that cycle
made. The destination is walked with directory fds and O_NOFOLLOW, so a link that a
share user (or the server) put on the way cannot lead a file out of it.

A staged copy counts as the remote file when size and nanosecond mtime agree. An agent
rsync older than 3.1.3 compares whole seconds only, and 3.1.2 even stamps the new mtime
on a copy it skipped: :func:`forget_doubtful` and :func:`forget_unsettled` remove the
staged copies whose content such an rsync could have left stale, so the next rsync
sends them whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import open_dir
from agent.hosts.base import Host, HostError, RunRef
from agent.hosts.mirror import Listing, RemoteFile, is_live

STAGING_NAME = ".droprun-staging"


@dataclass(frozen=True)
class MirrorResult:
    """What one mirror of ``output_dir`` did: bytes over the network, files made visible."""

    bytes_received: int
    files_published: int
    files_pending: int


def mirror(
    host: Host,
    ref: RunRef,
    output_dir: str,
    dest: Path,
    *,
    final: bool = False,
    live_files: Sequence[str] = (),
) -> MirrorResult:
    """Mirror the run's ``output_dir`` on ``host`` into ``dest``: complete files, and live ones.

    Nothing in ``dest`` is ever deleted. With ``final`` and nothing left pending, the
    staging dir is removed. An agent rsync that compares whole seconds only gets the staged
    copies it could leave stale removed first. Raises HostError.
    """
    before = host.list_outputs(ref, output_dir)
    if not before.files:
        return MirrorResult(0, 0, 0)
    staging = ensure_staging(dest)
    exact = host.pulls_nanoseconds()
    if not exact:
        forget_doubtful(before, staging)
    received = host.pull_outputs(ref, output_dir, staging)
    after = host.list_outputs(ref, output_dir)
    published, pending = publish_settled(before, after, staging, dest, live_files)
    if not exact:
        forget_unsettled(before, after, staging)
    if final and not pending:
        shutil.rmtree(staging)
    return MirrorResult(received, published, pending)


def ensure_staging(dest: Path) -> Path:
    """Create (if needed) and return the hidden staging dir that rsync fills next to ``dest``.

    Raises HostError if it is a link: rsync --delete would follow it, and anything could
    be lost.
    """
    staging = dest.parent / STAGING_NAME
    staging.mkdir(parents=True, exist_ok=True)
    if staging.is_symlink():
        raise HostError(f"{staging} is a link (made by someone else); refusing to sync")
    return staging


def publish_settled(
    before: Listing,
    after: Listing,
    staging: Path,
    dest: Path,
    live_files: Sequence[str] = (),
) -> tuple[int, int]:
    """Publish from ``staging`` into ``dest`` what this cycle may show; return counts.

    ``before`` and ``after`` are the listings taken around the transfer. A file is
    complete when both listings agree on it, its staged copy matches, and, while the job
    runs, no process had it open for writing in either: it is published. A file matching
    ``live_files`` that is not complete has its staged copy (the prefix rsync read)
    published, and stays pending. Returns (newly published, pending: not yet final).
    Raises HostError if a file cannot be published (see :func:`_publish`).
    """
    published = pending = 0
    open_for_writing = (before.writing | after.writing) if after.alive else frozenset()
    for path, remote in sorted(after.files.items()):
        staged = staging / path
        stable = before.files.get(path) == remote and path not in open_for_writing
        if stable and _staged_matches(staged, remote):
            published += _publish(staged, dest, path)
            continue
        pending += 1
        if remote.kind == "f" and is_live(path, live_files) and _is_regular(staged):
            published += _publish(staged, dest, path)
    return published, pending


def _is_regular(path: Path) -> bool:
    """Return True if ``path`` is a regular file (not following a link)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def same_mtime(staged_ns: int, remote_ns: int) -> bool:
    """Return True if a staged copy's mtime is the remote one (pure).

    A staged mtime without a fraction of a second agrees with any remote mtime of the
    same second: the share's file system may keep whole seconds only.
    """
    if staged_ns == remote_ns:
        return True
    second = 1_000_000_000
    return staged_ns % second == 0 and staged_ns // second == remote_ns // second


def _staged_matches(staged: Path, remote: RemoteFile) -> bool:
    """Return True if the staged copy has the remote file's type, size and mtime."""
    try:
        st = staged.lstat()
    except FileNotFoundError:
        return False
    if remote.kind == "l":
        return stat.S_ISLNK(st.st_mode)
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == remote.size
        and same_mtime(st.st_mtime_ns, remote.mtime_ns)
    )


def forget_doubtful(listing: Listing, staging: Path) -> int:
    """Before a pull by an rsync that compares whole seconds: remove every staged copy
    that such an rsync would wrongly keep; return how many were removed.

    That is a regular file of the remote file's size whose mtime differs only in the
    fraction of a second (rewritten within the second of the last pull). Only the
    staging name goes: a published copy on the share is another link and stays.
    """
    removed = 0
    for path, remote in listing.files.items():
        if remote.kind != "f":
            continue
        staged = staging / path
        try:
            st = staged.lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        second = 1_000_000_000
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_size == remote.size
            and st.st_mtime_ns // second == remote.mtime_ns // second
            and not same_mtime(st.st_mtime_ns, remote.mtime_ns)
        ):
            staged.unlink()
            removed += 1
    return removed


def forget_unsettled(before: Listing, after: Listing, staging: Path) -> int:
    """After a pull by an rsync that compares whole seconds: remove the staged copy of
    every file that changed during it; return how many were removed.

    Such an rsync may have skipped the file yet stamped its new mtime on the old copy,
    which would then look current next time.
    """
    removed = 0
    for path, remote in after.files.items():
        if remote.kind == "f" and before.files.get(path) != remote:
            removed += _unlink_file(staging / path)
    return removed


def _unlink_file(staged: Path) -> bool:
    """Remove ``staged`` if it is a regular file; return True if it was removed."""
    try:
        if stat.S_ISREG(staged.lstat().st_mode):
            staged.unlink()
            return True
    except (FileNotFoundError, NotADirectoryError):
        pass
    return False


def _publish(staged: Path, dest: Path, rel: str) -> bool:
    """Make ``staged`` visible as ``dest/rel`` atomically; return False if it already was.

    Raises HostError if it cannot be (a directory in the way, or a link on the way).
    """
    staged_st = staged.lstat()
    *folders, name = rel.split("/")
    final = dest / rel
    try:
        fd = open_dir(dest.parent, [dest.name, *folders], create=True)
    except OSError as exc:
        why = "a link or a file is in the way" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else ""
        raise HostError(f"cannot publish {final}: {why or exc}") from exc
    try:
        try:
            final_st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if (final_st.st_dev, final_st.st_ino) == (staged_st.st_dev, staged_st.st_ino):
                return False
            both_links = stat.S_ISLNK(staged_st.st_mode) and stat.S_ISLNK(final_st.st_mode)
            if both_links and os.readlink(name, dir_fd=fd) == os.readlink(staged):
                return False
        except FileNotFoundError:
            pass
        tmp = f".{name}.droprun-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        if stat.S_ISLNK(staged_st.st_mode):
            os.symlink(os.readlink(staged), tmp, dir_fd=fd)
        else:
            os.link(staged, tmp, dst_dir_fd=fd)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as exc:
        raise HostError(f"cannot publish {final}: {exc}") from exc
    finally:
        os.close(fd)
    return True
