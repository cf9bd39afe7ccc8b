"""Training curves as inline SVG, from a run's metrics file or, without one, its log lines.

The convention (see README): a script writes ``metrics.csv`` (a header row of names, then
one row per step) or ``metrics.jsonl`` (one JSON object per step) into its output_dir;
droprun mirrors it into ``results/run_N/output/`` like any output. The x axis is the
``step``, ``epoch`` or ``iter`` column if there is one, else the row number; every other
numeric column is a curve. Without such a file, log lines like ``epoch 3/8  loss 0.0769``
or ``loss=0.07`` give the points. Pure functions, apart from :func:`read_series`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

from agent.fsutil import read_plain

MAX_BYTES = 16 << 20  # a metrics file is read up to this size
MAX_POINTS = 2000  # a longer curve is thinned to this many points (evenly)
MAX_SERIES = 6
X_NAMES = ("step", "epoch", "iter", "iteration")
METRIC_WORD = re.compile(r"loss|acc|err|score|ppl|perplexity|reward|f1|bleu|iou|auc", re.I)
PAIR = re.compile(
    r"(?<![\w.-])([A-Za-z][\w.-]*?)(?:\s*[=:]\s*|\s+)"
    r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:/\d+)?(?![\w.])"
)


@dataclass(frozen=True)
class Series:
    """Curves that share an x axis: ``x`` values and named ``y`` columns (NaN: no value)."""

    source: str
    x_name: str
    x: list[float]
    ys: dict[str, list[float]]


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def from_rows(rows: list[dict[str, object]], source: str) -> Series | None:
    """Return the series of ``rows`` (one dict per step), None if nothing is numeric."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names and _number(row[k]) is not None]
    if not rows or not names:
        return None
    x_name = next((n for n in names if n.lower() in X_NAMES), "")
    x = []
    for i, row in enumerate(rows, start=1):
        value = _number(row.get(x_name)) if x_name else None
        x.append(float(i) if value is None else value)
    ys = {
        name: [v if (v := _number(row.get(name))) is not None else math.nan for row in rows]
        for name in names
        if name != x_name
    }
    ys = dict(list(ys.items())[:MAX_SERIES])
    return Series(source, x_name or "row", x, ys) if ys else None


def parse_csv(text: str) -> Series | None:
    """Return the series of a ``metrics.csv`` text."""
    return from_rows(list(csv.DictReader(io.StringIO(text))), "metrics.csv")


def parse_jsonl(text: str) -> Series | None:
    """Return the series of a ``metrics.jsonl`` text (lines that are not objects are skipped)."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return from_rows(rows, "metrics.jsonl")


def parse_log(lines: list[str]) -> Series | None:
    """Return the series of the metric lines of a log: lines with a ``name value`` or
    ``name=value`` pair whose name says metric (loss, acc...)."""
    rows: list[dict[str, object]] = []
    for line in lines:
        pairs = dict(PAIR.findall(line))
        if any(METRIC_WORD.search(name) for name in pairs):
            rows.append(pairs)
    return from_rows(rows, "log.log")


def read_series(run_dir: Path, log_lines: list[str]) -> Series | None:
    """Return the curves of the run in ``run_dir``: its mirrored metrics file, else its log."""
    for name, parse in (("metrics.csv", parse_csv), ("metrics.jsonl", parse_jsonl)):
        try:
            data = read_plain(run_dir / "output" / name, MAX_BYTES)
        except OSError:  # missing, a link, a FIFO...: not a metrics file
            continue
        series = parse(data[:MAX_BYTES].decode("utf-8", errors="replace"))
        if series is not None:
            return series
    return parse_log(log_lines)


def _thin(count: int) -> list[int]:
    """Return the indexes kept of ``count`` points: all, or MAX_POINTS evenly spread."""
    if count <= MAX_POINTS:
        return list(range(count))
    step = (count - 1) / (MAX_POINTS - 1)
    return sorted({round(i * step) for i in range(MAX_POINTS)})


def _label(value: float) -> str:
    return f"{value:.4g}"


def svg(series: Series, width: int = 640, height: int = 180) -> str:
    """Return one inline SVG chart per curve of ``series``, each with its own y range."""
    pad_l, pad_r, pad_t, pad_b = 56, 10, 20, 22
    keep = _thin(len(series.x))
    xs = [series.x[i] for i in keep]
    x0, x1 = min(xs), max(xs)
    charts = []
    for name, values in series.ys.items():
        points = [(series.x[i], values[i]) for i in keep if not math.isnan(values[i])]
        if not points:
            continue
        ys = [y for _, y in points]
        y0, y1 = min(ys), max(ys)

        def px(x: float, lo: float = x0, hi: float = x1) -> float:
            return pad_l + (x - lo) / ((hi - lo) or 1) * (width - pad_l - pad_r)

        def py(y: float, lo: float = y0, hi: float = y1) -> float:
            return height - pad_b - (y - lo) / ((hi - lo) or 1) * (height - pad_t - pad_b)

        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        n = escape(name)
        charts.append(
            f'<figure class="chart"><svg viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{n}">'
            f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" '
            f'height="{height - pad_t - pad_b}" class="frame"/>'
            f'<text x="{pad_l}" y="14" class="title">{n}</text>'
            f'<text x="{pad_l - 4}" y="{pad_t + 8}" class="y">{_label(y1)}</text>'
            f'<text x="{pad_l - 4}" y="{height - pad_b}" class="y">{_label(y0)}</text>'
            f'<text x="{pad_l}" y="{height - 6}" class="x0">{_label(x0)}</text>'
            f'<text x="{width - pad_r}" y="{height - 6}" class="x1">'
            f"{escape(series.x_name)} {_label(x1)}</text>"
            f'<polyline data-series="{n}" points="{coords}"/></svg></figure>'
        )
    return "".join(charts)
