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
    assert {row["scenario"][0] for row in data["rows"]} == set("1234567")
    for row in data["rows"]:
        assert row["droprun"] >= 0
        assert row["ratio"] is None or row["ratio"] >= 0
