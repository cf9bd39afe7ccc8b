"""Wake-on-LAN: the magic packet (pure) and sending it (one UDP datagram, broadcast allowed)."""

from __future__ import annotations

import socket

from agent.valuetypes import parse_mac


def make_magic_packet(mac: str) -> bytes:
    """Return the Wake-on-LAN magic packet for ``mac``: 6 x 0xFF, then the MAC 16 times.

    Raises ValueError for a malformed MAC.
    """
    return b"\xff" * 6 + parse_mac(mac) * 16


def send_magic_packet(mac: str, broadcast: str = "255.255.255.255", port: int = 9) -> None:
    """Send the magic packet for ``mac`` as one UDP datagram to ``broadcast:port``.

    Raises ValueError for a malformed MAC and OSError if the datagram cannot be sent.
    """
    packet = make_magic_packet(mac)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(packet, (broadcast, port))
