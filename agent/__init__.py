"""droprun: drop a run.request on a NAS share, train on a GPU server, file the results.

The modules follow the data flow (docs/design.md §6 and the README's map of the code):

- ``tomlsrc``, ``valuetypes``, ``schema``, ``settings``, ``agentfile``: settings files
  -> validated run settings and agent config
- ``names``, ``share``, ``plan``, ``runinfo``: requests on the share -> claimed run records
- ``scheduler``, ``runner``: where and when a run goes, and its states
- ``hosts/``: everything that runs commands on a host (kinds, transports, rsync, launcher)
- ``watcher``, ``service``: the long-running agent; ``cli``: the ``droprun`` command
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("droprun")  # one place: pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
