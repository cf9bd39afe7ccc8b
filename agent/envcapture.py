"""What a run runs with, written into ``results/run_N/env/`` and run.info's ``[environment]``.

One helper call on the host (``envinfo``) prints everything at once, in sections: python
and ``pip freeze`` (in the run's conda env or venv), ``conda list --explicit``,
``nvidia-smi``, ``nvcc``, ``uname``, the OS release and the host name. ``git`` runs on the
NAS when ``bin/`` is in a git work tree. Anything absent is recorded as ``"absent"``; a
capture that fails is noted and never fails the run.

The work tree is on the share, and anyone may write to it: git runs with its hooks and
fsmonitor switched off, never above the share, without writing the index, and the
"dirty" check (which could run a repository's own filter programs) is skipped for a
repository that defines filters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.fsutil import open_dir
from agent.hosts.base import HostError

if TYPE_CHECKING:
    from agent.runner import RunDriver

ABSENT = "absent"
SAME = "@@same@@"  # a package list left out by the helper: unchanged since the last call
_MARK = re.compile(rb"^@@droprun-env ([a-z-]+)@@$", re.MULTILINE)
_VENV = re.compile(r"\s*(?:source|\.)\s+(\S+)/bin/activate\s*")
# Section -> file in env/.
FILES = {
    "python": "python.txt",
    "pip": "pip-freeze.txt",
    "conda": "conda-explicit.txt",
    "nvidia-smi": "nvidia-smi.csv",
    "nvidia-smi-header": "nvidia-smi.txt",
    "nvcc": "nvcc.txt",
    "uname": "uname.txt",
    "os-release": "os-release.txt",
    "hostname": "hostname.txt",
    "git": "git.txt",
}
GIT_TIMEOUT = 20.0
_SAFE_GIT = (
    "-c",
    "safe.directory=*",  # the share's files belong to its users, not to the agent
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "--no-optional-locks",
)


def find_venv(setup: Sequence[str]) -> str | None:
    """Return the venv that a ``source DIR/bin/activate`` setup line activates (pure)."""
    found = None
    for line in setup:
        match = _VENV.fullmatch(line)
        if match:
            found = match.group(1)
    return found


def parse_sections(out: bytes) -> dict[str, str | None]:
    """Return each section of ``envinfo``'s output as text, None where it is absent (pure)."""
    sections: dict[str, str | None] = {}
    marks = list(_MARK.finditer(out))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following is not None else len(out)
        body = out[mark.end() : end].strip(b"\n")
        name = mark.group(1).decode()
        if body.startswith(b"@@absent@@"):
            sections[name] = None
        elif body == SAME.encode():
            sections[name] = SAME
        else:
            sections[name] = body.decode("utf-8", "replace") + "\n"
    return sections


def reuse_lists(
    sections: dict[str, str | None], known: Mapping[str, str | None]
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Return ``sections`` with each package list that the helper left out as unchanged
    ("@@same@@") taken from ``known``, and what to keep for the next call (pure)."""
    kept: dict[str, str | None] = {}
    for name in ("pip", "conda"):
        if sections.get(name) == SAME:
            sections[name] = known.get(name)
        key = (sections.get(f"{name}-key") or "").strip()
        if key and sections.get(name) is not None:
            kept[f"{name}-key"], kept[name] = key, sections[name]
    return sections, kept


def _first(pattern: str, text: str | None) -> str | None:
    match = re.search(pattern, text or "", re.MULTILINE)
    return match.group(1) if match else None


@dataclass(frozen=True)
class GitState:
    """``bin/``'s git commit and whether it differs from it (None: unknown), and the text
    for ``env/git.txt``."""

    commit: str | None
    dirty: bool | None
    text: str


def summarize(sections: Mapping[str, str | None], git: GitState) -> dict[str, Any]:
    """Return run.info's ``[environment]`` from the sections and git (pure)."""
    csv = (sections.get("nvidia-smi") or "").splitlines()[1:]
    rows = [[cell.strip() for cell in line.split(",")] for line in csv if line.strip()]
    packages = "".join(sections.get(k) or "" for k in ("pip", "conda"))
    cuda = _first(r"CUDA Version:\s*(\d+(?:\.\d+)*)", sections.get("nvidia-smi-header"))
    nvcc = _first(r"release (\d+(?:\.\d+)*)", sections.get("nvcc"))
    uname = (sections.get("uname") or "").split()
    table: dict[str, Any] = {
        "python": _first(r"^Python (\S+)", sections.get("python")) or ABSENT,
        "cuda": cuda or ABSENT,  # as the driver reports it
        "nvcc": nvcc or ABSENT,  # the CUDA toolkit on PATH, if any
        "driver": rows[0][1] if rows and len(rows[0]) > 1 else ABSENT,
        "gpus": [row[0] for row in rows],
        "packages_sha256": hashlib.sha256(packages.encode()).hexdigest() if packages else ABSENT,
        "conda": ABSENT if sections.get("conda") is None else "listed",
        "os": _first(r'^PRETTY_NAME="?([^"\n]*)"?', sections.get("os-release")) or ABSENT,
        "kernel": uname[2] if len(uname) > 2 else ABSENT,
        "hostname": (sections.get("hostname") or "").strip() or ABSENT,
        "git_commit": git.commit or ABSENT,
    }
    if git.dirty is not None:
        table["git_dirty"] = git.dirty
    return table


def _git(bin_dir: Path, share: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one read-only git command in ``bin_dir``; raises OSError/TimeoutExpired."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CEILING_DIRECTORIES": str(share),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
        "LC_ALL": "C",
    }
    return subprocess.run(
        ["git", *_SAFE_GIT, *args],
        cwd=bin_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def in_git_tree(bin_dir: Path, share: Path) -> bool:
    """Return True if ``bin_dir`` or a folder above it, up to ``share``, has a ``.git``
    (where git would look; the share is its ceiling). A few stats instead of a git start."""
    for folder in (bin_dir, *bin_dir.parents):
        if os.path.lexists(folder / ".git"):
            return True
        if folder == share or not folder.is_relative_to(share):
            return False
    return False


def git_state(bin_dir: Path, share: Path) -> GitState:
    """Return ``bin_dir``'s commit and dirtiness (never raises)."""
    if not in_git_tree(bin_dir, share):
        return GitState(None, None, "bin/ is not in a git work tree with a commit\n")
    try:
        head = _git(bin_dir, share, "rev-parse", "--verify", "-q", "HEAD")
        if head.returncode != 0:
            return GitState(None, None, "bin/ is not in a git work tree with a commit\n")
        commit = head.stdout.strip()
        if _git(bin_dir, share, "config", "--get-regexp", r"^filter\.").returncode == 0:
            return GitState(
                commit, None, f"{commit}\ndirty: unknown (the repository defines filters)\n"
            )
        status = _git(
            bin_dir,
            share,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--ignore-submodules=all",
            "--",
            ".",
        )
    except FileNotFoundError:
        return GitState(None, None, "git is not installed on the agent's machine\n")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GitState(None, None, f"git failed: {exc}\n")
    if status.returncode != 0:
        return GitState(commit, None, f"{commit}\ndirty: unknown ({status.stderr.strip()})\n")
    dirty = bool(status.stdout.strip())
    return GitState(commit, dirty, f"{commit}\ndirty: {str(dirty).lower()}\n{status.stdout}")


def write_files(run_dir: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` into ``run_dir/env/``, never through a link someone put there.

    Raises OSError.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(run_dir / "env")
    fd = open_dir(run_dir, ["env"])
    try:
        for name, text in files.items():
            tmp = f".{name}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(tmp, flags, 0o666, dir_fd=fd), "w", encoding="utf-8") as out:
                out.write(text)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _git_of(d: RunDriver) -> GitState:
    """Git as the code was: of bin/, or of run N's for code taken from run N."""
    ref = d.settings.code_from
    if ref is None:
        return git_state((d.project_dir / "bin").resolve(), d.ctx.config.share.resolve())
    from agent.rerun import SourceError, source_run

    try:
        source = source_run(d.project_dir, ref)[1].environment or {}
    except SourceError:
        source = {}
    commit = source.get("git_commit")
    dirty = source.get("git_dirty")
    commit = commit if isinstance(commit, str) and commit != ABSENT else None
    return GitState(commit, dirty if isinstance(dirty, bool) else None, f"as {ref}: {commit}\n")


def capture(d: RunDriver, devices: str | None) -> None:
    """Capture the run's environment into env/ and run.info; never fails the run."""
    s = d.settings
    try:
        sections = d.host.environment(s.conda_env, find_venv(s.setup), devices)
    except HostError as exc:
        d.ctx.log.warning("%s: cannot capture the environment: %s", d.ref.label, exc)
        d.info.environment = {"note": f"could not be captured: {exc}"}
        d.save()
        return
    git = _git_of(d)
    files = {FILES[k]: v for k, v in sections.items() if v is not None and k in FILES}
    files[FILES["git"]] = git.text
    try:
        write_files(d.run_dir, files)
    except OSError as exc:
        d.ctx.log.warning("%s: cannot write env/: %s", d.ref.label, exc)
    d.info.environment = summarize(sections, git)
    d.save()
