"""The benchmark table: one row per measured figure, printed as text and written as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of the table.

    ``droprun`` and ``baseline`` are numbers in ``unit`` (``baseline`` None where there is
    nothing to compare with); ``ratio`` is droprun / baseline; ``met`` None when the row has
    no target or was measured at a scale other than the target's.
    """

    scenario: str
    metric: str
    unit: str
    droprun: float
    baseline: float | None
    target: str
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """droprun / baseline, or None without a baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.droprun / self.baseline


def fmt(value: float | None, unit: str) -> str:
    """Return ``value`` with its unit, in a width-friendly form (``-`` for None)."""
    if value is None:
        return "-"
    if unit == "B":
        for limit, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= limit:
                return f"{value / limit:.2f} {suffix}"
        return f"{value:.0f} B"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    """Return a ratio for the table: three significant digits, or ``-``."""
    if ratio is None:
        return "-"
    return f"{ratio:.3g}" if ratio >= 0.001 else f"{ratio:.2e}"


def render(rows: Sequence[Row]) -> str:
    """Return the rows as an aligned text table."""
    header = ["scenario", "metric", "droprun", "baseline", "ratio", "target", "met?"]
    lines = [header]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(
            [
                r.scenario,
                r.metric,
                fmt(r.droprun, r.unit),
                fmt(r.baseline, r.unit),
                fmt_ratio(r.ratio),
                r.target,
                met,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{r.scenario} {r.metric}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """Return what the figures depend on: CPU count, kernel, python, rsync and ssh versions."""

    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).splitlines()[0].strip()

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsync": first_line(["rsync", "--version"]),
        "ssh": first_line(["ssh", "-V"]),
    }


def write_json(path: Path, mode: str, rows: Sequence[Row], seconds: float) -> None:
    """Write the table (with the ratios and the machine) as JSON to ``path``."""
    data = {
        "mode": mode,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
