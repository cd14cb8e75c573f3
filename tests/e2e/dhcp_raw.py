"""Raw DHCP traffic for e2e tests, run *inside* a lab namespace as a script.

    python -m tests.e2e.dhcp_raw sniff IFACE OUT [KINDS]  # record server ACKs (or KINDS)
    python -m tests.e2e.dhcp_raw decline-storm IFACE SERVER_IP CLIENTS ROUNDS

``sniff`` appends one JSON line per DHCPACK seen on IFACE (chaddr, yiaddr,
lease time, capture time, and the boot fields siaddr / sname / file) and
flushes each: it is the witness of what clients were really told,
independent of the server's store.  KINDS (comma-separated, e.g.
``offer,ack``) records those message types instead, each line with its
``type``.  It stops on SIGTERM.

``decline-storm`` plays CLIENTS x ROUNDS distinct MACs through DISCOVER ->
OFFER -> REQUEST -> ACK -> DECLINE (RFC 2131 4.3.3), one round's clients in
parallel, broadcast flag set so every reply reaches this port.  It prints a
JSON summary (offers, acks, declines sent).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP

from appliance.servers import dhcp_codec as c
from appliance.servers.l2 import udp_frame
from appliance.servers.rogue import BPF_SERVER_REPLIES, ETH_P_IP, attach_filter, parse_frame

from .appliance_proc import REPO

ETH_HEADER, UDP_HEADER = 14, 8
ETH_P_ALL = 0x0003  # linux/if_ether.h: every protocol, both directions
PHASE_WAIT = 8.0  # seconds one phase of a storm round waits for its replies
BROADCAST = b"\xff" * 6


def reply_socket(iface: str, proto: int = ETH_P_IP) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    attach_filter(sock, BPF_SERVER_REPLIES)
    sock.bind((iface, proto))
    return sock


def boot_fields(frame: bytes) -> dict:
    """siaddr, sname and file of the BOOTP reply in an Ethernet/IPv4/UDP ``frame``
    (RFC 951 fixed fields; NUL padding stripped)."""
    ihl = (frame[ETH_HEADER] & 0x0F) * 4
    fields = c.BOOTP_HEADER.unpack_from(frame, ETH_HEADER + ihl + UDP_HEADER)
    siaddr, sname, file = fields[9], fields[12], fields[13]
    return {"siaddr": socket.inet_ntoa(siaddr),
            "sname": sname.rstrip(b"\0").decode("latin-1"),
            "file": file.rstrip(b"\0").decode("latin-1")}


def sniff_frames(iface: str, out: str, describe) -> None:
    """Append ``describe(frame)`` as a JSON line to ``out`` for every DHCP server
    reply seen on ``iface`` (``None``: skipped) until SIGTERM; print "ready"
    once listening."""
    # ETH_P_ALL: a tap bound to ETH_P_IP never sees a bridge port's frames (the
    # bridge consumes them first); the BPF filter still keeps only UDP from port 67
    sock = reply_socket(iface, ETH_P_ALL)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out, "a") as fh:
        print("ready", flush=True)
        while not stop:
            try:
                if not select.select([sock], [], [], 0.2)[0]:
                    continue
                facts = describe(sock.recv(65535))
            except InterruptedError:
                continue
            if facts is not None:
                fh.write(json.dumps(facts) + "\n")
                fh.flush()


def sniff(iface: str, out: str, kinds: str = "ack") -> None:
    wanted = {k for k, name in c.MSG_NAMES.items() if name in kinds.lower().split(",")}

    def describe(frame: bytes) -> dict | None:
        parsed = parse_frame(frame)
        if parsed is None or parsed[2].msg_type not in wanted:
            return None
        msg = parsed[2]
        return {"mac": msg.mac, "ip": msg.yiaddr, "lease": msg.lease_time, "t": time.time(),
                "server": msg.server_id, "type": c.MSG_NAMES[msg.msg_type],
                **boot_fields(frame)}

    sniff_frames(iface, out, describe)


def start_sniffer(lab, iface: str, out, kinds: str = "ack") -> subprocess.Popen:
    """Run :func:`sniff` on ``iface`` in ``lab``'s wire namespace; return once it
    listens.  Stop it with ``terminate()``; ``lab.stop()`` also does."""
    proc = lab.popen_in_wire([sys.executable, "-m", "tests.e2e.dhcp_raw", "sniff", iface,
                              str(out), kinds], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", f"{kinds} sniffer did not start"
    return proc


def _mac(round_: int, n: int) -> str:
    return f"02:de:c1:{round_:02x}:{n >> 8:02x}:{n & 0xFF:02x}"


def _client_frame(mac: str, xid: int, msg: int, requested=None, server=None) -> bytes:
    opts: list = [("message-type", msg)]
    if requested:
        opts.append(("requested_addr", requested))
    if server:
        opts.append(("server_id", server))
    chaddr = bytes.fromhex(mac.replace(":", ""))
    payload = bytes(BOOTP(op=1, xid=xid, flags=c.FLAG_BROADCAST, chaddr=chaddr + bytes(10))
                    / DHCP(options=[*opts, "end"]))
    return udp_frame(chaddr, BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, payload)


def _collect(sock, want: dict[int, str], kind: int, deadline: float) -> dict[str, str]:
    """xid -> mac we wait for; returns mac -> yiaddr of the ``kind`` replies seen."""
    got: dict[str, str] = {}
    while len(got) < len(want) and time.monotonic() < deadline:
        if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        parsed = parse_frame(sock.recv(4096))
        if parsed is None:
            continue
        msg = parsed[2]
        if msg.msg_type == kind and want.get(msg.xid) == msg.mac:
            got[msg.mac] = msg.yiaddr
    return got


def decline_storm(iface: str, server: str, clients: int, rounds: int) -> dict:
    sock = reply_socket(iface)
    stats = {"offers": 0, "acks": 0, "declines": 0}
    for r in range(rounds):
        macs = {0x1000 * (r + 1) + n: _mac(r, n) for n in range(clients)}
        for xid, mac in macs.items():
            sock.send(_client_frame(mac, xid, c.DISCOVER))
        offers = _collect(sock, macs, c.OFFER, time.monotonic() + PHASE_WAIT)
        stats["offers"] += len(offers)
        for xid, mac in macs.items():
            if mac in offers:
                sock.send(_client_frame(mac, xid, c.REQUEST, offers[mac], server))
        acked = {x: m for x, m in macs.items() if m in offers}
        acks = _collect(sock, acked, c.ACK, time.monotonic() + PHASE_WAIT)
        stats["acks"] += len(acks)
        for xid, mac in macs.items():
            if mac in acks:
                sock.send(_client_frame(mac, xid, c.DECLINE, acks[mac], server))
                stats["declines"] += 1
    return stats


def main(argv: list[str]) -> int:
    if argv[0] == "sniff":
        sniff(*argv[1:4])
    elif argv[0] == "decline-storm":
        print(json.dumps(decline_storm(argv[1], argv[2], int(argv[3]), int(argv[4]))))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
