"""A network namespace with an sshd inside, whose link a test can cut and restore."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.hosts.kinds.ssh import SshConfig

from testbed import SshServer, TestUser, require_tool, run_checked, running_sshd


@dataclass(frozen=True)
class NetnsHost:
    """A network namespace reachable over a veth pair, with an sshd listening inside it.

    ``cut()`` takes the host side of the link down (packets vanish, as with a pulled cable);
    ``restore()`` brings it back.
    """

    netns: str
    veth_host: str
    veth_ns: str
    host_address: str
    address: str
    ssh: SshServer

    def cut(self) -> None:
        """Take the link down: connections hang and new ones fail."""
        run_checked([require_tool("ip"), "link", "set", self.veth_host, "down"])

    def restore(self) -> None:
        """Bring the link back up and re-add the address route that ``down`` removed."""
        run_checked([require_tool("ip"), "link", "set", self.veth_host, "up"])

    def host_config(self, name: str = "nshost", **overrides: Any) -> SshConfig:
        """Return an ssh ``SshConfig`` for the sshd inside the namespace."""
        return self.ssh.host_config(name, **overrides)


def pick_subnet() -> ipaddress.IPv4Network:
    """Return a random 10.2xx.y.0/24 that no interface on this machine uses yet."""
    used = run_checked([require_tool("ip"), "-o", "-4", "addr"]) + run_checked(
        [require_tool("ip"), "-4", "route"]
    )
    for _ in range(100):
        second, third = 210 + secrets.randbelow(40), secrets.randbelow(256)
        if f"10.{second}.{third}." not in used:
            return ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
    pytest.fail("no free 10.2xx.y.0/24 subnet for a test namespace")


@pytest.fixture
def netns_host(test_user: TestUser) -> Iterator[NetnsHost]:
    """A fresh netns + veth pair on a fresh /24, with sshd on port 22 inside; all torn down."""
    ip = require_tool("ip")
    tag = secrets.token_hex(3)
    netns, veth_h, veth_n = f"drt-{tag}", f"drh-{tag}", f"drn-{tag}"
    net = pick_subnet()
    host_addr, ns_addr = str(net.network_address + 1), str(net.network_address + 2)
    created_ns = created_veth = False
    try:
        run_checked([ip, "netns", "add", netns])
        created_ns = True
        run_checked([ip, "link", "add", veth_h, "type", "veth", "peer", "name", veth_n])
        created_veth = True
        run_checked([ip, "link", "set", veth_n, "netns", netns])
        run_checked([ip, "addr", "add", f"{host_addr}/24", "dev", veth_h])
        run_checked([ip, "link", "set", veth_h, "up"])
        inside = [ip, "netns", "exec", netns, ip]
        run_checked([*inside, "addr", "add", f"{ns_addr}/24", "dev", veth_n])
        run_checked([*inside, "link", "set", veth_n, "up"])
        run_checked([*inside, "link", "set", "lo", "up"])
        with running_sshd(test_user, ns_addr, port=22, netns=netns) as server:
            yield NetnsHost(netns, veth_h, veth_n, host_addr, ns_addr, server)
    finally:
        # The veth first: deleting one end removes both, at once. (A netns deletion takes
        # its end away asynchronously, so the host end would vanish at some later moment.)
        if created_veth:
            run_checked([ip, "link", "del", veth_h])
        if created_ns:
            run_checked([ip, "netns", "del", netns])
