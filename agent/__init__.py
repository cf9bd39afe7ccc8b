"""droprun: drop a run.request on a NAS share, train on a GPU server, file the results.

The modules follow the data flow (see DESIGN.md §6):

- ``durations``, ``tomlsrc``, ``schema``, ``settings``: request text -> validated run settings
- ``share``: the share layout; accepting a request claims a run record (``runinfo``)
- ``hosts``: where runs execute (``local``, ``ssh``) behind one interface
- ``sync``, ``launcher``: rsync command lines and the remote launcher, built by pure functions
- ``runner``: drives one run from accepted to a terminal state
- ``scheduler``, ``watcher``, ``service``: the long-running agent
- ``cli``: the ``droprun`` command
"""

__version__ = "0.1.0"
