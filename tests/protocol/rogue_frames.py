"""Helper processes for tests/protocol/test_dhcp_rogue_filter.py (run in a lab namespace).

    python -m tests.protocol.rogue_frames listen IFACE SECONDS   # print what the filter passes
    python -m tests.protocol.rogue_frames send IFACE XID:SPORT:OP ...

``listen`` opens the rogue detector's socket (its BPF filter attached before
bind), prints ``ready``, sends one BOOTREPLY from port 67 *out of* IFACE
(xid 4: the appliance's own reply, which must not come back), then prints
one JSON line ``[xid, sport, op]`` per frame the filter let through.
``send`` broadcasts one UDP/BOOTP frame per spec into IFACE.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

from appliance.servers import dhcp_codec as c
from appliance.servers.l2 import udp_frame
from appliance.servers.rogue import BPF_SERVER_REPLIES, ETH_HEADER, ETH_P_IP, attach_filter

OWN_REPLY_XID = 4
BROADCAST = b"\xff" * 6


def frame(src_mac: bytes, xid: int, sport: int, op: int) -> bytes:
    header = c.BOOTP_HEADER.pack(op, c.HTYPE_ETHER, c.HLEN_ETHER, 0, xid, 0, 0, bytes(4),
                                 bytes(4), bytes(4), bytes(4), b"\x02" * 6 + bytes(10),
                                 b"", b"")
    kind = c.OFFER if op == c.BOOTREPLY else c.DISCOVER
    payload = header + c.MAGIC_COOKIE + bytes((c.OPT_MESSAGE_TYPE, 1, kind, c.OPT_END))
    dport = 68 if sport == 67 and op == c.BOOTREPLY else 67
    return udp_frame(src_mac, BROADCAST, "10.0.0.9", "255.255.255.255", sport, dport, payload)


def seen(raw: bytes) -> list[int]:
    ihl = (raw[ETH_HEADER] & 0x0F) * 4
    sport = struct.unpack_from("!H", raw, ETH_HEADER + ihl)[0]
    bootp = ETH_HEADER + ihl + 8
    return [struct.unpack_from("!I", raw, bootp + 4)[0], sport, raw[bootp]]


def listen(iface: str, seconds: float) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    attach_filter(sock, BPF_SERVER_REPLIES)
    sock.bind((iface, ETH_P_IP))
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    out.bind((iface, 0))
    print("ready", flush=True)
    out.send(frame(out.getsockname()[4][:6], OWN_REPLY_XID, 67, c.BOOTREPLY))
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            print(json.dumps(seen(sock.recv(4096))), flush=True)


def send(iface: str, specs: list[str]) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((iface, 0))
    mac = sock.getsockname()[4][:6]
    for spec in specs:
        xid, sport, op = (int(x) for x in spec.split(":"))
        sock.send(frame(mac, xid, sport, op))


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(sys.argv[2], float(sys.argv[3]))
    else:
        send(sys.argv[2], sys.argv[3:])
