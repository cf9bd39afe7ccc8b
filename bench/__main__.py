"""``python -m bench [--quick | --smoke] [--json FILE] [--only GROUP,...]``: print the table."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.plan import FULL, QUICK, SMOKE, Plan
from bench.report import Row, render, write_json

GROUPS = ("transfer", "runs", "scale", "pages", "fresh", "slurm")


def runner(group: str) -> Callable[[Path, Plan], list[Row]]:
    """Return the ``run_all`` of a scenario group (imported only when it runs)."""
    if group == "transfer":
        from bench.transfer import run_all
    elif group == "runs":
        from bench.runs import run_all
    elif group == "pages":
        from bench.pages import run_all
    elif group == "fresh":
        from bench.freshness import run_all
    elif group == "slurm":
        from bench.slurm import run_all
    else:
        from bench.sharescale import run_all
    return run_all


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller scenarios, under 2 minutes")
    size.add_argument("--smoke", action="store_true", help="tiny scenarios: does it all run?")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the table here")
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help="scenario groups: transfer (1-3), runs (4, 4b, 6), scale (5), pages (7), fresh (8), "
        "slurm (9); default all",
    )
    opts = parser.parse_args(argv)
    opts.groups = [g for g in opts.only.split(",") if g]
    unknown = set(opts.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}; choose from {GROUPS}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios in a temp dir (removed after); print the table."""
    opts = parse(argv)
    if os.geteuid() != 0:
        print("bench: run as root (it starts sshd and logs in as a test user)", file=sys.stderr)
        return 1
    plan = SMOKE if opts.smoke else QUICK if opts.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="droprun-bench-"))
    tmp.chmod(0o755)
    rows: list[Row] = []
    start = time.monotonic()
    try:
        for group in opts.groups:
            began = time.monotonic()
            rows += runner(group)(tmp, plan)
            print(f"bench: {group} done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    rows.sort(key=lambda r: r.scenario[0])  # by scenario number; stable within one
    seconds = time.monotonic() - start
    print(f"droprun benchmarks ({plan.name}, {seconds:.0f} s)\n")
    print(render(rows))
    if opts.json:
        write_json(opts.json, plan.name, rows, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
