"""What the status pages show: ``droprun.html`` (every project), ``results/index.html``
(one project's runs) and ``results/run_N/index.html`` (one run, with its log and curve).

Made from :class:`agent.index.ShareIndex` (no run.info read for the listings); a run's own
page reads that run's files. The frame, style and script are in :mod:`agent.html`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import curves, runinfo
from agent.html import clock, e, href, local_time, newest_first, page, runs_table, state_badge
from agent.index import Rejection, RunSummary, ShareIndex

ROOT_RUNS = 1000  # droprun.html lists this many of the newest runs; each project lists all
LOG_LINES = 200
LOG_TAIL_BYTES = 256 << 10
MAX_OUTPUT_FILES = 500
PAGE_NAME = "index.html"
ROOT_PAGE = "droprun.html"


def rejections_section(rejections: Sequence[Rejection], up: str) -> str:
    """Return the list of rejected requests with what their ``.error`` says ("" if none)."""
    if not rejections:
        return ""
    items = "".join(
        f'<li><a href="{up}{href(r.project, r.name)}">{e(r.project)}/{e(r.name)}</a>'
        f"<pre>{e(r.error)}</pre></li>"
        for r in rejections
    )
    return f"<h2>Requests that were not accepted</h2><ul>{items}</ul>"


def root_page(index: ShareIndex, now: float) -> str:
    """Return ``droprun.html``: every project, rejected requests, the newest runs."""
    rows = []
    for name in sorted(index.projects):
        runs = index.projects[name]
        active = sum(1 for r in runs.values() if r.active)
        last = runs[max(runs)] if runs else None
        link = f'<a href="{href(name)}/results/index.html">{e(name)}</a>' if runs else e(name)
        rows.append(
            f"<tr><td>{link}</td>"
            f'<td class="n">{len(runs)}</td><td class="n">{active}</td>'
            f"<td>{state_badge(last.state) + f' run_{last.run}' if last else ''}</td></tr>"
        )
    all_runs = newest_first(list(index.runs()))
    shown = all_runs[:ROOT_RUNS]
    more = (
        f'<p class="muted">The newest {ROOT_RUNS} of {len(all_runs)} runs; each project\'s '
        "page lists all of its runs.</p>"
        if len(all_runs) > ROOT_RUNS
        else ""
    )
    rejected = [r for name in sorted(index.rejections) for r in index.rejections[name]]
    body = (
        f"<h1>droprun: {e(index.root.name)}</h1>"
        f'<p class="muted">Written {local_time(int(now))} by the droprun agent.</p>'
        "<h2>Projects</h2><table><thead><tr><th>project</th><th>runs</th><th>active</th>"
        f"<th>last run</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{rejections_section(rejected, '')}<h2>Runs</h2>{more}"
        f"{runs_table(shown, now, '')}"
    )
    return page(f"droprun: {index.root.name}", body, reload=any(r.active for r in shown))


def project_page(index: ShareIndex, project: str, now: float) -> str:
    """Return ``<project>/results/index.html``: every run of ``project``."""
    runs = newest_first(list(index.projects.get(project, {}).values()))
    body = (
        f'<p><a href="../../{href(ROOT_PAGE)}">all projects</a></p>'
        f"<h1>{e(project)}</h1>"
        f"{rejections_section(index.rejections.get(project, []), '../../')}"
        f"<h2>Runs</h2>{runs_table(runs, now, '../../')}"
    )
    return page(f"droprun: {project}", body, reload=any(r.active for r in runs))


def log_tail(path: Path) -> list[str]:
    """Return the last LOG_LINES lines of the log at ``path`` ([] if there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - LOG_TAIL_BYTES)
        data = os.pread(fd, LOG_TAIL_BYTES, start)
    finally:
        os.close(fd)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start and lines:
        lines = lines[1:]  # the first one is cut
    return lines[-LOG_LINES:]


def output_files(output: Path) -> list[tuple[str, int]]:
    """Return (path relative to ``output``, size) of the mirrored outputs, at most
    MAX_OUTPUT_FILES, hidden (staging) entries left out, links never followed."""
    found: list[tuple[str, int]] = []
    for folder, dirs, files in os.walk(output):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                size = path.lstat().st_size
            except OSError:
                continue
            found.append((str(path.relative_to(output)), size))
            if len(found) >= MAX_OUTPUT_FILES:
                return found
    return found


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(e(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{e(k)} = {e(v)}" for k, v in value.items())
    return e(value)


def _table(rows: Sequence[tuple[str, ...]], head: Sequence[str] = ()) -> str:
    thead = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{thead if head else ''}<tbody>{body}</tbody></table>"


def run_info_data(run_dir: Path) -> dict[str, Any]:
    """Return the parsed run.info of ``run_dir``. Raises RunInfoError if unreadable."""
    path = run_dir / "run.info"
    text = runinfo.read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise runinfo.RunInfoError(f"{path}: not valid TOML ({exc})") from exc


def run_page(summary: RunSummary, now: float, known: Mapping[str, Any] | None = None) -> str:
    """Return ``results/run_N/index.html``: the run's facts, settings, log, files, curve.

    ``known`` is its run.info as the agent just wrote it (None: read the file).
    """
    run_dir = summary.run_dir
    title = f"{summary.project}/run_{summary.run}"
    problem = ""
    if known is not None:
        data = known
    else:
        try:
            data = run_info_data(run_dir)
        except runinfo.RunInfoError as exc:
            data, problem = {}, f'<p class="error">{e(exc)}</p>'
    facts = [
        (e(k), _value(v)) for k, v in data.items() if not isinstance(v, dict) and k != "history"
    ]
    effective = data.get("effective") or {}
    sources = effective.get("sources") or {}
    settings = [
        (e(k), _value(v), e(sources.get(k, ""))) for k, v in effective.items() if k != "sources"
    ]
    history = [(e(h.get("state")), e(h.get("at"))) for h in data.get("history") or []]
    notices = [(e(k), e(v)) for k, v in (data.get("notify") or {}).items()]
    lines = log_tail(run_dir / "log.log")
    series = curves.read_series(run_dir, lines)
    curve = (
        f'<p class="muted">From {e(series.source)}.</p>{curves.svg(series)}'
        if series is not None
        else '<p class="muted">No metrics yet: write metrics.csv into the output folder, or '
        "print lines like <code>epoch 3/8  loss 0.0769</code>.</p>"
    )
    links = [
        f'<li><a href="{href(name)}">{name}</a></li>'
        for name in ("log.log", "bin.tar.gz", "run.request", "run.info")
        if (run_dir / name).is_file()
    ]
    outputs = [
        f'<li><a href="output/{href(*rel.split("/"))}">{e(rel)}</a> '
        f'<span class="muted">{size:,} bytes</span></li>'
        for rel, size in output_files(run_dir / "output")
    ]
    seconds = summary.seconds(now)
    body = (
        f'<p><a href="../../../{href(ROOT_PAGE)}">all projects</a> / '
        f'<a href="../index.html">{e(summary.project)}</a></p>'
        f"<h1>{e(title)} {state_badge(summary.state)}</h1>{problem}"
        f"<p>{e(summary.name or '')} {e(summary.reason or '')}</p>"
        f"<p>Started {local_time(summary.start_epoch) or '-'}, duration "
        f"{clock(seconds) or '-'}, exit code "
        f"{'-' if summary.exit_code is None else summary.exit_code}.</p>"
        f"<h2>Training curve</h2>{curve}"
        f"<h2>Log (last {LOG_LINES} lines)</h2><pre>{e(chr(10).join(lines))}</pre>"
        f"<h2>Files</h2><ul>{''.join(links)}</ul>"
        f"<h2>Outputs</h2><ul>{''.join(outputs) or '<li class=muted>none yet</li>'}</ul>"
        f"<h2>run.info</h2>{_table(facts)}"
        f"<h2>Effective settings</h2>{_table(settings, ('setting', 'value', 'from'))}"
        f"<h2>History</h2>{_table(history, ('state', 'at'))}"
        + (f"<h2>Notices</h2>{_table(notices, ('event', 'sent'))}" if notices else "")
    )
    return page(f"droprun: {title}", body, reload=summary.active)
