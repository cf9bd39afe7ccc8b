"""Shared fixtures: real sshd, smbd and network-namespace servers (see tests/testbed*.py).

Property tests run derandomized under CI (``CI`` set, or ``--hypothesis-profile=ci`` as
tests/run.sh passes): the same examples on every machine, so a red build is about the
code, not about which inputs this run happened to draw.
"""

import os

from hypothesis import settings
from testbed_netns import netns_host
from testbed_smb import smbd_server

from testbed import root, sshd_server, test_user

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["netns_host", "root", "smbd_server", "sshd_server", "test_user"]
