"""``droprun demo``: the example project, run on this machine, start to finish."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from agent import runinfo
from agent.agentfile import load_agent_config

EXAMPLE_PROJECT = "tiny-regression"


def example_share() -> Path:
    """Return the example share shipped in the package (or in a source checkout).

    Raises FileNotFoundError if neither is there.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples" / "share", here.parent / "examples" / "share"):
        if (candidate / EXAMPLE_PROJECT / "bin").is_dir():
            return candidate
    raise FileNotFoundError("the example share is missing from this installation")


def copy_example_share(dest: Path, source: Path | None = None) -> None:
    """Copy the example share (``source``, default :func:`example_share`) to ``dest``.

    Bytecode is left out: pip compiles the installed example's ``bin/*.py`` into
    ``__pycache__/``, which is no part of the example project.
    """
    shutil.copytree(
        source or example_share(),
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


def tree(root: Path, prefix: str = "") -> list[str]:
    """Return the lines of a small ``tree``-style listing of ``root``."""
    lines = []
    entries = sorted(root.iterdir(), key=lambda p: (p.is_file(), p.name))
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        lines.append(
            f"{prefix}{'`-- ' if last else '|-- '}{entry.name}{'/' if entry.is_dir() else ''}"
        )
        if entry.is_dir():
            lines.extend(tree(entry, prefix + ("    " if last else "|   ")))
    return lines


def write_config(root: Path) -> Path:
    """Write the demo's agent config (local host, server folder inside ``root``)."""
    path = root / "droprun.toml"
    path.write_text(
        "# The demo's agent config: the built-in local host, with its 'server' folder here.\n"
        f'share = "{root / "share"}"\n'
        f'state_dir = "{root / "state"}"\n'
        "settle = 0.2\n\n"
        "[hosts.local]\n"
        'kind = "local"\n'
        f'remote_root = "{root / "server"}"\n',
        encoding="utf-8",
    )
    return path


def run_demo(where: Path | None = None) -> int:
    """Copy the example share, drop a request, serve it once, and show what came out.

    Returns 0 if the run succeeded, 1 otherwise.
    """
    from agent.service import make_context, serve

    root = where or Path(tempfile.mkdtemp(prefix="droprun-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    share = root / "share"
    copy_example_share(share)
    project = share / EXAMPLE_PROJECT
    config = load_agent_config(write_config(root))
    shutil.copyfile(project / "run.request.example", project / "run.request")
    print(f"droprun demo in {root}")
    print(f"Dropped {project / 'run.request'}; the agent takes it and runs it here.\n")
    logging.basicConfig(level=logging.INFO, format="  agent: %(message)s", stream=sys.stdout)
    logging.getLogger("sh").setLevel(logging.WARNING)  # it logs every command it starts
    serve(make_context(config, logging.getLogger("droprun.demo")), once=True)

    run_dir = project / "results" / "run_0"
    info = runinfo.load(run_dir / "run.info")
    print(f"\n{share}")
    print("\n".join(tree(share)))
    log_lines = (run_dir / "log.log").read_text(errors="replace").splitlines()
    print(
        f"\nrun_0: {info.state}, {info.duration_s} s on host {info.host!r},"
        f" exit code {info.exit_code}"
    )
    print("last lines of log.log:")
    print("\n".join(f"  {line}" for line in log_lines[-4:]))
    print(f"\nEverything about the run: {run_dir}")
    print(f"Its page, with the training curve: {run_dir / 'index.html'}")
    print(f"Every run on the share: {share / 'droprun.html'}")
    return 0 if info.state == runinfo.SUCCEEDED else 1
