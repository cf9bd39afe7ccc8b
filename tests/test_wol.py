"""Wake-on-LAN packets: exact bytes, and one real datagram to a listener on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from agent.hosts.wol import make_magic_packet, parse_mac, send_magic_packet

MAC = bytes([0x00, 0x11, 0x22, 0xAA, 0xBB, 0xCC])


@pytest.mark.parametrize(
    "text", ["00:11:22:aa:bb:cc", "00-11-22-AA-BB-CC", "001122aabbcc", " 00:11:22:AA:bb:cc\n"]
)
def test_parse_mac_accepts_common_spellings(text: str) -> None:
    assert parse_mac(text) == MAC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00:11:22:aa:bb",
        "00:11:22:aa:bb:cc:dd",
        "00:11-22:aa:bb:cc",
        "gg:11:22:aa:bb:cc",
        "0:11:22:aa:bb:cc",
    ],
)
def test_parse_mac_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        parse_mac(text)


def test_magic_packet_is_sync_stream_then_mac_sixteen_times() -> None:
    packet = make_magic_packet("00:11:22:aa:bb:cc")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert [packet[6 + 6 * i : 12 + 6 * i] for i in range(16)] == [MAC] * 16


def test_send_magic_packet_delivers_exact_bytes_to_a_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(30)
        port = listener.getsockname()[1]
        send_magic_packet("00-11-22-AA-BB-CC", broadcast="127.0.0.1", port=port)
        data, (sender, _) = listener.recvfrom(4096)
    assert data == make_magic_packet("00:11:22:aa:bb:cc")
    assert sender == "127.0.0.1"
