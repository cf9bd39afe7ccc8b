"""Requests on the share, run numbers, and accepting or rejecting a request (the folders
themselves are listed by ``layout``).

Accepting claims the next run number, moves the request verbatim into ``results/run_N/``
and writes the first ``run.info``. Rejecting renames the request to ``*.rejected`` and
writes a ``*.error`` beside it. A user's file is never deleted or overwritten.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import socket
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from agent import runinfo
from agent.fsutil import NotPlainFile, atomic_write, read_plain
from agent.layout import project_dirs, run_dirs
from agent.names import is_request_name, request_kind
from agent.plan import Plan, plan_runs
from agent.problems import InvalidFile, Problem
from agent.rerun import run_number
from agent.runinfo import RunInfo
from agent.schema import AgentConfig
from agent.settings import (
    MAX_REQUEST_BYTES,
    parse_request,
    read_project_layer,
)

COUNTER_NAME = ".next_run"
RICH_TEXT_PROBLEM = (
    "{name} is a rich-text document (TextEdit, Word or Pages), not plain text: save it as "
    'plain text (TextEdit: Format > Make Plain Text; Word: "Plain Text (.txt)") and name it '
    '"run.request" or "run.request.txt"'
)


def share_id(share: Path, machine_id_file: Path = Path("/etc/machine-id")) -> str:
    """Return this share's name on hosts: its folder name and a hash of this machine's id
    and the share's real path, e.g. ``deeplearning-3f2a9c1e0b7d``.

    Two NAS agents that send runs to one server account (two shares, two machines with
    the same share path) get different names, so they never share a cache or a run dir.
    """
    try:
        machine = machine_id_file.read_text().strip()
    except OSError:
        machine = ""
    machine = machine or socket.gethostname()
    digest = hashlib.sha256(f"{machine}\0{share.resolve()}".encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", share.resolve().name).strip("._") or "share"
    return f"{label[:40]}-{digest}"


def find_requests(share: Path) -> list[Path]:
    """Return every request (see :func:`agent.names.request_kind`) waiting in a project
    folder of ``share``, oldest first."""
    found: list[tuple[int, Path]] = []
    for project in project_dirs(share):
        try:
            entries = list(os.scandir(project))
        except OSError:
            continue
        for entry in entries:
            if is_request_name(entry.name):
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, Path(entry.path)))
                except FileNotFoundError:
                    continue
    return [p for _, p in sorted(found)]


def signature(path: Path) -> tuple[int, int] | None:
    """Return (size, mtime_ns) of ``path``, or None if it is gone."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def claim_run_dir(project: Path) -> tuple[int, Path]:
    """Create the next ``results/run_N`` of ``project`` and return (N, folder).

    The number is above every existing run and above the counter file, so numbers are
    never reused, and ``mkdir`` is exclusive, so two claims never share one.
    """
    results = project / "results"
    results.mkdir(exist_ok=True)
    counter = results / COUNTER_NAME
    try:
        floor = int(counter.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        floor = 0
    existing = [n for n, _ in run_dirs(project)]
    n = max([floor, *(x + 1 for x in existing)])
    while True:
        run_dir = results / f"run_{n}"
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
    atomic_write(counter, f"{n + 1}\n".encode())
    return n, run_dir


def _free_name(path: Path) -> Path:
    """Return ``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, i = path, 0
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = path.with_name(f"{path.name}.{i}")
    return candidate


def _owner(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


@dataclass(frozen=True)
class Accepted:
    """A request that became run ``run`` in ``run_dir``; a sweep's other runs in ``more``."""

    run_dir: Path
    info: RunInfo
    more: tuple[Accepted, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """A request that was renamed to ``rejected`` with the reasons in ``error_file``."""

    request: Path
    rejected: Path
    error_file: Path
    problems: tuple[str, ...]


def _plain_name(name: str) -> str:
    """Return ``name`` with a rich-text suffix replaced by ``.request`` (pure)."""
    stem, dot, _ = name.rpartition(".")
    return stem if dot and request_kind(name) == "rich" else name


def reject(request: Path, problems: list[str]) -> Rejected:
    """Rename ``request`` to ``NAME.rejected`` and write ``NAME.error`` beside it."""
    rejected = _free_name(request.with_name(request.name + ".rejected"))
    os.rename(request, rejected)
    error_file = _free_name(request.with_name(request.name + ".error"))
    text = (
        f'droprun could not accept "{request.name}"; nothing was started.\n'
        f'The file is kept, unchanged, as "{rejected.name}".\n\n'
        + "".join(f"- {p}\n" for p in problems)
        + f'\nFix it and save it again as "{_plain_name(request.name)}" '
        "(or any name ending in .request or .request.txt).\n"
    )
    with open(error_file, "x", encoding="utf-8") as out:
        out.write(text)
    return Rejected(request, rejected, error_file, tuple(problems))


def _project_problems(project: Path, share: Path) -> list[str]:
    """Return why ``project`` cannot run anything (empty if it can)."""
    share_real = share.resolve()
    if not project.resolve().is_relative_to(share_real):
        return [f"the project folder {project.name} points outside the share"]
    bin_dir = project / "bin"
    if not bin_dir.is_dir():
        return [f"the project folder {project.name} has no bin/ folder with the code to run"]
    if not bin_dir.resolve().is_relative_to(share_real):
        return [f"{project.name}/bin is a link that points outside the share"]
    return []


def read_request(request: Path, shown_as: str | None = None) -> bytes:
    """Read at most ``MAX_REQUEST_BYTES + 1`` bytes of the regular file ``request``.

    The file is opened once, without following a link and without blocking, and the open
    file itself is checked, so a link or FIFO swapped in after accept()'s lstat is neither
    followed nor waited on. Raises InvalidFile if it is not a regular file now,
    FileNotFoundError if it is gone, OSError for failures of the share. ``shown_as`` is
    the file name the problem names (default: ``request``'s).
    """

    try:
        return read_plain(request, MAX_REQUEST_BYTES)
    except NotPlainFile as exc:
        message = f"is {exc.what}, not a regular file; save the request itself here"
        raise InvalidFile([Problem(shown_as or request.name, None, None, message)]) from exc


def accept(request: Path, config: AgentConfig) -> Accepted | Rejected:
    """Accept ``request`` into a new run folder, or reject it with every reason.

    Raises OSError only for failures of the share itself (not for bad user input).
    """
    project = request.parent
    st = request.lstat()
    if request_kind(request.name) == "rich":
        return reject(request, [RICH_TEXT_PROBLEM.format(name=request.name)])
    if not stat.S_ISREG(st.st_mode):
        return reject(request, [f"{request.name} is not a regular file"])
    problems = _project_problems(project, config.share)
    if problems:
        return reject(request, problems)
    try:
        # lstat said "regular file", but it may have been swapped since: read_request
        # checks the file it actually opens.
        data = read_request(request)
        layer_project = read_project_layer(project / "project.toml", config.targets)
        layer_request = parse_request(data, request.name, config.targets)
        plans = plan_runs(config, project, request.name, data, layer_project, layer_request)
    except InvalidFile as exc:
        return reject(request, [str(p) for p in exc.problems])
    number, run_dir = claim_run_dir(project)
    target = run_dir / "run.request"
    try:
        os.rename(request, target)
    except FileNotFoundError:
        run_dir.rmdir()  # the request vanished; the number stays used, the empty folder goes
        raise
    try:
        moved = read_request(target, shown_as=request.name)  # swapped before the rename?
        if moved != data:  # changed between our read and the rename: validate what we own now
            layer_request = parse_request(moved, request.name, config.targets)
            plans = plan_runs(config, project, request.name, moved, layer_project, layer_request)
    except InvalidFile as exc:
        os.rename(target, request)
        run_dir.rmdir()
        return reject(request, [str(p) for p in exc.problems])
    sweep_id = secrets.token_hex(4) if plans[0].sweep is not None else None
    accepted: list[Accepted] = []
    for plan in plans:
        if accepted:  # the other runs of a sweep: each folder gets the request too
            number, run_dir = claim_run_dir(project)
            atomic_write(run_dir / "run.request", moved)
        info = _first_info(project, number, plan, st, moved)
        info.sweep_id = sweep_id
        runinfo.save(run_dir / "run.info", info)
        accepted.append(Accepted(run_dir, info))
    return replace(accepted[0], more=tuple(accepted[1:]))


def _first_info(project: Path, number: int, plan: Plan, st: os.stat_result, data: bytes) -> RunInfo:
    """Return the run.info of a run just accepted (pure)."""
    effective = plan.effective
    info = RunInfo(
        project=project.name,
        run=number,
        run_id=runinfo.new_run_id(),
        name=effective.name,
        notes=effective.notes,
        client=effective.settings.client,
        host=effective.settings.host,
        submitted_by=_owner(st),
        request_sha256=hashlib.sha256(data).hexdigest(),
        accepted_at=runinfo.now_iso(),
        timeout_s=effective.settings.timeout,
        effective=effective.to_table(),
        history=[{"state": runinfo.ACCEPTED, "at": runinfo.now_iso()}],
    )
    if effective.settings.code_from is not None:
        info.rerun_of = run_number(effective.settings.code_from)
    info.resume_from = effective.settings.resume_from
    info.sweep = plan.sweep
    return info
