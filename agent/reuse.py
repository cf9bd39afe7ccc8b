"""The steps of a run that reuses an earlier run of its project: its archive file, its
archived code (``code_from``), its output (``resume_from``).

Each function takes the run's :class:`agent.runner.RunDriver` and is called from one
place in it; none of them ever fails a run that could go on without it.
"""

from __future__ import annotations

import posixpath
import re
import shutil
from typing import TYPE_CHECKING

from agent import archshare, runinfo
from agent.archive import ArchiveInfo, make_archive, tree_signature
from agent.fsutil import atomic_file
from agent.rerun import (
    SourceError,
    code_source,
    extract_code,
    output_source,
    remove_staging,
    staging_dir,
)

if TYPE_CHECKING:
    from pathlib import Path

    from agent.runner import RunDriver as Driver
    from agent.runrecord import RunRecord

RESUME_ENV = "DROPRUN_RESUME_FROM"
# A path that reaches the server's rsync as one word even through an old rsync client.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+-]*")


# -- one archive for unchanged code ------------------------------------------------------


def link_unchanged_archive(d: Driver, signature: str) -> bool:
    """Share an earlier run's archive if bin/ has its fingerprint; True if done."""
    try:
        entry = archshare.share_unchanged(d.run_dir.parent, d.info.run, signature)
    except OSError as exc:
        d.ctx.log.warning("%s: cannot share an earlier archive: %s", d.ref.label, exc)
        return False
    if entry is None:
        return False
    d.info.bin_files, d.info.bin_bytes = entry.files, entry.bytes
    d.info.bin_sha256 = entry.sha256
    d.info.archive_shared_with = f"run_{entry.run}"
    d.save()
    return True


def link_equal_archive(d: Driver, archive: ArchiveInfo, signature: str | None) -> None:
    """Replace the new archive by a link to an equal earlier one (never fails the run)."""
    try:
        shared = archshare.share_equal(
            d.run_dir.parent, d.info.run, archive.sha256, signature, archive.files, archive.bytes
        )
    except OSError as exc:
        d.ctx.log.warning("%s: cannot share an earlier archive: %s", d.ref.label, exc)
        return
    if shared is not None:
        d.info.archive_shared_with = f"run_{shared}"


# -- code_from ---------------------------------------------------------------------------


def staged(d: RunRecord) -> Path:
    """Return the agent's private folder for this run's archived code."""
    return staging_dir(d.ctx.config.state_dir, d.info.project, d.info.run)


def stage_code(d: Driver) -> Path | None:
    """Extract run N's archive (``code_from``) into a private folder and return it.

    None if it cannot be used: the run then ended with ``error`` saying why.
    """
    ref = d.settings.code_from
    assert ref is not None
    dest = staged(d)
    remove_staging(dest)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        archive, source = code_source(d.project_dir, ref)
        extract_code(archive, dest, source)
        script = dest / d.settings.run_script
        if not (script.is_file() or script.is_symlink()):
            raise SourceError(f"run_script {d.settings.run_script!r} is not in {ref}'s code")
    except (SourceError, OSError) as exc:
        remove_staging(dest)
        d.end(runinfo.ERROR, f"code_from {ref}: {exc}")
        return None
    return dest


def drop_staged_code(d: RunRecord) -> None:
    """Remove this run's private copy of archived code, if there is one."""
    if d.settings.code_from is not None:
        remove_staging(staged(d))


def archive_from_run(d: Driver) -> None:
    """Make this run's ``bin.tar.gz`` run N's (``code_from``): a hard link, else a copy."""
    ref = d.settings.code_from
    assert ref is not None
    dest = d.run_dir / archshare.ARCHIVE_NAME
    try:
        archive, source = code_source(d.project_dir, ref)
        assert source.bin_sha256 is not None  # code_source checks it
        if archshare.link_archive(archive, dest):
            d.info.archive_shared_with = ref
        else:
            with archive.open("rb") as src, atomic_file(dest) as out:
                shutil.copyfileobj(src, out, 1 << 20)
        archshare.record(
            d.run_dir.parent,
            d.info.run,
            source.bin_sha256,
            None,
            source.bin_files or 0,
            source.bin_bytes or 0,
        )
    except (SourceError, OSError) as exc:
        d.note_bin(f"{ref}'s bin.tar.gz could not be copied here: {exc}")
        return
    d.info.bin_files, d.info.bin_bytes = source.bin_files, source.bin_bytes
    d.info.bin_sha256 = source.bin_sha256
    d.save()


# -- resume_from -------------------------------------------------------------------------


def output_dir(d: Driver) -> str:
    """Return where the script finds its output_dir on the host (absolute)."""
    assert d.info.remote_dir is not None
    return posixpath.join(d.info.remote_dir, d.settings.output_dir)


def link_dest(d: Driver, source: runinfo.RunInfo) -> str | None:
    """Return run N's output folder on the host if it may still be there, else None.

    Only a run dir beside this run's on the same host is trusted (run.info is on the
    share, anyone may edit it); rsync still compares every file with the share's copy.
    """
    remote = source.remote_dir
    here = d.info.remote_dir
    if remote is None or here is None or source.host != d.info.host:
        return None
    if posixpath.normpath(remote) != remote or posixpath.dirname(remote) != posixpath.dirname(here):
        return None
    out = source.effective.get("output_dir", "output")
    if not isinstance(out, str) or ".." in out.split("/") or out.startswith("/"):
        return None
    path = posixpath.normpath(posixpath.join(remote, out))
    return path if _PLAIN_PATH.fullmatch(path) and path.startswith(remote + "/") else None


def seed_output(d: Driver) -> bool:
    """Fill output_dir with run N's output before the script starts (``resume_from``).

    Linked on the host from run N's run dir where it is still there, uploaded from the
    share's ``results/run_N/output`` otherwise. Returns False if the run ended instead.
    """
    ref = d.settings.resume_from
    if ref is None:
        return True
    if d.host.status(d.ref).state != "not_started":
        return True  # launched before a restart: seeded then, and the script owns it now
    try:
        source_dir, source = output_source(d.project_dir, ref)
    except SourceError as exc:
        d.end(runinfo.ERROR, f"resume_from {ref}: {exc}")
        return False
    link = link_dest(d, source)
    sent = d.retry(
        lambda: d.host.seed_output(d.ref, source_dir, d.settings.output_dir, link),
        "resume upload",
    )
    d.info.bytes_resumed = sent
    d.save()
    d.ctx.log.info("%s: output_dir holds %s's output (%d bytes sent)", d.ref.label, ref, sent)
    return True


def extra_env(d: Driver) -> dict[str, str]:
    """Return the variables droprun adds for the script (``DROPRUN_RESUME_FROM``)."""
    if d.settings.resume_from is None or d.info.remote_dir is None:
        return {}
    return {RESUME_ENV: output_dir(d)}


def archive_run(d: Driver) -> None:
    """Write ``bin.tar.gz`` and its figures into run.info; whatever makes the archive
    differ from the uploaded code is said in ``bin_note``.

    Never fails the run (the script is already running).
    """
    if d.settings.code_from is not None:
        archive_from_run(d)
        return
    bin_dir = (d.project_dir / "bin").resolve()
    if not bin_dir.is_relative_to(d.ctx.config.share.resolve()):
        # Swapped for a link out of the share since the upload: archiving it would
        # copy files from outside the share into it.
        d.note_bin("bin/ became a link out of the share after the upload: not archived")
        return
    try:
        before = tree_signature(bin_dir, d.settings.exclude)
        if before == d.uploaded_signature and link_unchanged_archive(d, before):
            return
        archive = make_archive(bin_dir, d.settings.exclude, d.run_dir / "bin.tar.gz")
        after = tree_signature(bin_dir, d.settings.exclude)
        moved_on = d.uploaded_signature != after
    except OSError as exc:
        d.note_bin(f"bin/ could not be archived: {exc}")
        return
    d.info.bin_files, d.info.bin_bytes = archive.files, archive.bytes
    d.info.bin_sha256 = archive.sha256
    notes = []
    if archive.skipped:
        notes.append(f"left out (gone or no longer a plain file): {_few(archive.skipped)}")
    if archive.changed:
        notes.append(f"changed while being archived: {_few(archive.changed)}")
    if moved_on:
        notes.append("bin/ changed after the upload (or the agent restarted in between)")
    link_equal_archive(d, archive, None if notes else after)
    if notes:
        d.note_bin("; ".join(notes) + "; bin.tar.gz may differ from the code that runs")
    else:
        d.save()


def _few(paths: tuple[str, ...], shown: int = 5) -> str:
    """Return up to ``shown`` of ``paths`` joined, and how many more there are (pure)."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more
