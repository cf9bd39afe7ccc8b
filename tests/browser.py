"""Headless Chromium for the status pages (recipe in TESTBED.md), and readers of what it gives."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSER_DEADLINE = 60.0


def chromium() -> str:
    """Return the chromium program; fail the test if it is missing."""
    found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium is not installed; install it with: apt-get install -y chromium")
    return found


def run_chromium(*args: str) -> str:
    """Run headless chromium with ``args`` and its own throw-away profile; return stdout."""
    with tempfile.TemporaryDirectory(prefix="drt-chromium-") as profile:
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={profile}", *args]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, timeout=BROWSER_DEADLINE)
    if proc.returncode != 0:
        pytest.fail(f"chromium exited with {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode("utf-8", errors="replace")


def dump_dom(page: Path, fragment: str = "") -> str:
    """Return the DOM of ``page`` (opened as file://) after its own script ran."""
    return run_chromium("--dump-dom", page.as_uri() + fragment)


def screenshot(page: Path, out: Path, size: str = "1200,800") -> Path:
    """Write a PNG of ``page`` as chromium shows it; return its path."""
    run_chromium(f"--screenshot={out}", f"--window-size={size}", page.as_uri())
    return out


def png_colours(path: Path) -> int:
    """Return how many distinct pixel values the (8-bit, non-interlaced) PNG at ``path`` has."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG type {depth}/{colour}"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous, seen = bytearray(stride), set()
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        seen.update(bytes(line[i : i + bpp]) for i in range(0, stride, bpp * 7))
        previous = line
    return len(seen)


@dataclass
class Row:
    """One row of a page's runs table."""

    cells: list[str] = field(default_factory=list)
    hidden: bool = False


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.scripts = 0
        self.polylines: dict[str, int] = {}
        self.pre: list[str] = []
        self.title = ""
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in.append("runs" if "runs" in (a.get("class") or "") else "other")
        elif tag == "tr" and self._in[-1:] == ["runs"] and "data-q" in a:
            self.rows.append(Row(hidden="hidden" in a))
        elif tag == "td" and self._in[-1:] == ["runs"] and self.rows:
            self.rows[-1].cells.append("")
        elif tag == "script":
            self.scripts += 1
        elif tag == "polyline":
            self.polylines[a.get("data-series") or ""] = len((a.get("points") or "").split())
        elif tag in ("pre", "title"):
            self._in.append(tag)
            self.pre.append("") if tag == "pre" else None

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._in[-1:] == ["runs"] and self.rows and self.rows[-1].cells:
            self.rows[-1].cells[-1] = self.rows[-1].cells[-1].strip()
        if tag in ("table", "pre", "title") and self._in:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        where = self._in[-1:]
        if where == ["runs"] and self.rows and self.rows[-1].cells:
            self.rows[-1].cells[-1] += data
        elif where == ["pre"]:
            self.pre[-1] += data
        elif where == ["title"]:
            self.title += data


def parse(dom: str) -> _Tables:
    """Return the runs table rows, scripts, chart polylines, <pre> texts and title of ``dom``."""
    parser = _Tables()
    parser.feed(dom)
    return parser
