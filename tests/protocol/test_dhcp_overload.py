"""Overload on a real socket: REQUESTs queued behind a storm of DISCOVERs are ACKed.

The server's socket is bound (:meth:`DhcpServer.open`) before its loop
starts, so a whole burst -- DISCOVERs of new clients first, then REQUESTs
of clients that were offered addresses earlier -- waits in the socket when
the loop reads it: a full drain, so the loop is behind.  Every REQUEST
must be ACKed (to the relay that sent it, after its lease is committed),
only the newest DISCOVERs answered, the oldest shed and counted.  Traffic
stays on loopback: the "relay" is a UDP socket on 127.0.0.2, which is also
the giaddr of every request, so replies come back to it (RFC 2131 4.1).
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from appliance.config import load_config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.leases import Allocator
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers import dhcp_codec as c
from appliance.servers.dhcp import BUDGET, DRAIN, SHED_FLOOR, DhcpContext, DhcpServer
from appliance.store import Store
from appliance.templates import TemplateLibrary

SERVER, RELAY = "127.0.0.1", "127.0.0.2"
N = 100  # REQUESTs; with DRAIN - N DISCOVERs before them: one full drain
D = DRAIN - N
REPLY_TIMEOUT = 30


def request(msg: int, mac: str, requested: str | None = None) -> bytes:
    opts: list = [("message-type", msg)]
    if requested:
        opts += [("requested_addr", requested), ("server_id", SERVER)]
    chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
    return bytes(BOOTP(op=1, xid=int(mac[-5:].replace(":", ""), 16), giaddr=RELAY, hops=1,
                       chaddr=chaddr) / DHCP(options=[*opts, "end"]))


def replies(sock: socket.socket, count: int) -> list[tuple[int, str, str]]:
    """(message type, client MAC, yiaddr) of the next ``count`` replies."""
    out = []
    sock.settimeout(REPLY_TIMEOUT)
    while len(out) < count:
        pkt = BOOTP(sock.recv(4096))
        kind = dict(o for o in pkt[DHCP].options if isinstance(o, tuple))["message-type"]
        out.append((kind, pkt.chaddr[:6].hex(":"), pkt.yiaddr))
    return out


@pytest.fixture
def relay():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((RELAY, 0))
    yield sock
    sock.close()


def test_requests_queued_behind_a_discover_storm_are_acked(tmp_path, relay):
    assert D > N
    port = relay.getsockname()[1]  # the server answers relays on its own port
    cfg = load_config(None, address=SERVER, pool="127.0.0.10-127.0.0.250",
                      state_dir=str(tmp_path), kickstarts_dir=str(tmp_path),
                      dhcp_server_port=port)
    relay.close()  # the port is the server's now; the relay listens on RELAY:port
    store = Store(cfg.db_path).open()
    ctx = DhcpContext(cfg, BootPolicy(store, cfg, Renderer(
        InlineSandbox(), TemplateLibrary(store, tmp_path))),
        Allocator(store, cfg.dhcp, SERVER), EventLog(store), None)
    server = DhcpServer(ctx, bind=SERVER)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    listener.bind((RELAY, port))
    old = [f"52:54:00:0a:00:{i:02x}" for i in range(N)]
    new = [f"52:54:00:0b:00:{i:02x}" for i in range(D)]
    try:
        server.open()
        for mac in new:  # the storm first: the oldest packets in the queue
            listener.sendto(request(c.DISCOVER, mac), (SERVER, port))
        for i, mac in enumerate(old):
            listener.sendto(request(c.REQUEST, mac, f"127.0.0.{100 + i}"), (SERVER, port))
        server.start()  # the loop finds all DRAIN packets queued
        keep = max(BUDGET - N, SHED_FLOOR)
        got = replies(listener, N + keep)
        server.writer.flush()
    finally:
        server.stop()
        listener.close()
        store.close()
    acks = {mac: ip for kind, mac, ip in got if kind == c.ACK}
    offered = [mac for kind, mac, _ip in got if kind == c.OFFER]
    assert acks == {mac: f"127.0.0.{100 + i}" for i, mac in enumerate(old)}
    assert offered == new[-keep:]  # the newest DISCOVERs, in arrival order
    assert server.shed == D - keep
    bound = Store(cfg.db_path).open()
    try:  # every ACKed lease is in the store
        assert {lease.mac: lease.ip for lease in bound.leases() if lease.state == "bound"} \
            == acks
    finally:
        bound.close()
