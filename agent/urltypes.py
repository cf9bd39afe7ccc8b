"""Kinds of values for notices: Apprise URLs (any scheme in the agent's droprun.toml, web
services only in a project.toml) and the events that send a notice. Pure checks; the
sending is in :mod:`agent.notify`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from agent.tomlsrc import describe
from agent.valuetypes import MAX_STRING, Context, ValueType, _plain_string, _strings, did_you_mean

NOTIFY_EVENTS = ("succeeded", "failed", "timed_out", "cancelled", "error", "stalled")
# Apprise schemes that only talk HTTP(S) to a web service: a project.toml may name these.
# Others (mailto, syslog, dbus, windows, ...) can reach local sockets or files: admin only.
WEB_SCHEMES = frozenset(
    ("json", "jsons", "xml", "xmls", "form", "forms", "ntfy", "ntfys", "slack", "msteams",
     "discord", "tgram", "gotify", "gotifys", "matrix", "matrixs", "mmost", "mmosts", "rocket",
     "rockets", "pover", "pbul", "zulip", "gchat", "apprise", "apprises")
)  # fmt: skip
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://\S*")


def _notify_url(value: object, *, web_only: bool) -> str:
    expected = 'an Apprise URL like "ntfys://ntfy.sh/my-topic"'
    text = _plain_string(value, expected, MAX_STRING)
    match = _URL_RE.fullmatch(text)
    if not match:
        raise ValueError(f"found a string that is not {expected}")
    if not web_only:
        return text
    scheme = match.group(1).lower()
    if scheme not in WEB_SCHEMES:
        raise ValueError(
            f'found the scheme "{scheme}://", expected a web service ('
            + ", ".join(f"{s}://" for s in sorted(WEB_SCHEMES))
            + "); other kinds of URL only in the agent's droprun.toml"
        )
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:
        raise ValueError(f"found a string that is not {expected}") from None
    if not is_public_host(host):
        raise ValueError(
            f'found the host "{host}", expected a service on the network, not this machine'
        )
    return text


def is_public_host(host: str) -> bool:
    """Return False for names and addresses of this machine (loopback, link-local,
    unspecified), True otherwise (pure: no name is resolved)."""
    name = host.strip("[]").lower().rstrip(".")
    if not name or name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return True
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)


def _urls(web_only: bool) -> Callable[[object, Context], tuple[str, ...]]:
    def convert(value: object, context: Context) -> tuple[str, ...]:
        urls = _strings(value, context)
        for number, url in enumerate(urls, start=1):
            try:
                _notify_url(url, web_only=web_only)
            except ValueError as exc:
                raise ValueError(f"item {number}: {exc}") from None
        return urls

    return convert


def _events(value: object, context: Context) -> tuple[str, ...]:
    names = _strings(value, context)
    for number, name in enumerate(names, start=1):
        if name not in NOTIFY_EVENTS:
            raise ValueError(
                f"item {number}: found {describe(name)}, expected one of "
                + ", ".join(f'"{e}"' for e in NOTIFY_EVENTS)
                + did_you_mean(name, NOTIFY_EVENTS)
            )
    return names


NOTIFY_URLS = ValueType("array of Apprise URLs", _urls(web_only=False))
WEB_URLS = ValueType("array of Apprise URLs of web services", _urls(web_only=True))
EVENTS = ValueType("array of states", _events)
