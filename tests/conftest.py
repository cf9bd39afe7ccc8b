"""Shared fixtures: real sshd, smbd and network-namespace servers (see tests/testbed.py)."""

from testbed import netns_host, smbd_server, sshd_server, test_user

__all__ = ["netns_host", "smbd_server", "sshd_server", "test_user"]
