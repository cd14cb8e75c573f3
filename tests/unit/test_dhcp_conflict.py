"""Conflict handling: ping-check decisions, the guard with a fake prober, DECLINE
probation and its cap, ICMP wire format, rogue-server decisions.

The guard runs against a real store and allocator; only the ICMP socket is
the fake shipped in appliance/servers/icmp_probe.py and the clock is a
variable, so a "0.5 s probe timeout" is a number, not a sleep.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP

from appliance.config import load_config
from appliance.events import EventLog
from appliance.leases import Allocator
from appliance.model import Lease
from appliance.servers import dhcp_codec as c
from appliance.servers import icmp_probe as icmp
from appliance.servers.conflict import (
    CONFLICT_PROBATION,
    MAX_ATTEMPTS,
    PROBE_TIMEOUT,
    SWEEP_DELAY,
    ConflictGuard,
    LoadGate,
    needs_probe,
    probation_excess,
)
from appliance.servers.dhcp import DhcpContext, make_reply
from appliance.servers.dhcp_client_view import discover_payload
from appliance.servers.rogue import RogueTracker, parse_frame, rogue_summary
from appliance.store import Store

SERVER = "10.99.0.1"
POOL = ("10.99.0.100", "10.99.0.199")  # 100 addresses


def _mac(n: int) -> str:
    return f"52:54:00:00:{n >> 8:02x}:{n & 0xFF:02x}"


def packet(msg: int, mac: str, requested: str | None = None, server_id: str | None = None,
           ciaddr: str = "0.0.0.0") -> c.DhcpRequest:
    opts: list = [("message-type", msg)]
    if requested:
        opts.append(("requested_addr", requested))
    if server_id:
        opts.append(("server_id", server_id))
    raw = bytes(BOOTP(op=1, xid=7, ciaddr=ciaddr,
                      chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10))
                / DHCP(options=[*opts, "end"]))
    return c.decode(raw)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Rig:
    """make_reply's allocator side plus a guard, wired as DhcpServer wires them."""

    def __init__(self, tmp_path, squatted=(), gate=None):
        self.cfg = load_config(None, address=SERVER, pool=f"{POOL[0]}-{POOL[1]}",
                               state_dir=str(tmp_path))
        self.store = Store(self.cfg.db_path).open()
        self.wall = Clock(1_000_000.0)
        self.mono = Clock()
        self.allocator = Allocator(self.store, self.cfg.dhcp, SERVER, clock=self.wall)
        self.events = EventLog(self.store, clock=self.wall)
        # plain clients only: the policy is never asked, only its store is read
        self.ctx = DhcpContext(self.cfg, SimpleNamespace(store=self.store), self.allocator,
                               self.events)
        self.prober = icmp.FakeProber(set(squatted))
        self.guard = ConflictGuard(self.allocator, self.prober, clock=self.mono,
                                   gate=gate or LoadGate(high_rate=10_000))
        self.sent: list[c.DhcpReply] = []
        self.guard.start(self.sent.append, self.decide, self.events)

    def decide(self, req):
        return make_reply(req, self.ctx)

    def request(self, req):
        """One request through the loop's path: prior, decide, intercept, emit."""
        prior = self.guard.lease_before(req)
        reply = self.decide(req)
        if not self.guard.intercept(req, reply, prior) and reply is not None:
            self.sent.append(reply)

    def advance(self, seconds: float):
        self.mono.t += seconds
        self.wall.t += seconds
        self.guard.tick()

    def close(self):
        self.guard.stop()
        self.store.close()


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(**kw):
        r = Rig(tmp_path / str(len(made)), **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# -- pure decisions --------------------------------------------------------------
def test_needs_probe_only_for_pool_addresses_the_mac_does_not_hold():
    held = Lease("m", "10.0.0.5", 200.0, "offered")
    assert needs_probe("10.0.0.5", "m", None, True, False, 100.0)
    assert not needs_probe("10.0.0.5", "m", held, True, False, 100.0)
    assert needs_probe("10.0.0.5", "m", held, True, False, 300.0)  # expired: probe again
    assert needs_probe("10.0.0.6", "m", held, True, False, 100.0)  # another address
    assert needs_probe("10.0.0.5", "other", held, True, False, 100.0)
    assert needs_probe("10.0.0.5", "m", Lease("m", "10.0.0.5", 200.0, "released"),
                       True, False, 100.0)
    assert not needs_probe("10.0.0.5", "m", None, False, False, 100.0)  # outside the pool
    assert not needs_probe("10.0.0.5", "m", None, True, True, 100.0)  # a reservation


def test_probation_excess_releases_oldest_declined_never_conflicts():
    entries = [Lease("", f"10.0.0.{i}", 100.0 + i, "declined") for i in range(15)]
    entries += [Lease("", "10.0.0.99", 50.0, "conflict")]
    out = probation_excess(entries, pool_size=100, cap=0.10)
    assert out == [f"10.0.0.{i}" for i in range(6)]  # 16 on probation, 10 allowed
    assert probation_excess(entries[:10], pool_size=100) == []
    only_conflicts = [Lease("", f"10.0.1.{i}", 1.0, "conflict") for i in range(20)]
    assert probation_excess(only_conflicts, pool_size=100) == []


def test_load_gate_skips_on_rate_and_outstanding_and_logs_once(caplog):
    gate = LoadGate(max_outstanding=3, high_rate=5, window=1.0)
    assert gate.allow(0.0, 0)
    for i in range(6):
        gate.note_packet(0.1 + i * 0.01)
    with caplog.at_level("INFO", logger="plowshare.dhcp"):
        assert not gate.allow(0.2, 0)
        assert not gate.allow(0.3, 0)
        assert not gate.allow(1.5, 0)  # the last full window still counts
        assert gate.allow(3.5, 0)  # quiet for two windows
        assert not gate.allow(3.6, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipped under load" in m for m in lines) == 2, lines
    assert sum("resumed" in m for m in lines) == 1, lines


# -- the guard -------------------------------------------------------------------
def test_offer_is_held_for_the_probe_then_sent(rig):
    r = rig()
    r.request(packet(c.DISCOVER, _mac(1)))
    assert r.sent == [] and r.prober.sent == [POOL[0]]
    assert r.guard.timeout(5.0) == pytest.approx(PROBE_TIMEOUT)
    r.advance(PROBE_TIMEOUT / 2)
    assert r.sent == []
    r.advance(PROBE_TIMEOUT)
    assert [s.yiaddr for s in r.sent] == [POOL[0]]


def test_prober_is_watched_only_while_a_probe_is_out(rig):
    """Stray ICMP (anybody's ping replies) must not wake the loop when nothing waits."""
    r = rig()
    assert r.guard.fds() == [] and r.guard.timeout(5.0) == 5.0
    r.request(packet(c.DISCOVER, _mac(1)))
    assert r.guard.fds() == [r.prober]
    r.advance(PROBE_TIMEOUT + 0.01)
    assert r.sent and r.guard.fds() == []


def test_other_clients_are_served_while_an_offer_is_held(rig):
    r = rig()
    r.request(packet(c.DISCOVER, _mac(1)))
    r.request(packet(c.DISCOVER, _mac(2)))
    r.request(packet(c.INFORM, _mac(3), ciaddr="10.99.0.50"))
    assert [s.msg_type for s in r.sent] == [c.ACK]  # the INFORM, at once
    r.advance(PROBE_TIMEOUT + 0.01)
    offers = sorted(s.yiaddr for s in r.sent if s.msg_type == c.OFFER)
    assert offers == [POOL[0], "10.99.0.101"]


def test_squatted_address_is_marked_conflict_and_another_is_offered(rig):
    r = rig(squatted={POOL[0]})
    r.request(packet(c.DISCOVER, _mac(1)))
    r.advance(0.01)  # the echo reply arrives
    assert r.sent == [] and r.prober.sent == [POOL[0], "10.99.0.101"]
    r.advance(PROBE_TIMEOUT)
    assert [s.yiaddr for s in r.sent] == ["10.99.0.101"]
    lease = r.allocator.view.lease_for_ip(POOL[0])
    assert lease.state == "conflict" and lease.mac == ""
    assert lease.expires == pytest.approx(r.wall.t + CONFLICT_PROBATION, abs=1)
    kinds = [e.kind for e in r.store.events(_mac(1))]
    assert kinds == ["dhcp-conflict"]
    # nobody is offered it later, and the client asking for it by name is not either
    r.request(packet(c.DISCOVER, _mac(2), requested=POOL[0]))
    r.advance(PROBE_TIMEOUT + 0.01)
    assert r.sent[-1].yiaddr not in (POOL[0], "10.99.0.101")


def test_reprobing_is_bounded(rig):
    squat = {f"10.99.0.{100 + i}" for i in range(10)}
    r = rig(squatted=squat)
    r.request(packet(c.DISCOVER, _mac(1)))
    for _ in range(MAX_ATTEMPTS + 2):
        r.advance(0.01)
    assert len(r.prober.sent) == MAX_ATTEMPTS and r.sent == []
    assert sum(e.kind == "dhcp-conflict" for e in r.store.events(_mac(1))) == MAX_ATTEMPTS


def test_retransmitted_discover_does_not_skip_the_probe(rig):
    r = rig(squatted={POOL[0]})
    r.request(packet(c.DISCOVER, _mac(1)))
    r.request(packet(c.DISCOVER, _mac(1)))  # before the echo reply was read
    assert r.sent == []
    r.advance(PROBE_TIMEOUT + 0.01)
    r.advance(PROBE_TIMEOUT + 0.01)
    assert [s.yiaddr for s in r.sent] == ["10.99.0.101"]


def test_known_client_gets_its_address_without_a_probe(rig):
    r = rig()
    r.request(packet(c.DISCOVER, _mac(1)))
    r.advance(PROBE_TIMEOUT + 0.01)
    r.allocator.bind(_mac(1), POOL[0])
    r.request(packet(c.DISCOVER, _mac(1)))
    assert r.sent[-1].yiaddr == POOL[0] and len(r.sent) == 2
    assert r.prober.sent == [POOL[0]]


def test_under_load_offers_go_out_unprobed(rig):
    r = rig(gate=LoadGate(high_rate=5))
    for n in range(20):
        r.request(packet(c.DISCOVER, _mac(n)))
    assert len(r.prober.sent) <= 6
    assert len(r.sent) >= 14  # everything past the threshold answered at once


def test_without_an_icmp_socket_the_check_is_off(rig):
    class Broken(icmp.FakeProber):
        def start(self):
            raise PermissionError("no CAP_NET_RAW")

    r = rig()
    r.guard.stop()
    r.guard = ConflictGuard(r.allocator, Broken(), clock=r.mono)
    r.guard.start(r.sent.append, r.decide, r.events)
    r.request(packet(c.DISCOVER, _mac(1)))
    assert [s.yiaddr for s in r.sent] == [POOL[0]]


# -- DECLINE -----------------------------------------------------------------------
def test_forged_decline_is_ignored(rig):
    r = rig()
    r.request(packet(c.DISCOVER, _mac(1)))
    r.advance(PROBE_TIMEOUT + 0.01)
    r.allocator.bind(_mac(1), POOL[0])
    for forged in (packet(c.DECLINE, _mac(2), requested=POOL[0]),       # someone else's
                   packet(c.DECLINE, _mac(2), requested="10.99.0.150")):  # nobody's
        r.request(forged)
    assert r.allocator.view.lease_for_ip(POOL[0]).mac == _mac(1)
    assert r.allocator.view.lease_for_ip("10.99.0.150") is None


def test_decline_for_another_server_is_ignored(rig):
    r = rig()
    r.request(packet(c.DISCOVER, _mac(1)))
    r.advance(PROBE_TIMEOUT + 0.01)
    make_reply(packet(c.DECLINE, _mac(1), requested=POOL[0], server_id="10.99.0.2"), r.ctx)
    assert r.allocator.view.lease_for_ip(POOL[0]).state == "offered"
    make_reply(packet(c.DECLINE, _mac(1), requested=POOL[0], server_id=SERVER), r.ctx)
    assert r.allocator.view.lease_for_ip(POOL[0]).state == "declined"


def test_declined_address_is_probed_and_a_reply_makes_it_a_conflict(rig):
    r = rig(squatted={POOL[0]})
    r.allocator.bind(_mac(1), POOL[0])  # bound before the squatter appeared
    r.request(packet(c.DECLINE, _mac(1), requested=POOL[0]))
    assert r.prober.sent == [POOL[0]]
    r.advance(0.01)
    assert r.allocator.view.lease_for_ip(POOL[0]).state == "conflict"
    assert [e.kind for e in r.store.events(_mac(1))] == ["dhcp-conflict"]


def test_decline_storm_leaves_90_percent_of_the_pool(rig):
    r = rig()
    for n in range(300):  # every client: DISCOVER, OFFER, REQUEST/ACK, DECLINE
        mac = _mac(n)
        r.request(packet(c.DISCOVER, mac))
        r.advance(PROBE_TIMEOUT + 0.01)
        offer = r.sent[-1]
        if offer.msg_type != c.OFFER or offer.request.mac != mac:
            continue
        assert r.allocator.bind(mac, offer.yiaddr) is not None
        r.request(packet(c.DECLINE, mac, requested=offer.yiaddr, server_id=SERVER))
    r.advance(SWEEP_DELAY + 0.01)
    on_probation = r.store.leases_in_states(("declined", "conflict"), r.wall.t)
    assert len(on_probation) <= 10
    fresh = Allocator(r.store, r.cfg.dhcp, SERVER, clock=r.wall)
    got = {fresh.offer(f"02:00:00:00:{n >> 8:02x}:{n & 0xFF:02x}", None) for n in range(100)}
    got.discard(None)
    assert len(got) >= 90


# -- wire formats ------------------------------------------------------------------
def test_echo_request_matches_scapy():
    raw = icmp.echo_request(0x1234, 7)
    pkt = ICMP(raw)
    assert (pkt.type, pkt.code, pkt.id, pkt.seq) == (8, 0, 0x1234, 7)
    assert pkt.chksum == ICMP(bytes(ICMP(type=8, id=0x1234, seq=7) / icmp.PAYLOAD)).chksum


def test_parse_echo_reply():
    reply = bytes(IP(src="10.99.0.7", dst=SERVER) / ICMP(type=0, id=5, seq=9) / b"x")
    assert icmp.parse_echo_reply(reply) == ("10.99.0.7", 5, 9)
    request = bytes(IP(src="10.99.0.7", dst=SERVER) / ICMP(type=8, id=5, seq=9))
    unreachable = bytes(IP(src="10.99.0.7") / ICMP(type=3, code=1))
    for junk in (request, unreachable, b"", b"\x45" + bytes(10), b"\x4f" + bytes(40)):
        assert icmp.parse_echo_reply(junk) is None


def test_prober_matches_only_its_own_replies():
    p = icmp.IcmpProber()
    p._sent = {1: "10.99.0.7"}

    class Sock:
        def __init__(self, packets):
            self.packets = list(packets)

        def recv(self, _n):
            if not self.packets:
                raise BlockingIOError
            return self.packets.pop(0)

    ours = bytes(IP(src="10.99.0.7") / ICMP(type=0, id=p.ident, seq=1))
    p._sock = Sock([
        bytes(IP(src="10.99.0.7") / ICMP(type=0, id=(p.ident + 1) & 0xFFFF, seq=1)),
        bytes(IP(src="10.99.0.8") / ICMP(type=0, id=p.ident, seq=1)),  # wrong source
        ours, ours,  # a duplicate reply counts once
    ])
    assert p.replies() == ["10.99.0.7"]


def _server_frame(msg_type: int, server_id: str | None, src_ip: str, sport: int = 67):
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    opts: list = [("message-type", msg_type)]
    if server_id:
        opts.append(("server_id", server_id))
    return bytes(Ether(src="02:00:00:00:00:02", dst="ff:ff:ff:ff:ff:ff")
                 / IP(src=src_ip, dst="255.255.255.255") / UDP(sport=sport, dport=68)
                 / BOOTP(op=2, yiaddr="10.99.0.50", chaddr=b"\x52\x54\x00\x00\x00\x01"
                         + bytes(10)) / DHCP(options=[*opts, ("lease_time", 120), "end"]))


def test_parse_frame_and_rogue_decisions():
    frame = _server_frame(c.OFFER, "10.99.0.2", "10.99.0.2")
    src_mac, src_ip, msg = parse_frame(frame)
    assert (src_mac, src_ip, msg.yiaddr, msg.server_id, msg.lease_time) == \
        ("02:00:00:00:00:02", "10.99.0.2", "10.99.0.50", "10.99.0.2", 120)
    assert msg.mac == "52:54:00:00:00:01"
    assert parse_frame(_server_frame(c.OFFER, "10.99.0.2", "10.99.0.2", sport=68)) is None
    assert parse_frame(frame[:30]) is None

    tracker = RogueTracker({SERVER}, interval=300)
    assert tracker.observe(0.0, src_mac, src_ip, msg).server_id == "10.99.0.2"
    assert tracker.observe(10.0, src_mac, src_ip, msg) is None  # rate-limited
    assert tracker.observe(400.0, src_mac, src_ip, msg).count == 3
    ours = parse_frame(_server_frame(c.OFFER, SERVER, SERVER))[2]
    assert tracker.observe(500.0, "02:00:00:00:00:01", SERVER, ours) is None
    nak = parse_frame(_server_frame(c.NAK, "10.99.0.3", "10.99.0.3"))[2]
    assert tracker.observe(500.0, "02:00:00:00:00:03", "10.99.0.3", nak) is None
    no_id = parse_frame(_server_frame(c.ACK, None, "10.99.0.4"))[2]
    assert tracker.observe(500.0, "02:00:00:00:00:04", "10.99.0.4", no_id).server_id \
        == "10.99.0.4"


def test_rogue_summary_groups_events_by_server():
    from appliance.model import Event
    evs = [Event(1.0, "02:00:00:00:00:02", "dhcp-rogue",
                 "server=10.99.0.2 offered=10.99.0.50 client=52:54:00:00:00:01 type=offer"),
           Event(2.0, "02:00:00:00:00:03", "dhcp-rogue", "server=10.99.0.3 offered=10.99.0.9"),
           Event(3.0, "02:00:00:00:00:02", "dhcp-rogue", "server=10.99.0.2 offered=10.99.0.51")]
    out = rogue_summary(evs)
    assert [e["server"] for e in out] == ["10.99.0.2", "10.99.0.3"]
    assert out[0]["events"] == 2 and out[0]["offered"] == "10.99.0.51" and out[0]["first"] == 1.0


def test_discover_payload_decodes():
    req = c.decode(discover_payload("02:50:4c:4f:57:53", 99))
    assert (req.msg_type, req.mac, req.xid, req.broadcast) == \
        (c.DISCOVER, "02:50:4c:4f:57:53", 99, True)



def test_rogues_from_the_cli_and_the_appliance(tmp_path, capsys):
    from appliance.app import Appliance
    from appliance.cli import main
    from appliance.model import Event

    cfg = load_config(None, address=SERVER, state_dir=str(tmp_path / "state"))
    app = Appliance(cfg)
    app.store.open()
    try:
        app.events.record("02:00:00:00:00:02", "dhcp-rogue",
                          "server=10.99.0.2 offered=10.99.0.50 client=52:54:00:00:00:01")
        app.store.add_event(Event(2.0, "52:54:00:00:00:01", "dhcp-offer", "10.99.0.100"))
        assert [(r["server"], r["mac"]) for r in app.rogue_servers()] == \
            [("10.99.0.2", "02:00:00:00:00:02")]
    finally:
        app.store.close()
    assert main(["--state", str(tmp_path / "state"), "dhcp", "rogues"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("10.99.0.2\t02:00:00:00:00:02\t")
    assert "offered 10.99.0.50" in out[0]


def test_config_keys_for_conflicts(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[dhcp]\nping_check = false\nrogue_probe_interval = 30\n")
    d = load_config(path).dhcp
    assert (d.ping_check, d.rogue_detect, d.rogue_probe_interval) == (False, True, 30)
    assert load_config(None).dhcp.ping_check is True
