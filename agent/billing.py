"""Billing: GPU-hours and amounts per finished run, ``droprun report``'s totals, and the
monthly ``_droprun/billing/<YYYY-MM>.csv`` files the agent keeps current.

Every figure comes from run.info (through :class:`agent.index.RunSummary`) and the hosts'
``rate_per_gpu_hour`` in droprun.toml. Sums are exact (fractions of seconds and rates) and
rounded only when printed, so a total equals the sum of its runs however it is grouped.

- A run counts in the month (and on the day) it started, in the agent's local time; a run
  that never started counts when it ended.
- GPUs given to a run: run.info's ``gpus`` if recorded, else its ``gpu_names``, else a
  recorded CUDA_VISIBLE_DEVICES; else 1 on a host that lists ``gpus`` (a slot gets one
  id), 0 on a host without.
- Runs that ended in ``error`` (the agent's or the host's failure, not the script's) are
  listed but left out of the totals unless ``count_errors``.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from agent import runinfo
from agent.fsutil import atomic_write
from agent.index import RunSummary
from agent.names import PUBLISH_DIR
from agent.schema import HostConfig

GROUPS = ("client", "project", "host", "month")
NO_CLIENT = "(none)"
MONTH_COLUMNS = (
    "project", "run", "name", "client", "host", "state", "counted", "start", "end",
    "duration_s", "wall_hours", "gpus", "gpu_hours", "rate_per_gpu_hour", "currency", "amount",
)  # fmt: skip


def fixed(value: Fraction, places: int) -> str:
    """Return the non-negative ``value`` rounded half up to ``places`` (> 0) decimals, as
    text (pure, exact)."""
    scaled = value * 10**places
    whole = (scaled.numerator * 2 + scaled.denominator) // (scaled.denominator * 2)
    text = str(whole).rjust(places + 1, "0")
    return f"{text[:-places]}.{text[-places:]}"


def hours(seconds: int | Fraction) -> Fraction:
    """Return ``seconds`` in hours, exactly (pure)."""
    return Fraction(seconds) / 3600


@dataclass(frozen=True)
class BillLine:
    """One finished run as billed."""

    run: RunSummary
    at: int  # epoch it counts at: its start (else its end)
    seconds: int
    gpus: int
    rate: Fraction | None
    currency: str

    @property
    def counted(self) -> bool:
        """False for a run that ended in ``error``: not the client's to pay."""
        return self.run.state != runinfo.ERROR

    @property
    def gpu_seconds(self) -> int:
        """GPUs given to the run times its duration."""
        return self.gpus * self.seconds

    @property
    def amount(self) -> Fraction | None:
        """GPU-hours times the host's rate, None if the host has no rate."""
        return None if self.rate is None else hours(self.gpu_seconds) * self.rate

    @property
    def month(self) -> str:
        """``YYYY-MM`` of the month the run counts in (local time)."""
        return time.strftime("%Y-%m", time.localtime(self.at))

    @property
    def day(self) -> date:
        """The local day the run counts on."""
        return datetime.fromtimestamp(self.at).date()


def gpus_given(run: RunSummary, host: HostConfig | None) -> int:
    """Return how many GPUs ``run`` had (see the module's doc; pure)."""
    if run.gpus is not None:
        return run.gpus
    return 1 if host is not None and host.gpus else 0


def _epoch_of_iso(text: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(text).timestamp()) if text else None
    except ValueError:
        return None


def bill_line(run: RunSummary, hosts: Mapping[str, HostConfig]) -> BillLine | None:
    """Return how ``run`` is billed, None if it has not ended (or cannot be dated)."""
    if not run.terminal:
        return None
    at = run.start_epoch or run.end_epoch or _epoch_of_iso(run.accepted_at)
    if at is None:
        return None
    host = hosts.get(run.host or "")
    rate = None
    if host is not None and host.rate_per_gpu_hour is not None:
        rate = Fraction(Decimal(str(host.rate_per_gpu_hour)))
    currency = (host.currency if host is not None else None) or ""
    seconds = max(0, run.seconds(0) or 0) if run.start_epoch is not None else 0
    return BillLine(run, at, seconds, gpus_given(run, host), rate, currency)


def bill_lines(runs: Iterable[RunSummary], hosts: Mapping[str, HostConfig]) -> list[BillLine]:
    """Return the bill line of every finished run among ``runs``, oldest first."""
    lines = [line for run in runs if (line := bill_line(run, hosts)) is not None]
    return sorted(lines, key=lambda line: (line.at, line.run.project, line.run.run))


def key_of(line: BillLine, by: str) -> str:
    """Return the group ``line`` falls in when grouped ``by`` one of GROUPS (pure)."""
    if by == "client":
        return line.run.client or NO_CLIENT
    if by == "project":
        return line.run.project
    if by == "host":
        return line.run.host or "?"
    return line.month


@dataclass
class Total:
    """The sums of one group: runs, wall seconds, GPU-seconds, amount per currency."""

    key: str
    runs: int = 0
    seconds: int = 0
    gpu_seconds: int = 0
    amounts: dict[str, Fraction] = field(default_factory=dict)

    def add(self, line: BillLine) -> None:
        """Count ``line`` in."""
        self.runs += 1
        self.seconds += line.seconds
        self.gpu_seconds += line.gpu_seconds
        if line.amount is not None:
            self.amounts[line.currency] = self.amounts.get(line.currency, 0) + line.amount


def totals(lines: Iterable[BillLine], by: str, count_errors: bool) -> tuple[list[Total], Total]:
    """Return the total of each group (by key) and the grand total (pure)."""
    groups: dict[str, Total] = {}
    grand = Total("total")
    for line in lines:
        if not line.counted and not count_errors:
            continue
        key = key_of(line, by)
        groups.setdefault(key, Total(key)).add(line)
        grand.add(line)
    return [groups[k] for k in sorted(groups)], grand


def in_period(lines: Iterable[BillLine], start: date | None, end: date | None) -> list[BillLine]:
    """Return the lines whose day is within ``start``..``end`` (both included, None: open)."""
    return [
        line
        for line in lines
        if (start is None or line.day >= start) and (end is None or line.day <= end)
    ]


def _money(amounts: Mapping[str, Fraction]) -> str:
    return " + ".join(f"{fixed(v, 2)} {c}".rstrip() for c, v in sorted(amounts.items())) or "-"


def format_table(groups: list[Total], grand: Total, by: str) -> str:
    """Return the report as an aligned text table (pure)."""
    header = [by.upper(), "RUNS", "WALL H", "GPU H", "AMOUNT"]
    rows = [
        [
            g.key,
            str(g.runs),
            fixed(hours(g.seconds), 2),
            fixed(hours(g.gpu_seconds), 2),
            _money(g.amounts),
        ]
        for g in [*groups, grand]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), *map(line, rows[:-1]), rule, line(rows[-1])]) + "\n"


def format_csv(groups: list[Total], grand: Total, by: str) -> str:
    """Return the report as CSV: one row per group and a ``total`` row; one amount column
    per currency (``amount`` for a rate without one) (pure)."""
    currencies = sorted({c for g in [*groups, grand] for c in g.amounts})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [by, "runs", "wall_hours", "gpu_hours"]
        + [f"amount_{c}" if c else "amount" for c in currencies]
    )
    for g in [*groups, grand]:
        writer.writerow(
            [g.key, g.runs, fixed(hours(g.seconds), 4), fixed(hours(g.gpu_seconds), 4)]
            + [fixed(g.amounts[c], 2) if c in g.amounts else "" for c in currencies]
        )
    return out.getvalue()


def _decimal(value: Fraction) -> str:
    """Return a rate read from a decimal number as that number again (pure)."""
    return str(Decimal(value.numerator) / Decimal(value.denominator))


def _iso(epoch: int | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch).astimezone().isoformat()


def month_row(line: BillLine) -> str:
    """Return the CSV line of one run in a month's billing file (pure)."""
    r, amount = line.run, line.amount
    rate = "" if line.rate is None else _decimal(line.rate)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        [
            *(r.project, r.run, r.name or "", r.client or "", r.host or "", r.state),
            *("yes" if line.counted else "no", _iso(r.start_epoch), _iso(r.end_epoch)),
            *(line.seconds, fixed(hours(line.seconds), 4), line.gpus),
            *(fixed(hours(line.gpu_seconds), 4), rate, line.currency),
            "" if amount is None else fixed(amount, 2),
        ]
    )
    return out.getvalue()


def month_csv(lines: Iterable[BillLine], row: Callable[[BillLine], str] = month_row) -> str:
    """Return the text of a month's billing file: one ``row`` per finished run (pure)."""
    return ",".join(MONTH_COLUMNS) + "\n" + "".join(row(line) for line in lines)


def billing_dir(share: Path) -> Path:
    """Return ``<share>/_droprun/billing``."""
    return share / PUBLISH_DIR / "billing"


def write_months(
    share: Path,
    lines: Iterable[BillLine],
    months: Iterable[str] | None,
    row: Callable[[BillLine], str] = month_row,
) -> int:
    """Write ``<YYYY-MM>.csv`` for ``months`` (None: every month of ``lines``) from
    ``lines``, each made by ``row`` (the agent passes a cached one); a file whose text is
    unchanged is left alone. Returns how many were written.

    Raises OSError if the share cannot be written.
    """
    by_month: dict[str, list[BillLine]] = {}
    for line in lines:
        by_month.setdefault(line.month, []).append(line)
    wanted = sorted(by_month) if months is None else sorted(set(months))
    folder = billing_dir(share)
    written = 0
    for month in wanted:
        path = folder / f"{month}.csv"
        text = month_csv(by_month.get(month, []), row).encode("utf-8")
        try:
            if path.read_bytes() == text:
                continue
        except FileNotFoundError:
            pass
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text, "none")  # made again from run.info at any time
        written += 1
    return written


def parse_day(text: str, *, last: bool = False) -> date:
    """Return the day ``YYYY-MM-DD``, or the first (``last``: the last) day of ``YYYY-MM``.

    Raises ValueError with a message naming the expected form.
    """
    try:
        if len(text) == 7:
            first = datetime.strptime(text, "%Y-%m").date()
            if not last:
                return first
            following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            return date.fromordinal(following.toordinal() - 1)
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        expected = "a day like 2026-03-31 or a month like 2026-03"
        raise ValueError(f"found {text!r}, expected {expected}") from None


def left_out(lines: Iterable[BillLine]) -> str:
    """Return the list of runs left out of the totals because they ended in error (pure)."""
    rows = [
        f"  {line.run.project}/run_{line.run.run}  host {line.run.host or '?'}  "
        f"{datetime.fromtimestamp(line.at):%Y-%m-%d %H:%M}  {fixed(hours(line.seconds), 2)} h  "
        f"{line.run.reason or ''}".rstrip()
        for line in lines
        if not line.counted
    ]
    if not rows:
        return ""
    return (
        "Left out of the totals: ended in error (the agent's or the host's failure, "
        "not the script's); --all counts them:\n" + "\n".join(rows) + "\n"
    )
