"""Subnets in make_reply: choice by giaddr/ciaddr, pools, options, relays, reload.

Requests are built with scapy and replies decoded with scapy (helpers from
test_dhcp), so the assertions are about the bytes a client would see.
"""

from __future__ import annotations

import sqlite3
import textwrap

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from appliance.app import Appliance
from appliance.config import ConfigError, load_config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.leases import Allocator
from appliance.model import Distro, Host, Profile, Subnet
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers import dhcp_codec as c
from appliance.servers.dhcp import DhcpContext, make_reply
from appliance.servers.dhcp_boot import machine_of
from appliance.store import SCHEMA_VERSION, Store
from appliance.subnets import MIN_LEASE_TIME, SubnetTable
from appliance.templates import TemplateLibrary

from .test_dhcp import LINUX, MAC, SERVER, packet

RELAY, OTHER_RELAY = "10.1.0.254", "10.3.0.1"
CONFIG = f"""\
[dhcp]
pool = "10.99.0.100-10.99.0.110"
router = "10.99.0.1"
relays = ["{RELAY}"]
max_lease_time = 7200
lease_time = 600
options = {{ "ntp-servers" = ["10.99.0.123"] }}

[[dhcp.subnet]]
network = "10.1.0.0/24"
pools = ["10.1.0.200-10.1.0.201", "10.1.0.10-10.1.0.11"]
lease_time = 1200
[dhcp.subnet.options]
routers = ["{RELAY}"]
interface-mtu = 1400
classless-static-routes = ["10.5.0.0/16 {RELAY}"]

[[dhcp.subnet]]
network = "10.3.0.0/24"
pools = ["10.3.0.10-10.3.0.20"]
"""
OPT82 = b"\x01\x04eth7\x02\x03abc"


def make_ctx(tmp_path, text: str = CONFIG) -> DhcpContext:
    path = tmp_path / "plowshare.toml"
    path.write_text(text)
    cfg = load_config(path, address=SERVER, state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    store = Store(cfg.db_path).open()
    kernel = tmp_path / "linux"
    kernel.write_bytes(b"k")
    store.add_distro(Distro("d", str(kernel), str(kernel)))
    store.add_profile(Profile("p", "d"))
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path))
    return DhcpContext(cfg, BootPolicy(store, cfg, renderer),
                       Allocator(store, cfg.dhcp, SERVER), EventLog(store), "prov0")


@pytest.fixture
def ctx(tmp_path):
    ctx = make_ctx(tmp_path)
    yield ctx
    ctx.allocator.store.close()


def ask(ctx, raw: bytes):
    reply = make_reply(c.decode(raw), ctx)
    if reply is None:
        return None, {}
    pkt = BOOTP(c.encode(reply, SERVER))
    items = [o for o in pkt[DHCP].options if isinstance(o, tuple)]
    return pkt, {"_order": [o[0] for o in items], **{o[0]: o[1:] for o in items}}


def test_relayed_discover_gets_the_relay_subnet_and_its_options(ctx):
    pkt, opts = ask(ctx, packet(LINUX, giaddr=RELAY))
    assert pkt.yiaddr == "10.1.0.10"  # lowest range first, whatever the config order
    assert opts["router"] == (RELAY,) and opts["interface-mtu"] == (1400,)
    assert opts["subnet_mask"] == ("255.255.255.0",)
    assert opts["broadcast_address"] == ("10.1.0.255",)
    assert opts["classless_static_routes"] == ([f"10.5.0.0/16:{RELAY}"],)
    assert opts["NTP_server"] == ("10.99.0.123",)  # the global layer
    assert opts["lease_time"] == (1200,)  # the subnet's lease time


def test_served_subnet_keeps_the_legacy_keys(ctx):
    pkt, opts = ask(ctx, packet(LINUX))
    assert pkt.yiaddr == "10.99.0.100"
    assert opts["router"] == ("10.99.0.1",) and opts["lease_time"] == (600,)
    assert "interface-mtu" not in opts


def test_relay_in_no_subnet_is_ignored(ctx):
    assert ask(ctx, packet(LINUX, giaddr="192.0.2.1")) == (None, {})


def test_unicast_renewal_from_a_relayed_subnet_is_acked_there(ctx):
    ask(ctx, packet(LINUX, giaddr=RELAY))
    ask(ctx, packet(LINUX, c.REQUEST, requested="10.1.0.10", server_id=SERVER, giaddr=RELAY))
    pkt, opts = ask(ctx, packet(LINUX, c.REQUEST, ciaddr="10.1.0.10"))
    assert opts["message-type"] == (c.ACK,) and pkt.yiaddr == "10.1.0.10"
    assert opts["router"] == (RELAY,)


def test_next_fit_walks_every_range_then_exhausts(ctx):
    got = [ask(ctx, packet(LINUX, mac=f"52:54:00:00:05:{i:02x}", giaddr=RELAY))[0].yiaddr
           for i in range(4)]
    assert got == ["10.1.0.10", "10.1.0.11", "10.1.0.200", "10.1.0.201"]
    assert ask(ctx, packet(LINUX, mac="52:54:00:00:05:09", giaddr=RELAY)) == (None, {})


def test_reservation_applies_only_inside_the_request_subnet(ctx):
    store = ctx.policy.store
    store.add_host(Host(MAC, "p", ip="10.1.0.50"), 60)  # in the relay subnet, off-pool
    assert ask(ctx, packet(LINUX, giaddr=RELAY))[0].yiaddr == "10.1.0.50"
    pkt, _ = ask(ctx, packet(LINUX))  # same host, local segment: a pool address
    assert pkt.yiaddr == "10.99.0.100"
    _, opts = ask(ctx, packet(LINUX, c.REQUEST, requested="10.99.0.100", server_id=SERVER))
    assert opts["message-type"] == (c.ACK,)
    _, opts = ask(ctx, packet(LINUX, c.REQUEST, requested="10.1.0.51", server_id=SERVER,
                              giaddr=RELAY))
    assert opts["message-type"] == (c.NAK,)  # it has another address in that subnet


def test_host_options_override_subnet_and_global(ctx):
    ctx.policy.store.add_host(Host(MAC, "p", name="n1", options={
        "routers": ["10.1.0.1"], "ntp-servers": ["10.1.0.5"], "dhcp-lease-time": 900,
        "host-name": "override"}), 60)
    _, opts = ask(ctx, packet(LINUX, giaddr=RELAY))
    assert opts["router"] == ("10.1.0.1",) and opts["NTP_server"] == ("10.1.0.5",)
    assert opts["interface-mtu"] == (1400,) and opts["lease_time"] == (900,)
    assert opts["hostname"] == (b"override",) and opts["_order"].count("hostname") == 1
    _, other = ask(ctx, packet(LINUX, mac="52:54:00:00:00:42", giaddr=RELAY))
    assert other["router"] == (RELAY,)  # the memoised subnet options are untouched


@pytest.mark.parametrize(("asked", "granted"), [(60_000, 7200), (3000, 3000), (1, MIN_LEASE_TIME)])
def test_requested_lease_time_is_clamped(ctx, asked, granted):
    _, opts = ask(ctx, packet(LINUX, extra=[("lease_time", asked)]))
    assert opts["lease_time"] == (granted,)
    _, ack = ask(ctx, packet(LINUX, c.REQUEST, requested="10.99.0.100", server_id=SERVER,
                             extra=[("lease_time", asked)]))
    assert ack["lease_time"] == (granted,)
    lease = ctx.policy.store.lease_for_mac(MAC)
    assert granted - 5 < lease.expires - ctx.allocator.clock() <= granted


def test_trusted_relay_option_82_is_echoed_last_and_on_the_machine(ctx):
    raw = packet(LINUX, giaddr=RELAY, extra=[("relay_agent_information", OPT82)])
    _, opts = ask(ctx, raw)
    assert opts["relay_agent_information"] == (OPT82,)
    assert opts["_order"][-1] == "relay_agent_information"
    machine = machine_of(c.decode(raw), ctx)
    assert (machine.circuit_id, machine.remote_id, machine.relay) == (b"eth7", b"abc", RELAY)
    nak = packet(LINUX, c.REQUEST, requested="10.1.0.99", giaddr=RELAY,
                 extra=[("relay_agent_information", OPT82)])
    _, opts = ask(ctx, nak)
    assert opts["message-type"] == (c.NAK,) and opts["relay_agent_information"] == (OPT82,)


@pytest.mark.parametrize("giaddr", [OTHER_RELAY, "0.0.0.0"])
def test_untrusted_option_82_is_neither_echoed_nor_used(ctx, giaddr, caplog):
    raw = packet(LINUX, giaddr=giaddr, extra=[("relay_agent_information", OPT82)])
    for _ in range(3):
        pkt, opts = ask(ctx, raw)
    assert pkt is not None and "relay_agent_information" not in opts
    assert machine_of(c.decode(raw), ctx).circuit_id is None
    assert caplog.text.count("option 82 via") == 1  # logged once per sender


# -- config --------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "message"), [
    ('[[dhcp.subnet]]\nnetwork = "10.1.0.128/25"\n', "overlaps subnet 10.1.0.0/24"),
    ('[[dhcp.subnet]]\nnetwork = "10.9.0.0/24"\npools = ["10.9.1.1-10.9.1.5"]\n',
     "not inside 10.9.0.0/24"),
    (('[[dhcp.subnet]]\nnetwork = "10.9.0.0/24"\npools = ["10.9.0.1-10.9.0.9", '
     '"10.9.0.5-10.9.0.20"]\n'), "pools overlap"),
    ('[[dhcp.subnet]]\nnetwork = "10.9.0.1/24"\n', "has host bits set"),
    ('[[dhcp.subnet]]\npools = []\n', "network is required"),
    ('[[dhcp.subnet]]\nnetwork = "10.9.0.0/24"\nrouter = "x"\n', "unknown keys"),
    ('[[dhcp.subnet]]\nnetwork = "10.9.0.0/24"\n[dhcp.subnet.options]\nmtu = 1\n',
     "unknown DHCP option 'mtu'"),
    ('[[dhcp.subnet]]\nnetwork = "10.99.0.0/24"\n', "use one or the other"),
    ('[[dhcp.subnet]]\nnetwork = "10.9.0.0/24"\nlease_time = 900\nmax_lease_time = 60\n',
     "exceeds max_lease_time"),
])
def test_config_errors_are_clear(tmp_path, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + extra)
    with pytest.raises(ConfigError, match=message):
        load_config(path, address=SERVER, state_dir=str(tmp_path))


def test_global_option_error_names_the_section(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[dhcp]\noptions = { routers = ["nope"] }\n')
    with pytest.raises(ConfigError, match="dhcp.options: option routers"):
        load_config(path, state_dir=str(tmp_path))


# -- the subnet table and the store ----------------------------------------------------
class CountingStore(Store):
    """A real store that counts full subnet reads."""

    reads = 0

    def subnets(self):
        self.reads += 1
        return super().subnets()


def test_subnet_table_rereads_the_store_only_when_its_generation_moves(tmp_path):
    cfg = load_config(None, address=SERVER,
                      pool="10.99.0.100-10.99.0.110", state_dir=str(tmp_path))
    store = CountingStore(cfg.db_path).open()
    table = SubnetTable(cfg, store)
    assert table.containing("10.4.0.9") is None and store.reads == 1
    for _ in range(5):
        table.refresh()
        assert table.select("10.4.0.1", "0.0.0.0", MAC) is None
    assert store.reads == 1
    store.put_subnet(Subnet("10.4.0.0/24", (("10.4.0.5", "10.4.0.9"),), {}, source="store"))
    table.refresh()
    assert store.reads == 2 and table.containing("10.4.0.9").network == "10.4.0.0/24"
    # a clash that appears at runtime is logged; the previous table stays
    store.put_subnet(Subnet("10.99.0.0/25", (), {}, source="store"))
    table.refresh()
    assert table.containing("10.99.0.5") == table.served
    with pytest.raises(ConfigError, match="overlaps"):
        SubnetTable(cfg, store).refresh()  # a fresh table (server start) refuses
    assert store.delete_subnet("10.99.0.0/25") and not store.delete_subnet("10.99.0.0/25")
    store.close()


def test_store_subnet_is_served_without_reload(ctx):
    ctx.policy.store.put_subnet(Subnet("10.4.0.0/24", (("10.4.0.5", "10.4.0.6"),),
                                       {"routers": ["10.4.0.1"]}, 300, None, "store"))
    ctx.table().refresh()  # what the server does once per batch
    pkt, opts = ask(ctx, packet(LINUX, giaddr="10.4.0.1"))
    assert pkt.yiaddr == "10.4.0.5" and opts["router"] == ("10.4.0.1",)
    assert opts["lease_time"] == (300,)


SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '2');
CREATE TABLE distros (name TEXT PRIMARY KEY, kernel TEXT NOT NULL, initrd TEXT NOT NULL,
    arch TEXT NOT NULL, breed TEXT NOT NULL, variables TEXT NOT NULL DEFAULT '{}');
CREATE TABLE profiles (name TEXT PRIMARY KEY, distro TEXT NOT NULL REFERENCES distros(name),
    template TEXT, cmdline TEXT NOT NULL DEFAULT '', variables TEXT NOT NULL DEFAULT '{}');
CREATE TABLE hosts (mac TEXT PRIMARY KEY, name TEXT, ip TEXT UNIQUE,
    profile TEXT REFERENCES profiles(name), netboot INTEGER NOT NULL,
    token TEXT UNIQUE, token_expires REAL, variables TEXT NOT NULL DEFAULT '{}');
INSERT INTO distros VALUES ('d', '/k', '/i', 'x86_64', 'generic', '{}');
INSERT INTO profiles VALUES ('p', 'd', NULL, '', '{}');
INSERT INTO hosts VALUES ('52:54:00:12:34:56', 'old', '10.99.0.9', 'p', 0, NULL, NULL,
    '{"a": 1}');
"""


def test_migration_from_schema_2_keeps_hosts_and_adds_options_and_subnets(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript(SCHEMA_2)
    db.close()
    store = Store(tmp_path / "old.db").open()
    host = store.host(MAC)
    assert (host.name, host.ip, host.variables, host.options) == \
        ("old", "10.99.0.9", {"a": 1}, {})
    store.add_host(Host(MAC, "p", options={"interface-mtu": 1400}), 60)
    assert store.host(MAC).options == {"interface-mtu": 1400}
    assert store.subnets() == [] and store.subnets_generation() == 0
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == \
        (str(SCHEMA_VERSION),)
    db.close()


# -- reload (in process; the SIGHUP path is tests/protocol/test_dhcp_subnets.py) ------
def test_reload_swaps_subnets_keeps_leases_and_refuses_bad_configs(tmp_path):
    path = tmp_path / "plowshare.toml"
    path.write_text(CONFIG)

    def loader():
        return load_config(path, address=SERVER, state_dir=str(tmp_path / "state"))

    app = Appliance(loader(), config_loader=loader)
    app.open()
    try:
        app.servers = app._build_servers()  # built, not started: no sockets
        ctx = app.servers["dhcp"].ctx
        ask(ctx, packet(LINUX, giaddr=RELAY))
        ask(ctx, packet(LINUX, c.REQUEST, requested="10.1.0.10", server_id=SERVER,
                        giaddr=RELAY))
        path.write_text(CONFIG.replace("interface-mtu = 1400", "interface-mtu = 1300"))
        assert app.reload()
        _, opts = ask(ctx, packet(LINUX, giaddr=RELAY))
        assert opts["interface-mtu"] == (1300,) and app.store.lease_for_mac(MAC).ip == \
            "10.1.0.10"
        path.write_text(CONFIG + "[[dhcp.subnet]]\nnetwork = 'x'\n")
        assert not app.reload()
        moved = load_config(None, address="10.99.0.2", state_dir=str(tmp_path / "state"))
        assert not app.reload(moved)  # a new address needs a restart
        _, opts = ask(ctx, packet(LINUX, giaddr=RELAY))
        assert opts["interface-mtu"] == (1300,)
    finally:
        app.close()


def test_reload_refusals_are_logged(tmp_path, caplog):
    path = tmp_path / "plowshare.toml"
    path.write_text(textwrap.dedent("""\
        [dhcp]
        pool = "10.99.0.100-10.99.0.110"
    """))
    app = Appliance(load_config(path, address=SERVER, state_dir=str(tmp_path)),
                    config_loader=lambda: load_config(path, address=SERVER,
                                                      state_dir=str(tmp_path)))
    path.write_text("[dhcp\n")
    assert not app.reload()
    assert "reload refused, configuration unchanged" in caplog.text
    assert app.config.dhcp.pool_first == "10.99.0.100"
