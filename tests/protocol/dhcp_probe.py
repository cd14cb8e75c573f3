"""Raw DHCP client and sniffer for the option tests, run *inside* a lab namespace.

    python -m tests.protocol.dhcp_probe sniff IFACE OUT
    python -m tests.protocol.dhcp_probe discover IFACE MAC PARAMS MAXSIZE [VENDOR]

``sniff`` appends one JSON line per server reply seen on IFACE: message type,
chaddr, IP total length, UDP payload length, the option codes as a client
reads them (:func:`appliance.servers.dhcp_packing.read_options`: overload
fields and repeated codes joined), the codes of the main area in wire order
(repeats kept), and the ``file`` field.  It prints ``ready`` once listening
and stops on SIGTERM.

``discover`` sends one DISCOVER (broadcast flag set) with option 55 = PARAMS
(comma-separated codes, ``-`` for none) and option 57 = MAXSIZE (``-``: not
sent), plus a PXE vendor class and architecture 0 when VENDOR is given, and
prints the OFFER as one JSON line like ``sniff`` does, plus the option names
scapy reads from it.
"""

from __future__ import annotations

import json
import select
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP

from appliance.servers import dhcp_codec as c
from appliance.servers import dhcp_packing as p
from appliance.servers.l2 import udp_frame
from appliance.servers.rogue import ETH_P_IP
from tests.e2e.dhcp_raw import reply_socket, sniff_frames

ETH_HEADER, UDP_HEADER = 14, 8
WAIT = 20.0


def _main_codes(payload: bytes) -> list[int]:
    out, i = [], c.OPTIONS_OFFSET
    while i + 1 < len(payload) and payload[i] != c.OPT_END:
        if payload[i] == c.OPT_PAD:
            i += 1
            continue
        out.append(payload[i])
        i += 2 + payload[i + 1]
    return out


def describe(frame: bytes) -> dict | None:
    """The reply in an Ethernet frame, as JSON-able facts; ``None`` if not a reply."""
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    payload = ip[ihl + UDP_HEADER:int.from_bytes(ip[2:4], "big")]
    if len(payload) < c.OPTIONS_OFFSET or payload[0] != c.BOOTREPLY:
        return None
    opts = p.read_options(payload)
    kind = opts.get(c.OPT_MESSAGE_TYPE, b"\0")[0]
    return {"type": c.MSG_NAMES.get(kind, str(kind)), "xid": int.from_bytes(payload[4:8], "big"),
            "mac": payload[28:34].hex(":"), "ip_len": int.from_bytes(ip[2:4], "big"),
            "size": len(payload), "codes": list(opts), "main": _main_codes(payload),
            "file": payload[p.FILE_OFFSET:p.FILE_OFFSET + p.FILE_LEN].split(b"\0")[0]
            .decode("latin-1"),
            "values": {str(k): v.hex() for k, v in opts.items()}}


def sniff(iface: str, out: str) -> None:
    sniff_frames(iface, out, describe)


def discover(iface: str, mac: str, params: str, max_size: str, vendor: str | None) -> dict:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    opts: list = [("message-type", c.DISCOVER)]
    if vendor:
        opts += [("vendor_class_id", vendor.encode()), ("pxe_client_architecture", b"\0\0")]
    if params != "-":
        opts.append(("param_req_list", [int(x) for x in params.split(",")]))
    if max_size != "-":
        opts.append(("max_dhcp_size", int(max_size)))
    xid = int(time.time()) & 0xFFFFFFFF
    payload = bytes(BOOTP(op=1, xid=xid, flags=c.FLAG_BROADCAST, chaddr=chaddr + bytes(10))
                    / DHCP(options=[*opts, "end"]))
    sock = reply_socket(iface, ETH_P_IP)
    sock.send(udp_frame(chaddr, b"\xff" * 6, "0.0.0.0", "255.255.255.255", 68, 67, payload))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.5)[0]:
            continue
        frame = sock.recv(65535)
        facts = describe(frame)
        if facts and facts["xid"] == xid and facts["type"] == "offer":
            ip = frame[ETH_HEADER:]
            pkt = BOOTP(ip[(ip[0] & 0x0F) * 4 + UDP_HEADER:])
            facts["scapy"] = [o[0] if isinstance(o, tuple) else o if isinstance(o, str)
                              else "raw bytes" for o in pkt[DHCP].options]
            return facts
    raise SystemExit("no OFFER")


def main(argv: list[str]) -> int:
    if argv[0] == "sniff":
        sniff(argv[1], argv[2])
    else:
        print(json.dumps(discover(argv[1], argv[2], argv[3], argv[4],
                                  argv[5] if len(argv) > 5 else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
