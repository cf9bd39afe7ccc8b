"""Shared fixtures: real sshd, smbd and network-namespace servers (see tests/testbed*.py)."""

from testbed_netns import netns_host
from testbed_smb import smbd_server

from testbed import root, sshd_server, test_user

__all__ = ["netns_host", "root", "smbd_server", "sshd_server", "test_user"]
