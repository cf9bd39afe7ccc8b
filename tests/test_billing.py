"""``droprun report`` and the billing files against sums computed here from the run.info files."""

from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
import tomllib
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent import billing, runinfo
from agent.agentfile import load_agent_config
from agent.index import ShareIndex
from agent.runinfo import RunInfo

from shares import REPO, drop, make_project, run_once, write_config

TZ = "Europe/Berlin"
CLIENTS = ("acme", "globex", "initech", None)  # None: a run without a client
RATES = {"gpu1": (Fraction(12, 5), "EUR"), "local": None}
STATES = ("succeeded", "succeeded", "succeeded", "failed", "timed_out", "cancelled", "error")


def epoch(day: str, tz: ZoneInfo) -> int:
    """Return the epoch of ``YYYY-MM-DD HH:MM`` in ``tz``."""
    return int(datetime.strptime(day, "%Y-%m-%d %H:%M").replace(tzinfo=tz).timestamp())


def generated_share(root: Path, count: int = 200) -> Path:
    """Write a share of ``count`` finished runs (and two still going) over three months,
    four clients and two hosts, with every way run.info records GPUs; return the config."""
    config = write_config(
        root,
        host_extra="gpus = []\n"
        "[hosts.gpu1]\nkind = 'ssh'\naddress = '127.0.0.1'\nuser = 'nobody'\n"
        "gpus = ['0', '1']\nslots = 2\nrate_per_gpu_hour = 2.4\ncurrency = 'EUR'\n",
    )
    share = root / "share"
    rng = random.Random(17)
    tz = ZoneInfo(TZ)
    projects = [make_project(share, name, {"run.sh": ""}) for name in ("vision", "nlp", "audio")]
    starts = [epoch(f"2026-{m:02d}-{d:02d} 12:00", tz) for m in (1, 2, 3) for d in (2, 14, 27)]
    # The month boundary: started late on the 31st (local time), ended on the 1st; and
    # started just after midnight on March 1st, local time (still February in UTC).
    edge = [epoch("2026-01-31 23:30", tz), epoch("2026-03-01 00:30", tz)]
    for i in range(count + 2):
        project = projects[i % 3]
        n = len(list((project / "results").glob("run_*"))) if (project / "results").exists() else 0
        run_dir = project / "results" / f"run_{n}"
        run_dir.mkdir(parents=True)
        start = edge[i % 2] if i < 10 else rng.choice(starts) + rng.randrange(0, 86400)
        duration = rng.randrange(1, 20 * 3600)
        host = "gpu1" if i % 5 else "local"
        state = STATES[i % len(STATES)] if i < count else "running"
        info = RunInfo(
            project=project.name,
            run=n,
            state=state,
            name=f'try "{i}", with a comma' if i % 7 == 0 else f"try {i}",
            client=CLIENTS[i % 4],
            host=host,
            start_epoch=start,
            start_time=runinfo.date_string(start),
            effective={"host": host, "env": {}},
        )
        if state != "running":
            info.end_epoch, info.duration_s = start + duration, duration
        if i % 11 == 3 and i < count:  # an error before the start: never ran
            info.state, info.start_epoch, info.duration_s = "error", None, None
        if i % 4 == 1:
            info.gpu_names = ["NVIDIA A100"] * rng.randrange(1, 4)
        if i % 6 == 2:
            info.effective["env"] = {"CUDA_VISIBLE_DEVICES": "0,1,2"}
        text = info.to_toml()
        if i % 9 == 4:  # the count, as run.info's gpus key records it
            text = text.replace("\nhost = ", f"\ngpus = {rng.randrange(0, 5)}\nhost = ", 1)
        (run_dir / "run.info").write_text(text)
    return config


def expected_gpus(data: dict, host: str) -> int:
    """GPUs given to a run, from its parsed run.info, as the report documents it."""
    if isinstance(data.get("gpus"), int):
        return data["gpus"]
    if data.get("gpu_names"):
        return len(data["gpu_names"])
    devices = data.get("effective", {}).get("env", {}).get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return len(devices.split(","))
    return 1 if host == "gpu1" else 0


def rounded(value: Fraction, places: int) -> str:
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return str(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def independent_totals(share: Path, by: str, count_errors: bool) -> dict[str, list[str]]:
    """Sum every figure straight from the run.info files; return CSV rows by key."""
    tz = ZoneInfo(TZ)
    sums: dict[str, list] = {}
    for path in share.glob("*/results/run_*/run.info"):
        data = tomllib.loads(path.read_text())
        if data["state"] not in runinfo.TERMINAL or (data["state"] == "error" and not count_errors):
            continue
        at = data.get("start_epoch", data.get("end_epoch"))
        if at is None:
            continue
        seconds = data.get("duration_s", 0) if "start_epoch" in data else 0
        gpu_seconds = expected_gpus(data, data["host"]) * seconds
        key = {
            "client": data.get("client", "(none)"),
            "project": data["project"],
            "host": data["host"],
            "month": datetime.fromtimestamp(at, tz).strftime("%Y-%m"),
        }[by]
        for k in (key, "total"):
            row = sums.setdefault(k, [0, 0, 0, None])  # no amount unless a rate applies
            row[0] += 1
            row[1] += seconds
            row[2] += gpu_seconds
            if RATES[data["host"]]:
                amount = Fraction(gpu_seconds, 3600) * RATES[data["host"]][0]
                row[3] = amount if row[3] is None else row[3] + amount
    return {
        k: [
            str(r[0]),
            rounded(Fraction(r[1], 3600), 4),
            rounded(Fraction(r[2], 3600), 4),
            "" if r[3] is None else rounded(r[3], 2),
        ]
        for k, r in sums.items()
    }


def report(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent", "report", "--config", str(config), *args]
    env = {**os.environ, "TZ": TZ}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=True)


@pytest.mark.parametrize("by", billing.GROUPS)
def test_report_totals_equal_the_run_info_files(tmp_path, by):
    config = generated_share(tmp_path)
    share = tmp_path / "share"
    for count_errors in (False, True):
        out = report(config, "--by", by, "--csv", *(["--all"] if count_errors else []))
        rows = list(csv.reader(io.StringIO(out.stdout)))
        assert rows[0] == [by, "runs", "wall_hours", "gpu_hours", "amount_EUR"]
        got = {row[0]: row[1:] for row in rows[1:]}
        expected = independent_totals(share, by, count_errors)
        assert got == expected
        errors = [p for p in share.glob("*/results/*/run.info") if '"error"' in p.read_text()]
        assert list(got)[-1] == "total"
        assert got["total"][0] == str(200 if count_errors else 200 - len(errors))
        if not count_errors:
            assert "Left out of the totals" in out.stderr
    rows = list(csv.reader(io.StringIO(report(config, "--by", "month", "--csv").stdout)))
    assert [row[0] for row in rows[1:]] == ["2026-01", "2026-02", "2026-03", "total"]


def test_report_period_and_table(tmp_path):
    config = generated_share(tmp_path)
    share = tmp_path / "share"
    february = report(config, "--from", "2026-02", "--to", "2026-02", "--by", "month", "--csv")
    rows = list(csv.reader(io.StringIO(february.stdout)))
    expected = independent_totals(share, "month", False)
    assert rows[1] == ["2026-02", *expected["2026-02"]]
    assert rows[2] == ["total", *expected["2026-02"]]
    table = report(config, "--by", "client").stdout
    assert "acme" in table and "(none)" in table and "EUR" in table
    assert "Left out of the totals" in table
    bad = subprocess.run(
        [sys.executable, "-m", "agent", "report", "--config", str(config), "--from", "Feb"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "--from/--to" in bad.stderr and "2026-03" in bad.stderr
    broken = share / "nlp" / "results" / "run_999"
    broken.mkdir()
    (broken / "run.info").write_text("format = 1\nstate = ")
    assert "left out, unreadable" in report(config, "--csv").stderr


def test_month_files_have_one_row_per_finished_run(tmp_path):
    config_path = generated_share(tmp_path)
    config = load_agent_config(config_path)
    lines = billing.bill_lines(ShareIndex.build(config.share).runs(), config.hosts)
    assert billing.write_months(config.share, lines, None) >= 3
    assert billing.write_months(config.share, lines, None) == 0  # unchanged: not rewritten
    files = sorted(billing.billing_dir(config.share).glob("*.csv"))
    rows = [row for f in files for row in csv.DictReader(f.open())]
    finished = [
        p for p in config.share.glob("*/results/run_*/run.info") if "running" not in p.read_text()
    ]
    assert len(rows) == len(finished) == 200
    quoted = next(r for r in rows if r["name"].startswith('try "0"'))
    assert quoted["name"] == 'try "0", with a comma'
    assert {r["counted"] for r in rows if r["state"] == "error"} == {"no"}
    # A run that started on January 31st and ended on February 1st is January's.
    january = list(csv.DictReader((billing.billing_dir(config.share) / "2026-01.csv").open()))
    assert any(r["start"][8:10] == "31" and r["end"][5:10] == "02-01" for r in january)


def test_the_agent_keeps_the_month_file_current(tmp_path):
    config = write_config(tmp_path)
    share = tmp_path / "share"
    project = make_project(share, "p", {"run.sh": "#!/bin/sh\necho hi\n"}, 'client = "acme"\n')
    drop(project, 'name = "billed"\n')
    drop(project, 'name = "for globex"\nclient = "globex"\n', "second.request.txt")
    run_once(config)
    files = list(billing.billing_dir(share).glob("*.csv"))
    assert len(files) == 1
    rows = list(csv.DictReader(files[0].open()))
    assert sorted((r["name"], r["client"], r["state"]) for r in rows) == [
        ("billed", "acme", "succeeded"),
        ("for globex", "globex", "succeeded"),
    ]
    assert runinfo.load(project / "results/run_0/run.info").client in ("acme", "globex")
