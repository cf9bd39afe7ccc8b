"""Names on the share: which files are requests, cancels or junk, which folders are projects.

The one place that decides it, for the intake's scans, the watcher's events, ``validate``
and the pages (pure functions, no I/O).

People save files the way their tools do: Windows hides known extensions, so a text file
renamed to ``run.request`` is really ``run.request.txt``; TextEdit and Word save rich text
by default. So ``*.request.txt`` is a request, ``cancel.txt`` a cancel, and a
``*.request.rtf`` (``.docx``, ``.pages``) is answered with an ``.error`` saying to save it
as plain text.
"""

from __future__ import annotations

from typing import Literal

REQUEST_SUFFIX = ".request"
PLAIN_SUFFIXES = (REQUEST_SUFFIX, REQUEST_SUFFIX + ".txt")
RICH_SUFFIXES = tuple(REQUEST_SUFFIX + ext for ext in (".rtf", ".rtfd", ".docx", ".doc", ".pages"))
CANCEL_NAMES = ("cancel", "cancel.txt")
SYNC_NAMES = ("sync", "sync.txt")  # in a run folder: mirror the outputs now
# At the share root, reserved for what the agent publishes (billing files, ...).
PUBLISH_DIR = "_droprun"
JUNK_NAMES = frozenset(
    {".DS_Store", "Thumbs.db", "desktop.ini", "@eaDir", "#recycle", "#snapshot", ".droprun"}
)

RequestKind = Literal["plain", "rich"]


def is_junk(name: str) -> bool:
    """Return True for files that file browsers, editors or the NAS leave behind."""
    return (
        name in JUNK_NAMES
        or name.startswith(("._", "~$", ".#", ".~"))
        or name.endswith(("~", ".swp", ".swo", ".swx", ".tmp"))
        or (name.startswith("#") and name.endswith("#"))
    )


def request_kind(name: str) -> RequestKind | None:
    """Return "plain" for a request the agent reads, "rich" for one saved as rich text (it
    gets an ``.error``), None for any other file. Suffixes are matched in any case."""
    if name.startswith(".") or is_junk(name):
        return None
    lower = name.lower()
    if lower.endswith(PLAIN_SUFFIXES):
        return "plain"
    if lower.endswith(RICH_SUFFIXES):
        return "rich"
    return None


def is_request_name(name: str) -> bool:
    """Return True if the agent takes (or answers) a file called ``name`` in a project."""
    return request_kind(name) is not None


def is_cancel_name(name: str) -> bool:
    """Return True if a file called ``name`` in a run folder cancels the run."""
    return name in CANCEL_NAMES


def is_sync_name(name: str) -> bool:
    """Return True if a file called ``name`` in a run folder asks for a mirror now."""
    return name in SYNC_NAMES


def is_project_name(name: str) -> bool:
    """Return True if a folder called ``name`` directly under the share may be a project."""
    return not name.startswith(".") and not is_junk(name) and name != PUBLISH_DIR
