"""Where runs execute: everything that runs commands on a host.

:mod:`agent.hosts.base` is the interface every kind of host implements,
:mod:`agent.hosts.kinds` the registry of kinds (``local``, ``ssh``) and ``open_host``.
"""
