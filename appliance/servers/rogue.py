"""Rogue-DHCP detection: other servers answering on the provisioning interface.

Passive: an ``AF_PACKET`` socket on the interface with a classic BPF filter
(:data:`BPF_SERVER_REPLIES`: BOOTREPLYs from port 67 that this host did not
send, attached before the socket is bound, so nothing else is queued and
neither our own replies nor relayed requests -- also from port 67 -- wake
the detector) hands every DHCP server message that reaches this
interface to :func:`parse_frame`; an OFFER or ACK whose server identifier
(option 54, else the IPv4 source) is not ours is a rogue sighting.  The
first sighting of a server, and then at most one per :data:`EVENT_INTERVAL`
per server, is recorded as a ``dhcp-rogue`` event (on the rogue's source
MAC, with ``server=``, ``offered=`` and ``client=`` in the detail) plus one
warning line.  Our own replies (``PACKET_OUTGOING``, or our server id) are
never counted.

What the passive socket cannot see: replies *unicast* to another client's
MAC (RFC 2131 4.1, a client without the broadcast flag) are switched to that
client's port only, and replies relayed to a giaddr elsewhere never reach
this wire.  Hence the optional active probe: every ``probe_interval``
seconds a DHCPDISCOVER with the broadcast flag from a dedicated MAC
(:data:`PROBE_MAC`), so every server on the segment answers by broadcast,
where the passive socket sees it.  Our own DHCP server does not see the
probe (a frame sent on an ``AF_PACKET`` socket is not looped back to the
local stack), so it never leases an address to the probe MAC.

Sightings are kept in memory (:meth:`RogueDetector.servers`) for the status
page; the events in the store are what ``plowshare dhcp rogues`` lists.
"""

from __future__ import annotations

import logging
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ..events import EventLog
from . import dhcp_client_view as cv
from . import dhcp_codec as c
from .l2 import udp_frame

log = logging.getLogger("plowshare.dhcp.rogue")

ETH_P_IP = 0x0800              # linux/if_ether.h
ETH_HEADER = 14
PACKET_OUTGOING = 4            # linux/if_packet.h: a frame this host sent
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
IPPROTO_UDP = 17               # RFC 768
BOOTP_SERVER_PORT, BOOTP_CLIENT_PORT = 67, 68  # RFC 2131 section 4.1
EVENT_INTERVAL = 300.0         # seconds between two events about one server
POLL_SECONDS = 1.0
RECV_BUFFER = 4096
PROBE_MAC = "02:50:4c:4f:57:53"  # locally administered, "PLOWS": the active probe's client
BROADCAST_MAC = b"\xff" * 6

SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # linux/filter.h: SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE
BOOTREPLY_OFFSET = ETH_HEADER + 8  # + IP header length (X): the BOOTP op byte (RFC 951)

# "not outbound and ip and udp and src port 67 and udp[8] == 2" as classic
# BPF (what tcpdump -dd prints, jumps relative): the frame was not sent by
# this host (under load one of our replies per request would wake the
# detector), ethertype IPv4, protocol UDP, not a fragment, UDP source port
# 67, BOOTP op BOOTREPLY (relays send requests from port 67 too).
BPF_SERVER_REPLIES = [
    (0x20, 0, 0, SKF_AD_PKTTYPE), (0x15, 12, 0, PACKET_OUTGOING),
    (0x28, 0, 0, 12), (0x15, 0, 10, ETH_P_IP), (0x30, 0, 0, 23), (0x15, 0, 8, IPPROTO_UDP),
    (0x28, 0, 0, 20), (0x45, 6, 0, 0x1FFF), (0xB1, 0, 0, ETH_HEADER),
    (0x48, 0, 0, ETH_HEADER), (0x15, 0, 3, BOOTP_SERVER_PORT),
    (0x50, 0, 0, BOOTREPLY_OFFSET), (0x15, 0, 1, c.BOOTREPLY), (0x06, 0, 0, 0x40000),
    (0x06, 0, 0, 0),
]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a classic BPF ``program`` (struct sock_fprog)."""
    import ctypes

    insns = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def parse_frame(frame: bytes) -> tuple[str, str, cv.ServerMessage] | None:
    """``(source MAC, source IP, message)`` of a DHCP server frame, else ``None``."""
    if len(frame) < ETH_HEADER + 28 or frame[12:14] != ETH_P_IP.to_bytes(2, "big"):
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < 20 or ip[9] != IPPROTO_UDP or len(ip) < ihl + 8:
        return None
    sport, _dport = struct.unpack_from("!HH", ip, ihl)
    if sport != BOOTP_SERVER_PORT:
        return None
    msg = cv.decode_reply(ip[ihl + 8:])
    if msg is None:
        return None
    return frame[6:12].hex(":"), socket.inet_ntoa(ip[12:16]), msg


@dataclass
class RogueServer:
    """One foreign DHCP server as seen so far."""

    server_id: str
    mac: str
    first_seen: float
    last_seen: float
    count: int = 0
    last_offered: str = ""
    last_client: str = ""
    last_event: float = float("-inf")


class RogueTracker:
    """The decision: is this a rogue sighting, and is it worth an event now?"""

    def __init__(self, ours: set[str], interval: float = EVENT_INTERVAL):
        self.ours = ours
        self.interval = interval
        self.servers: dict[str, RogueServer] = {}

    def observe(self, now: float, src_mac: str, src_ip: str,
                msg: cv.ServerMessage) -> RogueServer | None:
        """The server to report now, or ``None`` (ours, not an OFFER/ACK, or rate-limited)."""
        if msg.msg_type not in (c.OFFER, c.ACK):
            return None
        server_id = msg.server_id or src_ip
        if server_id in self.ours or src_ip in self.ours:
            return None
        seen = self.servers.get(server_id)
        if seen is None:
            seen = self.servers[server_id] = RogueServer(server_id, src_mac, now, now)
        seen.mac, seen.last_seen, seen.count = src_mac, now, seen.count + 1
        seen.last_offered, seen.last_client = msg.yiaddr, msg.mac
        if now - seen.last_event < self.interval:
            return None
        seen.last_event = now
        return seen


class RogueDetector:
    """Passive sniffer (+ optional active probe) on ``interface``.  ``start()`` opens."""

    def __init__(self, interface: str, address: str, events: EventLog,
                 probe_interval: float = 0.0, clock=time.monotonic):
        self.interface = interface
        self.address = address
        self.events = events
        self.probe_interval = probe_interval
        self.clock = clock
        self.tracker = RogueTracker({address})
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_probe = 0.0
        self._mac = b""

    def start(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no traffic until bound
        try:
            attach_filter(sock, BPF_SERVER_REPLIES)
            sock.bind((self.interface, ETH_P_IP))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._mac = sock.getsockname()[4][:6]
        self._next_probe = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dhcp-rogue", daemon=True)
        self._thread.start()
        log.info("watching %s for other DHCP servers (active probe %s)", self.interface,
                 f"every {self.probe_interval:g} s" if self.probe_interval else "off")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def servers(self) -> list[RogueServer]:
        """Foreign servers seen since start, most recent first."""
        return sorted(self.tracker.servers.values(), key=lambda s: -s.last_seen)

    def probe(self) -> None:
        """Broadcast one DHCPDISCOVER from :data:`PROBE_MAC`."""
        payload = cv.discover_payload(PROBE_MAC, secrets.randbits(32))
        frame = udp_frame(bytes.fromhex(PROBE_MAC.replace(":", "")), BROADCAST_MAC, "0.0.0.0",
                          "255.255.255.255", BOOTP_CLIENT_PORT, BOOTP_SERVER_PORT, payload)
        self._sock.send(frame)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            if self.probe_interval and now >= self._next_probe:
                self._next_probe = now + self.probe_interval
                try:
                    self.probe()
                except OSError as exc:
                    log.warning("rogue probe not sent: %s", exc)
            wait = POLL_SECONDS
            if self.probe_interval:
                wait = max(0.0, min(wait, self._next_probe - now))
            try:
                readable = select.select([self._sock], [], [], wait)[0]
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            if readable:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                frame, addr = self._sock.recvfrom(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            try:
                self.handle(frame)
            except Exception:
                log.exception("error handling a %d-byte frame", len(frame))

    def handle(self, frame: bytes) -> None:
        parsed = parse_frame(frame)
        if parsed is None:
            return
        src_mac, src_ip, msg = parsed
        rogue = self.tracker.observe(self.clock(), src_mac, src_ip, msg)
        if rogue is None:
            return
        self.events.record(
            src_mac, "dhcp-rogue",
            f"server={rogue.server_id} offered={msg.yiaddr} client={msg.mac} "
            f"type={c.MSG_NAMES[msg.msg_type]} seen={rogue.count}", log, logging.WARNING)


def rogue_summary(events) -> list[dict]:
    """One entry per foreign server from its ``dhcp-rogue`` events (newest first):
    server id, MAC, first/last event time, events, last offered address and client."""
    out: dict[str, dict] = {}
    for ev in events:
        fields = dict(part.split("=", 1) for part in ev.detail.split() if "=" in part)
        server = fields.get("server", "?")
        entry = out.setdefault(server, {"server": server, "first": ev.ts, "events": 0})
        entry.update(mac=ev.mac, last=ev.ts, offered=fields.get("offered", ""),
                     client=fields.get("client", ""), events=entry["events"] + 1)
    return sorted(out.values(), key=lambda e: -e["last"])
