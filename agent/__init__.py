"""droprun: drop a run.request on a NAS share, train on a GPU server, file the results.

The modules follow the data flow (docs/design.md §6 and the README's map of the code):

- ``tomlsrc``, ``valuetypes``, ``schema``, ``settings``, ``agentfile``: settings files
  -> validated run settings and agent config
- ``names``, ``share``, ``plan``, ``runinfo``: requests on the share -> claimed run records
- ``scheduler``, ``runner``: where and when a run goes, and its states
- ``hosts/``: everything that runs commands on a host (kinds, transports, rsync, launcher)
- ``watcher``, ``service``: the long-running agent; ``cli``: the ``droprun`` command
"""


def __getattr__(name: str) -> str:
    """Return ``agent.__version__`` (from pyproject.toml via the installed metadata, or
    "unknown" in a source tree never installed), looked up on first use: importing
    importlib.metadata costs every ``droprun`` command 50 ms it mostly does not need."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("droprun")
    except PackageNotFoundError:
        return "unknown"
