"""The benchmark runs end to end (tiny sizes) and prints its table; no figure is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_smoke_prints_every_scenario(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(line for line in done.stdout.splitlines() if line.startswith("scenario"))
    columns = ["scenario", "metric", "droprun", "baseline", "ratio", "target", "met?"]
    assert header.split() == columns
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke"
    assert {row["scenario"][0] for row in data["rows"]} == set("123456789")
    for row in data["rows"]:
        assert row["droprun"] >= 0
        assert row["ratio"] is None or row["ratio"] >= 0


BLOCK_TEST_EXTRAS = "import sys\nsys.modules['pytest'] = sys.modules['hypothesis'] = None\n"


def test_bench_and_its_test_bed_need_no_test_extras():
    # A plain `pip install droprun` has no pytest: `python -m bench` must still run there.
    code = BLOCK_TEST_EXTRAS + (
        "import bench.__main__, bench.runs, bench.sharescale, bench.sshstart, bench.transfer\n"
        "import bench.slurm\n"
        "from bench.tools import testbed\n"
        "bed = testbed()\n"
        "import testbed_slurm\n"
        "try:\n"
        "    bed.require_tool('droprun-no-such-tool')\n"
        "except bed.TestbedError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "droprun-no-such-tool is not installed; install it with: apt-get" in done.stdout
    help_code = BLOCK_TEST_EXTRAS + (
        "sys.argv = ['bench', '--help']\n"
        "import runpy\n"
        "runpy.run_module('bench', run_name='__main__')\n"
    )
    help_ = subprocess.run(
        [sys.executable, "-c", help_code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_.returncode == 0, help_.stderr
    assert help_.stdout.startswith("usage: python -m bench")
