"""A run that starts from another run of its project: its code (``code_from``), its output
(``resume_from``), and ``droprun rerun``, which writes a request for both.

The named run must be a folder ``results/run_N`` of the same project (never a link), with
a readable run.info; for ``code_from`` it must have its archive, for ``resume_from`` it
must have ended. The archive is extracted into the agent's own staging folder (never onto
the share) without following any link, and its tree hash must equal the ``bin_sha256``
that run N's run.info names, so the code that runs is exactly the code that ran then.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import runinfo
from agent.fsutil import open_dir
from agent.problems import Problem
from agent.runinfo import RunInfo
from agent.settings import Effective

ARCHIVE_NAME = "bin.tar.gz"
REFERENCE_KEYS = ("code_from", "resume_from")
_DIR_MODE = 0o700


class SourceError(Exception):
    """The run named by ``code_from`` or ``resume_from`` cannot be used; says why."""


def source_run(project: Path, ref: str) -> tuple[Path, RunInfo]:
    """Return the folder and run.info of ``ref`` ("run_N") in ``project``.

    Raises SourceError if there is no such run folder (or it is a link), or its run.info
    cannot be read.
    """
    run_dir = project / "results" / ref
    try:
        st = os.lstat(run_dir)
    except FileNotFoundError:
        raise SourceError(f"{ref} does not exist in this project") from None
    except OSError as exc:
        raise SourceError(f"{ref} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{ref} is not a run folder")
    try:
        info = runinfo.load(run_dir / "run.info")
    except runinfo.RunInfoError:
        raise SourceError(f"{ref} has no readable run.info") from None
    return run_dir, info


def code_source(project: Path, ref: str) -> tuple[Path, RunInfo]:
    """Return run ``ref``'s archive and run.info; raise SourceError if it has no archive."""
    run_dir, info = source_run(project, ref)
    archive = run_dir / ARCHIVE_NAME
    if info.bin_sha256 is None or not archive.is_file() or archive.is_symlink():
        raise SourceError(f"{ref} has no archive of its code (no bin.tar.gz) to run again")
    return archive, info


def output_source(project: Path, ref: str) -> tuple[Path, RunInfo]:
    """Return run ``ref``'s mirrored ``output/`` (resolved) and run.info.

    Raises SourceError if the run has not ended, has no output, or its output is a link
    out of the share.
    """
    run_dir, info = source_run(project, ref)
    if not info.terminal:
        raise SourceError(f"{ref} has not ended yet (it is {info.state}); resume from it then")
    output = run_dir / "output"
    if not output.is_dir():
        raise SourceError(f"{ref} has no mirrored output (no output/ folder) to resume from")
    real = output.resolve()
    if not real.is_relative_to(project.parent.resolve()):
        raise SourceError(f"{ref}/output is a link that points outside the share")
    return real, info


def reference_problems(
    project: Path, effective: Effective, where: Callable[[str], tuple[str, int | None]]
) -> list[Problem]:
    """Return a problem for each ``code_from``/``resume_from`` that names an unusable run.

    ``where(key)`` returns the file and line that set the key.
    """
    problems = []
    checks = (("code_from", code_source), ("resume_from", output_source))
    for key, check in checks:
        ref = getattr(effective.settings, key)
        if ref is None:
            continue
        try:
            check(project, ref)
        except SourceError as exc:
            file, line = where(key)
            problems.append(Problem(file, line, key, f'"{ref}": {exc}'))
    return problems


def run_number(ref: str) -> int:
    """Return N of "run_N" (pure)."""
    return int(ref.removeprefix("run_"))


# -- the archived code -------------------------------------------------------------------


def _member_path(member: tarfile.TarInfo) -> list[str]:
    """Return the parts of a member's path; raise SourceError for one that could escape."""
    name = member.name
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise SourceError(f"the archive holds a path that droprun never writes: {name!r}")
    return parts


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, dirs: list[tuple[str, int]]
) -> tuple[str, int, str]:
    """Write one member below the folder ``root_fd`` without following links.

    Returns (kind, mode, content digest or link target) as the archive's tree hash
    counts them. Raises SourceError for a member droprun never writes, OSError otherwise.
    """
    *folders, name = _member_path(member)
    parent = open_dir(root_fd, folders, create=True)
    try:
        mtime = (member.mtime, member.mtime)
        if member.isdir():
            os.mkdir(name, _DIR_MODE, dir_fd=parent)
            dirs.append((member.name, member.mode))
            return "d", member.mode, ""
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
            os.utime(name, mtime, dir_fd=parent, follow_symlinks=False)
            return "l", 0, member.linkname
        if not member.isreg():
            raise SourceError(f"the archive holds {member.name!r}, which is not a file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        digest = hashlib.sha256()
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has content
        with os.fdopen(os.open(name, flags, 0o600, dir_fd=parent), "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), member.mode & 0o7777)
            os.utime(out.fileno(), mtime)
        return "f", member.mode, digest.hexdigest()
    finally:
        os.close(parent)


def extract_code(archive: Path, dest: Path, info: RunInfo) -> None:
    """Extract ``archive`` (run ``info``'s bin.tar.gz) into the new folder ``dest``.

    Nothing is followed or overwritten: a link in the archive is made as a link, and a path
    through it fails. The tree hash of what was extracted must equal ``info.bin_sha256``,
    and no more files or bytes than ``info`` names are written. Raises SourceError if the
    archive is not what run.info says (changed by someone), OSError if it cannot be read.
    """
    ref = f"run_{info.run}"
    dest.mkdir(mode=_DIR_MODE)
    tree = hashlib.sha256()
    files = size = 0  # counted as the archive counts them: links are files of 0 bytes
    dirs: list[tuple[str, int]] = []
    fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"{ref}/bin.tar.gz is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            for member in tar:
                if member.isreg():  # checked before a byte is written
                    files += 1
                    size += member.size
                elif not member.isdir():
                    files += 1
                if files > (info.bin_files or 0) or size > (info.bin_bytes or 0):
                    raise SourceError(f"{ref}/bin.tar.gz holds more than its run.info says")
                try:
                    kind, mode, detail = _extract_member(tar, member, root_fd, dirs)
                except FileExistsError:
                    raise SourceError(f"the archive holds {member.name!r} twice") from None
                tree.update(f"{kind}\0{member.name}\0{mode:o}\0{detail}\n".encode())
        for path, mode in reversed(dirs):  # last: a read-only folder would refuse its files
            dir_fd = open_dir(root_fd, path.split("/"))
            try:
                os.fchmod(dir_fd, mode & 0o7777)
            finally:
                os.close(dir_fd)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SourceError(f"{ref}/bin.tar.gz is damaged: {exc}") from exc
    finally:
        os.close(root_fd)
        os.close(fd)
    if tree.hexdigest() != info.bin_sha256:
        raise SourceError(
            f"{ref}/bin.tar.gz does not hold the code its run.info names (bin_sha256 "
            "differs): it was changed after the run"
        )


def staging_dir(state_dir: Path, project: str, run: int) -> Path:
    """Return the agent's private folder for run ``run``'s code (pure)."""
    key = hashlib.sha256(project.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return state_dir / "staging" / f"{key}-run_{run}"


def remove_staging(path: Path) -> None:
    """Remove a staging folder (and nothing else), if it exists."""
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):  # read-only folders of the archive would refuse rmtree
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o700)
        path.chmod(0o700)
        shutil.rmtree(path)


# -- droprun rerun -----------------------------------------------------------------------


def rerun_table(info: RunInfo, ref: str) -> dict[str, Any]:
    """Return the request settings that run ``info``'s run again: its effective settings,
    with its archived code (pure)."""
    table = {k: v for k, v in info.effective.items() if k != "sources"}
    table["code_from"] = ref
    label = f"rerun of {ref}" + (f": {info.name}" if info.name else "")
    return {"name": label[:200], **table}
