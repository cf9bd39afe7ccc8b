"""The frame of every status page: one self-contained HTML file, no server, no network.

The style and a few lines of script are inline; a Content-Security-Policy allows only that
one script (by its hash), inline styles and ``data:`` images, so nothing a share user writes
into a log or a name can run or load anything, even if escaping were ever missed. The
table is complete without the script; the script sorts columns and filters rows by the box
or the ``#q=`` fragment. A page reloads every 10 s only while something on it is active.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from html import escape
from urllib.parse import quote

from agent.index import RunSummary

RELOAD_SECONDS = 10
ACTIVE_CLASS = "active"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222;background:#fff}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.2em .6em;text-align:left;
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4;cursor:pointer}
td.n{text-align:right}.state{font-weight:600;padding:0 .4em;border-radius:3px}
.succeeded{color:#fff;background:#2e7d32}.failed{color:#fff;background:#c62828}
.timed_out{color:#fff;background:#ef6c00}.cancelled{color:#fff;background:#757575}
.error{color:#fff;background:#6a1b9a}.active{color:#fff;background:#1565c0}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:40em;white-space:pre-wrap}
input#q{font-size:1em;padding:.2em;width:16em}.muted{color:#777}
figure.chart{margin:.4em 0}svg .frame{fill:none;stroke:#ccc}
svg polyline{fill:none;stroke:#1565c0;stroke-width:1.5}
svg text{font-size:11px;fill:#555}svg .y{text-anchor:end}svg .x1{text-anchor:end}
"""

SCRIPT = """
var t=document.querySelector('table.runs'),q=document.getElementById('q');
if(t&&q){var b=t.tBodies[0];
function f(){var w=q.value.toLowerCase().split(/\\s+/).filter(Boolean);
for(var r of b.rows)r.hidden=!w.every(function(x){return r.dataset.q.indexOf(x)>=0});}
function h(){var m=location.hash.match(/q=([^&]*)/);q.value=m?decodeURIComponent(m[1]):'';f();}
q.oninput=function(){f();try{history.replaceState(null,'','#q='+encodeURIComponent(q.value))}catch(e){}};
window.onhashchange=h;h();
t.tHead.onclick=function(e){var s=e.target.dataset,c=e.target.cellIndex,d=s.d=s.d=='1'?'-1':'1';
function k(r){var x=r.cells[c];return x.dataset.v!==undefined?+x.dataset.v:x.textContent}
Array.from(b.rows).sort(function(x,y){var a=k(x),z=k(y);return d*(a<z?-1:a>z?1:0)})
.forEach(function(r){b.appendChild(r)});};}
"""
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; script-src 'sha256-{SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "img-src data:"
)


def e(value: object) -> str:
    """Return ``value`` as text escaped for HTML (also inside attributes)."""
    return escape("" if value is None else str(value), quote=True)


def href(*parts: str) -> str:
    """Return a relative link of path ``parts``, each quoted, escaped for an attribute."""
    return e("/".join(quote(p, safe="") for p in parts))


def page(title: str, body: str, *, reload: bool) -> str:
    """Return a whole page: ``body`` (HTML) under ``title``; reloading every 10 s if ``reload``."""
    refresh = f'<meta http-equiv="refresh" content="{RELOAD_SECONDS}">' if reload else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{refresh}<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"{body}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def state_badge(state: str) -> str:
    """Return a run's state, coloured by its class."""
    cls = (
        state
        if state in ("succeeded", "failed", "timed_out", "cancelled", "error")
        else (ACTIVE_CLASS)
    )
    return f'<span class="state {cls}">{e(state)}</span>'


def clock(seconds: int | None) -> str:
    """Return ``seconds`` as ``h:mm:ss`` ("" for None)."""
    if seconds is None:
        return ""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def local_time(epoch: int | None) -> str:
    """Return ``epoch`` as the agent's local ``YYYY-MM-DD HH:MM`` ("" for None)."""
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


COLUMNS = ("project", "run", "name", "client", "state", "host", "start", "duration", "exit")


def runs_table(runs: Sequence[RunSummary], now: float, up: str) -> str:
    """Return the runs table with its filter box; links go ``up`` to the share root
    (``""`` from droprun.html, ``"../../"`` from a project's results/index.html)."""
    rows = []
    for r in runs:
        link = f"{up}{href(r.project)}/results/run_{r.run}/index.html"
        words = " ".join(str(w) for w in (r.project, f"run_{r.run}", r.name, r.client, r.state,
                                          r.host, r.problem) if w)  # fmt: skip
        seconds = r.seconds(now)
        state = state_badge(r.state) + (f' <span class="muted">{e(r.problem)}</span>'
                                        if r.problem else "")  # fmt: skip
        rows.append(
            f'<tr data-q="{e(words.lower())}">'
            f'<td><a href="{up}{href(r.project)}/results/index.html">{e(r.project)}</a></td>'
            f'<td data-v="{r.run}"><a href="{link}">run_{r.run}</a></td>'
            f"<td>{e(r.name)}</td><td>{e(r.client)}</td><td>{state}</td><td>{e(r.host)}</td>"
            f'<td data-v="{r.start_epoch or 0}">{local_time(r.start_epoch)}</td>'
            f'<td class="n" data-v="{-1 if seconds is None else seconds}">{clock(seconds)}</td>'
            f'<td class="n">{"" if r.exit_code is None else r.exit_code}</td></tr>'
        )
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    return (
        '<p><label>Filter: <input id="q" type="search" placeholder="e.g. failed, a client">'
        "</label></p>\n"
        f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def newest_first(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """Return ``runs`` newest first: by accepted time, then project and run number."""
    return sorted(runs, key=lambda r: (r.accepted_at or "", r.project, r.run), reverse=True)
