"""Raw Ethernet transmit for replies to clients that have no address yet.

A DHCP OFFER/ACK without the broadcast flag must reach ``yiaddr`` at the
client's hardware address (RFC 2131 section 4.1), but the kernel would ARP
for ``yiaddr`` first and the client cannot answer.  So the frame is built
here (Ethernet II + IPv4 + UDP, RFC 791/768 checksums) and written to an
``AF_PACKET`` socket on the provisioning interface.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

ETH_P_IP = 0x0800
IPPROTO_UDP = 17
IP_TTL = 64
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str,
              sport: int, dport: int, payload: bytes) -> bytes:
    """A complete Ethernet frame carrying ``payload`` in UDP over IPv4."""
    src, dst = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
    udp_len = UDP_HEADER.size + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    udp_sum = checksum(pseudo + UDP_HEADER.pack(sport, dport, udp_len, 0) + payload) or 0xFFFF
    udp = UDP_HEADER.pack(sport, dport, udp_len, udp_sum) + payload
    header = IPV4_HEADER.pack(0x45, 0, IPV4_HEADER.size + len(udp), 0, 0, IP_TTL,
                              IPPROTO_UDP, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + header + udp


class L2Sender:
    def __init__(self, interface: str):
        self.interface = interface
        self._sock: socket.socket | None = None
        self.mac = b""

    def open(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        sock.bind((self.interface, 0))
        self.mac = sock.getsockname()[4][:6]
        self._sock = sock

    def send_udp(self, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int,
                 payload: bytes) -> None:
        self._sock.send(udp_frame(self.mac, dst_mac, src_ip, dst_ip, sport, dport, payload))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
