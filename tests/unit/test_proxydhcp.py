"""proxyDHCP decisions against packets captured from real firmware.

The golden packets (tests/data/dhcp/*.hex) were recorded against a server at
10.99.88.1; in proxy mode the same requests must get boot information with
no address, and a plain DHCP client must get nothing.  Replies are decoded
with scapy again, so the assertions are about bytes on the wire.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from appliance.config import ConfigError, load_config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.model import Distro, Host, Profile
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers import dhcp_codec as c
from appliance.servers.proxydhcp import (
    PXE_BOOT_ITEM,
    ProxyContext,
    ProxyDhcpServer,
    make_proxy_reply,
    pxe_boot_item,
)
from appliance.store import Store
from appliance.templates import TemplateLibrary

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "dhcp"
SERVER = "10.99.88.1"
BIOS_MAC, EFI_MAC = "52:54:00:90:00:00", "52:54:00:90:00:01"
SCRIPT = f"http://{SERVER}/boot/{{}}.ipxe"
DISCOVERY_USE_BOOTFILE = bytes([c.PXE_DISCOVERY_CONTROL, 1, c.PXE_DISCOVERY_USE_BOOTFILE])


def golden(name: str) -> bytes:
    return bytes.fromhex((GOLDEN / f"{name}.hex").read_text().strip())


@pytest.fixture
def ctx(tmp_path):
    cfg = load_config(None, address=SERVER, state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    store = Store(cfg.db_path).open()
    kernel = tmp_path / "linux"
    kernel.write_bytes(b"k")
    store.add_distro(Distro("d", str(kernel), str(kernel)))
    store.add_profile(Profile("p", "d", None, "ks={{ ks_url }}"))
    for mac in (BIOS_MAC, EFI_MAC):
        store.add_host(Host(mac, "p"), 3600)
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path))
    yield ProxyContext(cfg, BootPolicy(store, cfg, renderer), EventLog(store), "prov0")
    store.close()


def reply(ctx, payload: bytes, **kw):
    req = c.decode(payload)
    assert req is not None
    rep = make_proxy_reply(req, ctx, **kw)
    if rep is None:
        return None
    pkt = BOOTP(c.encode(rep, SERVER))
    opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
    return pkt, opts


def assert_proxy(pkt, opts, kind: int, bootfile: bytes) -> None:
    assert opts["message-type"] == kind
    assert pkt.yiaddr == "0.0.0.0"
    assert pkt.siaddr == SERVER and opts["server_id"] == SERVER
    assert opts["vendor_class_id"] == b"PXEClient"
    assert opts["vendor_specific"] == DISCOVERY_USE_BOOTFILE + bytes([c.OPT_END])
    assert pkt.file.rstrip(b"\0") == bootfile
    assert opts["boot-file-name"] == bootfile
    assert c.OPT_IPXE_ENCAP not in opts  # no-pxedhcp never in proxy mode
    for addr_opt in ("lease_time", "subnet_mask", "router", "renewal_time"):
        assert addr_opt not in opts


@pytest.mark.parametrize(("name", "bootfile"), [
    ("seabios-ipxe-rom", SCRIPT.format(BIOS_MAC).encode()),
    ("ovmf-pxe", b"ipxe/snponly.efi"),
    ("snponly-efi", SCRIPT.format(EFI_MAC).encode()),
])
def test_golden_pxe_discover_gets_proxy_offer(ctx, name, bootfile):
    pkt, opts = reply(ctx, golden(f"{name}-discover"))
    assert_proxy(pkt, opts, c.OFFER, bootfile)
    assert opts["pxe_client_machine_identifier"] == c.decode(golden(f"{name}-discover")).uuid


def test_ovmf_offer_names_tftp_server(ctx):
    _, opts = reply(ctx, golden("ovmf-pxe-discover"))
    assert opts["tftp_server_name"] == SERVER.encode()


@pytest.mark.parametrize("name", ["seabios-ipxe-rom", "ovmf-pxe", "snponly-efi", "udhcpc"])
def test_requests_on_67_belong_to_the_site_server(ctx, name):
    assert reply(ctx, golden(f"{name}-request")) is None


def test_udhcpc_gets_nothing(ctx):
    assert reply(ctx, golden("udhcpc-discover")) is None
    assert reply(ctx, golden("udhcpc-discover"), pxe_port=True) is None


def pxe_request(base: str, ciaddr: str = "10.99.88.160", server_id: str | None = SERVER,
                vendor_extra: bytes = b"") -> bytes:
    """A captured REQUEST turned into a ProxyDHCP REQUEST to port 4011."""
    pkt = BOOTP(golden(f"{base}-request"))
    pkt.ciaddr = ciaddr
    opts = [o for o in pkt[DHCP].options
            if not (isinstance(o, tuple) and o[0] in ("requested_addr", "server_id"))]
    if server_id:
        opts.insert(1, ("server_id", server_id))
    if vendor_extra:
        opts.insert(1, ("vendor_specific", vendor_extra))
    pkt[DHCP].options = opts
    return bytes(pkt)


@pytest.mark.parametrize(("name", "bootfile"), [
    ("ovmf-pxe", b"ipxe/snponly.efi"),
    ("seabios-ipxe-rom", SCRIPT.format(BIOS_MAC).encode()),
])
def test_request_on_4011_gets_ack_with_ciaddr_echoed(ctx, name, bootfile):
    pkt, opts = reply(ctx, pxe_request(name), pxe_port=True)
    assert_proxy(pkt, opts, c.ACK, bootfile)
    assert pkt.ciaddr == "10.99.88.160"


def test_request_on_4011_for_another_server_is_ignored(ctx):
    assert reply(ctx, pxe_request("ovmf-pxe", server_id="10.99.88.2"), pxe_port=True) is None


def test_discover_on_4011_is_ignored(ctx):
    assert reply(ctx, golden("ovmf-pxe-discover"), pxe_port=True) is None


def test_boot_item_is_echoed_in_option_43(ctx):
    item = bytes([0x80, 0x01, 0x00, 0x00])
    payload = pxe_request("ovmf-pxe", vendor_extra=bytes([PXE_BOOT_ITEM, 4]) + item + b"\xff")
    got = pxe_boot_item(payload)
    assert got == item
    _, opts = reply(ctx, payload, pxe_port=True, boot_item=got)
    assert opts["vendor_specific"] == (DISCOVERY_USE_BOOTFILE + bytes([PXE_BOOT_ITEM, 4])
                                       + item + bytes([c.OPT_END]))


@pytest.mark.parametrize("payload", [b"", b"\x01" * 10, b"\xff" * 300,
                                     golden("ovmf-pxe-discover")[:240]])
def test_boot_item_of_junk_is_none(payload):
    assert pxe_boot_item(payload) is None


def test_unknown_mac_gets_nothing(ctx):
    raw = bytearray(golden("seabios-ipxe-rom-discover"))
    raw[28:34] = bytes.fromhex("525400ffffff")  # chaddr
    assert reply(ctx, bytes(raw)) is None


def test_unknown_mac_with_unknown_boot_gets_default_profile(ctx):
    dhcp = dataclasses.replace(ctx.config.dhcp, unknown="boot", default_profile="p")
    ctx.config = dataclasses.replace(ctx.config, dhcp=dhcp)
    ctx.policy.config = ctx.config
    raw = bytearray(golden("seabios-ipxe-rom-discover"))
    raw[28:34] = bytes.fromhex("525400ffffff")
    pkt, _ = reply(ctx, bytes(raw))
    assert pkt.file.rstrip(b"\0") == SCRIPT.format("52:54:00:ff:ff:ff").encode()


def test_netboot_off_still_gets_a_boot_file(ctx):
    ctx.policy.store.set_netboot(BIOS_MAC, False, 3600)
    pkt, _ = reply(ctx, golden("seabios-ipxe-rom-discover"))
    assert pkt.file.rstrip(b"\0") == SCRIPT.format(BIOS_MAC).encode()


def test_relay_outside_subnet_is_ignored(ctx):
    pkt = BOOTP(golden("ovmf-pxe-discover"))
    pkt.giaddr = "192.0.2.1"
    assert reply(ctx, bytes(pkt)) is None


@pytest.mark.parametrize("payload", [b"", b"\x00" * 10, b"\x01" * 300,
                                     golden("ovmf-pxe-discover")[:236],
                                     golden("ovmf-pxe-discover")[:250]])
def test_malformed_is_silent(ctx, payload):
    server = ProxyDhcpServer(ctx)
    sent = []
    server._sendto = lambda *a: sent.append(a)
    server.handle(payload, ("10.99.88.160", 68))
    server.handle(payload, ("10.99.88.160", 68), pxe_port=True)
    assert sent == []
    req = c.decode(payload)
    assert req is None or make_proxy_reply(req, ctx) is None


def test_handle_sends_offer_by_broadcast_and_ack_to_source(ctx):
    server = ProxyDhcpServer(ctx)
    sent = []
    server._sendto = lambda data, dest, pxe: sent.append((dest, pxe))
    server.handle(golden("ovmf-pxe-discover"), ("0.0.0.0", 68))
    server.handle(pxe_request("ovmf-pxe"), ("10.99.88.160", 68), pxe_port=True)
    assert sent == [(("255.255.255.255", 68), False), (("10.99.88.160", 68), True)]
    kinds = [e.kind for e in ctx.events.timeline(EFI_MAC)]
    assert kinds == ["dhcp-proxy-offer", "dhcp-proxy-ack"]
    assert "ipxe/snponly.efi" in ctx.events.timeline(EFI_MAC)[0].detail
    assert ctx.policy.store.lease_for_mac(EFI_MAC) is None


def test_relayed_offer_goes_to_the_relay(ctx):
    pkt = BOOTP(golden("ovmf-pxe-discover"))
    pkt.giaddr = "10.99.88.254"
    server = ProxyDhcpServer(ctx)
    sent = []
    server._sendto = lambda data, dest, pxe: sent.append(dest)
    server.handle(bytes(pkt), ("10.99.88.254", 67))
    assert sent == [("10.99.88.254", 67)]


def test_config_mode(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[dhcp]\nmode = "proxy"\n')
    assert load_config(path).dhcp.mode == "proxy"
    assert load_config(None).dhcp.mode == "server"
    path.write_text('[dhcp]\nmode = "relay"\n')
    with pytest.raises(ConfigError, match="dhcp.mode"):
        load_config(path)


def test_appliance_builds_the_proxy_server_in_proxy_mode(tmp_path):
    from appliance.app import Appliance
    from appliance.servers.dhcp import DhcpServer

    path = tmp_path / "p.toml"
    path.write_text('[dhcp]\nmode = "proxy"\n')
    proxy = Appliance(load_config(path, state_dir=str(tmp_path)))._build_servers()
    assert isinstance(proxy["dhcp"], ProxyDhcpServer)
    server = Appliance(load_config(None, state_dir=str(tmp_path)))._build_servers()
    assert isinstance(server["dhcp"], DhcpServer)


# ------------------------------------------------------- observed addresses


@pytest.mark.parametrize("name", ["seabios-ipxe-rom", "ovmf-pxe", "snponly-efi"])
def test_boot_client_request_to_the_site_server_is_observed(ctx, name):
    """The REQUEST a PXE client broadcasts to the other server names the address
    it will use (option 50): that is what attributes its TFTP/HTTP requests."""
    from appliance.servers.proxydhcp import observed_address

    req = c.decode(golden(f"{name}-request"))
    assert req.requested_ip is not None
    assert observed_address(req, ctx, pxe_port=False) == req.requested_ip


def test_observed_address_rules(ctx):
    from appliance.servers.proxydhcp import observed_address

    assert observed_address(c.decode(golden("udhcpc-request")), ctx, False) is None  # not PXE
    assert observed_address(c.decode(golden("ovmf-pxe-discover")), ctx, False) is None
    on_4011 = c.decode(pxe_request("ovmf-pxe", ciaddr="10.99.88.170"))
    assert observed_address(on_4011, ctx, pxe_port=True) == "10.99.88.170"
    outside = c.decode(pxe_request("ovmf-pxe", ciaddr="192.0.2.7"))
    assert observed_address(outside, ctx, pxe_port=True) is None  # not our subnet


def test_proxy_records_observation_and_store_attributes_it(ctx):
    store = ctx.policy.store
    ctx = dataclasses.replace(ctx, observe=store.observe_address)
    server = ProxyDhcpServer(ctx)  # not started: handle() needs no socket
    req = c.decode(golden("ovmf-pxe-request"))
    assert store.mac_for_ip(req.requested_ip) is None
    server.handle(golden("ovmf-pxe-request"), ("0.0.0.0", 68))
    assert store.mac_for_ip(req.requested_ip) == req.mac
    # a later user of the address takes it over; a stale observation does not count
    assert store.observe_address("52:54:00:aa:bb:cc", req.requested_ip, 1000.0)
    assert not store.observe_address("52:54:00:aa:bb:cc", req.requested_ip, 1000.0)
    assert store.observed_mac(req.requested_ip, now=1000.0 + 60) == "52:54:00:aa:bb:cc"
    assert store.mac_for_ip(req.requested_ip) is None  # 1970: long expired
