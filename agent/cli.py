"""The ``droprun`` command. Exit codes: 0 ok, 1 user error (message, no traceback), 2 usage."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.agentfile import load_agent_config
from agent.problems import UserError

if TYPE_CHECKING:
    from agent.schema import AgentConfig

DEFAULT_CONFIG = "/etc/droprun/droprun.toml"
# --help prints these as they are: plain text, not the reStructuredText of docstrings.
DESCRIPTION = (
    "Drop a run.request file on a NAS share; droprun trains it on a GPU server and files "
    "the results."
)
EPILOG = "exit codes: 0 ok, 1 a problem with your files or settings (explained), 2 bad usage"


def config_path(given: str | None) -> Path:
    """Return the agent config path: ``--config``, ``$DROPRUN_CONFIG``, or the default."""
    return Path(given or os.environ.get("DROPRUN_CONFIG") or DEFAULT_CONFIG)


def load_config(given: str | None) -> AgentConfig:
    """Load the agent config. Raises UserError (with every problem) if it is missing or bad."""
    path = config_path(given)
    if not path.exists():
        raise UserError(f"{path}: no such agent config (give --config or set DROPRUN_CONFIG)")
    return load_agent_config(path)


def run_folder(config: AgentConfig, project: str, run: str) -> Path:
    """Return ``<share>/<project>/results/run_N``. Raises UserError if it does not exist."""
    number = run.removeprefix("run_")
    if not number.isdigit() or "/" in project or project in ("", ".", ".."):
        raise UserError(f"no run {run!r} in project {project!r}")
    folder = config.share / project / "results" / f"run_{int(number)}"
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run")
    return folder


# -- commands ---------------------------------------------------------------------------


def cmd_agent(opts: argparse.Namespace) -> int:
    """Serve the share (``--once``: take what is there, finish it, exit)."""
    import logging

    from agent.service import make_context, serve, terminate_children

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every command it starts
    config = load_config(opts.config)
    log = logging.getLogger("droprun")
    ctx = make_context(config, log)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ctx.request_stop())
    try:
        serve(ctx, once=opts.once)
    finally:
        # An rsync still in flight must not keep the agent alive: its run resumes later.
        terminate_children(log)
    return 0


def cmd_validate(opts: argparse.Namespace) -> int:
    """Check request, project and agent files offline; exit 1 if any has a problem."""
    from agent.agentfile import validate_paths

    config = load_config(opts.config) if opts.config or os.environ.get("DROPRUN_CONFIG") else None
    paths = [Path(p) for p in opts.files]
    problems = validate_paths(paths, config)
    for problem in problems:
        print(problem, file=sys.stderr)
    bad = {p.file for p in problems}
    for path in paths:
        if str(path) not in bad and path.name not in bad:
            print(f"{path}: ok")
    return 1 if problems else 0


def cmd_init(opts: argparse.Namespace) -> int:
    """Write commented templates into a share; never overwrite a file."""
    from agent.templates import agent_template, project_template, request_template

    root = Path(opts.share).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    files = {
        root / "droprun.toml": agent_template(root),
        root / "project.toml.template": project_template(),
        root / "run.request.template": request_template(),
    }
    for path, text in files.items():
        if path.exists():
            print(f"{path}: exists, left as it is")
            continue
        path.write_text(text, encoding="utf-8")
        print(f"{path}: written")
    print(
        f"\nNext: edit {root / 'droprun.toml'}, make a project folder with a bin/ in {root},\n"
        f"and run: droprun agent --config {root / 'droprun.toml'}"
    )
    return 0


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print ``rows`` under ``header`` in aligned columns."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    # One format and one write per table: status prints 10,000 lines.
    sys.stdout.write("".join(line.format(*row).rstrip() + "\n" for row in [header, *rows]))


def cmd_status(opts: argparse.Namespace) -> int:
    """Print a table of runs, or with ``--orphans HOST`` the run dirs no run claims."""
    from agent.status import no_cycle_collection, status_rows

    config = load_config(opts.config)
    if opts.orphans:
        return print_orphans(config, opts.orphans)
    header = ["PROJECT", "RUN", "STATE", "HOST", "START", "DURATION", "EXIT"]
    if opts.sweep is not None:
        header.append("VALUES")
    with no_cycle_collection():
        rows = status_rows(config, opts.project, opts.sweep)
        if opts.sweep is not None and not rows:
            raise UserError(f"no runs of sweep {opts.sweep!r}")
        print_table(header, rows)
    return 0


def print_orphans(config: AgentConfig, host_name: str) -> int:
    """Print the run dirs on ``host_name`` that no active run claims, and how to remove them."""
    from agent.hosts.base import HostError
    from agent.orphans import find_orphans, orphan_rows, removal_hint

    try:
        orphans = find_orphans(config, host_name)
    except HostError as exc:
        raise UserError(f"cannot list the run dirs on {host_name}: {exc}") from exc
    if not orphans:
        print(f"{host_name}: no run dirs that the share does not claim")
        return 0
    print_table(["PATH", "AGE", "SIZE", "RUNNING"], orphan_rows(orphans, time.time()))
    hint = removal_hint(config, host_name, orphans)
    if hint:
        print(f"\nNothing is removed automatically. To remove those that run nothing:\n  {hint}")
    return 0


def cmd_report(opts: argparse.Namespace) -> int:
    """Print runs, wall hours, GPU-hours and amounts of finished runs, grouped."""
    from agent import billing
    from agent.index import ShareIndex

    config = load_config(opts.config)
    try:
        start = billing.parse_day(opts.start) if opts.start else None
        end = billing.parse_day(opts.end, last=True) if opts.end else None
    except ValueError as exc:
        raise UserError(f"--from/--to: {exc}") from None
    runs = list(ShareIndex.build(config.share).runs())
    for run in runs:
        if run.problem:
            print(f"droprun: left out, unreadable: {run.problem}", file=sys.stderr)
    lines = billing.in_period(billing.bill_lines(runs, config.hosts), start, end)
    groups, grand = billing.totals(lines, opts.by, opts.all)
    if opts.csv:
        sys.stdout.write(billing.format_csv(groups, grand, opts.by))
    else:
        period = f"{start or 'the first'} .. {end or 'the last'}"
        print(f"Finished runs by the day they started, {period}, by {opts.by}:\n")
        sys.stdout.write(billing.format_table(groups, grand, opts.by))
    note = "" if opts.all else billing.left_out(lines)
    if note:
        print(f"\n{note}", end="", file=sys.stderr if opts.csv else sys.stdout)
    return 0


def cmd_tail(opts: argparse.Namespace) -> int:
    """Print a run's log; follow it while the run is not terminal (unless ``--no-follow``)."""
    from agent import runinfo

    folder = run_folder(load_config(opts.config), opts.project, opts.run)
    log_path = folder / "log.log"
    offset = 0
    while True:
        if log_path.exists():
            with open(log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            offset += len(chunk)
        if opts.no_follow or runinfo.load(folder / "run.info").terminal:
            return 0
        time.sleep(1.0)


def _drop_into_live_run(opts: argparse.Namespace, name: str, ended: str, effect: str) -> int:
    """Drop (or touch) the file ``name`` into a run folder that has not ended, as a person
    would; ``ended`` is the refusal's end, ``effect`` what the agent then does."""
    from agent import runinfo

    folder = run_folder(load_config(opts.config), opts.project, opts.run)
    if runinfo.load(folder / "run.info").terminal:
        raise UserError(f"{folder}: the run has already ended{ended}")
    (folder / name).touch()
    print(f"{folder / name}: written; the agent {effect} within seconds")
    return 0


def cmd_cancel(opts: argparse.Namespace) -> int:
    """Drop a ``cancel`` file into the run folder, as a person would."""
    return _drop_into_live_run(opts, "cancel", "", "stops the run")


def cmd_sync(opts: argparse.Namespace) -> int:
    """Drop (or touch) a ``sync`` file in the run folder: the agent mirrors the outputs now."""
    return _drop_into_live_run(opts, "sync", "; its outputs are all there", "mirrors the outputs")


def cmd_submit(opts: argparse.Namespace) -> int:
    """Write a valid ``run.request`` into a project folder from KEY=VALUE pairs."""
    from agent.submit import write_request

    config = load_config(opts.config)
    path = write_request(config, opts.project, opts.settings)
    print(f"{path}: written")
    return 0


def cmd_rerun(opts: argparse.Namespace) -> int:
    """Write a request that runs run N again: its archived code, its effective settings."""
    from agent.rerun import SourceError, code_source, rerun_table
    from agent.submit import write_request

    config = load_config(opts.config)
    folder = run_folder(config, opts.project, opts.run)
    ref = folder.name
    try:
        _, info = code_source(folder.parent.parent, ref)
    except SourceError as exc:
        raise UserError(f"{folder}: cannot run it again: {exc}") from None
    path = write_request(config, opts.project, opts.settings, rerun_table(info, ref))
    print(f"{path}: written (runs {ref} again with its archived code)")
    return 0


def cmd_demo(opts: argparse.Namespace) -> int:
    """Run the example project on the local host in a temporary share and show the result."""
    from agent.demo import run_demo

    return run_demo(Path(opts.dir) if opts.dir else None)


class _Version(argparse.Action):
    """``--version``, the version looked up only when asked (a lookup costs every command
    50 ms of start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import agent

        print(f"droprun {agent.__version__}")
        parser.exit()


def make_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every ``droprun`` command."""
    parser = argparse.ArgumentParser(prog="droprun", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: object, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if name not in ("init", "demo"):
            p.add_argument(
                "--config", help=f"agent config (default $DROPRUN_CONFIG or {DEFAULT_CONFIG})"
            )
        return p

    p = command("agent", cmd_agent, "serve the share")
    p.add_argument("--once", action="store_true", help="take the requests there now, finish, exit")
    p = command("validate", cmd_validate, "check request, project.toml and droprun.toml files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = command("init", cmd_init, "write commented templates into a share")
    p.add_argument("share", metavar="SHARE")
    p = command("status", cmd_status, "list runs")
    p.add_argument("project", nargs="?", metavar="PROJECT")
    p.add_argument("--sweep", metavar="ID", help="only the runs of this sweep (its sweep_id)")
    p.add_argument(
        "--orphans",
        metavar="HOST",
        help="list run dirs on HOST that no active run on the share claims (never removes)",
    )
    p = command("report", cmd_report, "runs, hours, GPU-hours and amounts of finished runs")
    p.add_argument("--from", dest="start", metavar="DATE", help="first day (or month) counted")
    p.add_argument("--to", dest="end", metavar="DATE", help="last day (or month) counted")
    p.add_argument("--by", choices=("client", "project", "host", "month"), default="client")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--all", action="store_true", help="count runs that ended in error too")
    p = command("tail", cmd_tail, "print a run's log, following it while it runs")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--no-follow", action="store_true", help="print what there is and exit")
    p = command("cancel", cmd_cancel, "cancel a run")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("run", metavar="RUN")
    p = command("sync", cmd_sync, "mirror a running run's outputs to the share now")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("run", metavar="RUN")
    p = command("submit", cmd_submit, "write a run.request into a project folder")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p = command("rerun", cmd_rerun, "write a request that runs a run again with its archived code")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("run", metavar="RUN")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings to change")
    p = command("demo", cmd_demo, "run the example project on this machine and show the result")
    p.add_argument("--dir", help="where to make the demo share (default: a new temporary folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``droprun`` command line; return the exit code."""
    opts = make_parser().parse_args(argv)
    try:
        return int(opts.func(opts))
    except UserError as exc:
        print(f"droprun: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
