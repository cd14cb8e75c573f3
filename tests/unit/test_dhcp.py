"""DHCP decisions against the request fingerprints of real firmware.

The packets are built with scapy to the fingerprints recorded in
shared/NETBOOT-NOTES.md (option 60, 77, 93 and the broadcast flag as each
client really sends them); the replies are decoded with scapy again, so the
assertions are about bytes on the wire, not about our own data classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from appliance.config import load_config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.leases import Allocator
from appliance.model import Distro, Host, Profile
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers import dhcp_codec as c
from appliance.servers.dhcp import DhcpContext, make_reply
from appliance.store import Store
from appliance.templates import TemplateLibrary

SERVER = "10.99.0.1"
MAC = "52:54:00:12:34:56"
UUID = b"\x00" + bytes(range(16))

SEABIOS_IPXE_ROM = {"vendor": b"PXEClient:Arch:00000:UNDI:002001", "user": b"iPXE", "arch": 0,
                        "broadcast": False}
UNDIONLY_KPXE = dict(SEABIOS_IPXE_ROM, broadcast=True)
OVMF_PXE = {"vendor": b"PXEClient:Arch:00007:UNDI:003000", "user": None, "arch": 7,
                "broadcast": True, "uuid": UUID}
IPXE_EFI = {"vendor": b"PXEClient:Arch:00007:UNDI:003010", "user": b"iPXE", "arch": 7,
                "broadcast": False}
LINUX = {"vendor": None, "user": None, "arch": None, "broadcast": False}


def packet(fp: dict, msg=c.DISCOVER, mac=MAC, requested=None, server_id=None,
           ciaddr="0.0.0.0", giaddr="0.0.0.0", extra=()) -> bytes:
    opts = [("message-type", msg)]
    if fp.get("vendor"):
        opts.append(("vendor_class_id", fp["vendor"]))
    if fp.get("user"):
        opts.append(("user_class", fp["user"]))
    if fp.get("arch") is not None:
        opts.append(("pxe_client_architecture", fp["arch"].to_bytes(2, "big")))
    if fp.get("uuid"):
        opts.append(("pxe_client_machine_identifier", fp["uuid"]))
    if requested:
        opts.append(("requested_addr", requested))
    if server_id:
        opts.append(("server_id", server_id))
    opts += list(extra) + ["end"]
    chaddr = bytes.fromhex(mac.replace(":", ""))
    return bytes(BOOTP(op=1, xid=0x1234, flags=0x8000 if fp["broadcast"] else 0,
                       ciaddr=ciaddr, giaddr=giaddr, chaddr=chaddr + b"\0" * 10)
                 / DHCP(options=opts))


def dhcp_context(cfg, tmp_path, interface: str | None = "prov0", catalog: bool = True):
    """(DhcpContext, store) over a fresh store; with ``catalog``, distro ``d``,
    profile ``p`` and host ``MAC`` (``node1``) in it."""
    store = Store(cfg.db_path).open()
    if catalog:
        kernel = tmp_path / "linux"
        kernel.write_bytes(b"k")
        store.add_distro(Distro("d", str(kernel), str(kernel)))
        store.add_profile(Profile("p", "d", None, "ks={{ ks_url }}"))
        store.add_host(Host(MAC, "p", name="node1"), 3600)
    renderer = Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path))
    return DhcpContext(cfg, BootPolicy(store, cfg, renderer),
                       Allocator(store, cfg.dhcp, SERVER), EventLog(store), interface), store


def recording_server(tmp_path, pool: str):
    """(server, sent, store): a DhcpServer over an empty store with its writer
    attached and no socket; every reply it would send is appended to ``sent``.
    The caller stops ``server.writer`` and closes ``store``."""
    from appliance.servers.dhcp import DhcpServer

    cfg = load_config(None, address=SERVER, pool=pool, state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    ctx, store = dhcp_context(cfg, tmp_path, interface=None, catalog=False)
    sent = []

    class Recording(DhcpServer):
        def send(self, reply, payload):
            sent.append(reply)

    server = Recording(ctx)
    server.attach_writer()
    return server, sent, store


@pytest.fixture
def ctx(tmp_path):
    cfg = load_config(None, address=SERVER, pool="10.99.0.100-10.99.0.110",
                      state_dir=str(tmp_path), kickstarts_dir=str(tmp_path))
    ctx, store = dhcp_context(cfg, tmp_path)
    yield ctx
    store.close()


def answer(ctx, payload: bytes):
    req = c.decode(payload)
    assert req is not None
    reply = make_reply(req, ctx)
    if reply is None:
        return None
    pkt = BOOTP(c.encode(reply, SERVER))
    opts = {k: v for k, v in (o for o in pkt[DHCP].options if isinstance(o, tuple))}
    return pkt, opts


def test_seabios_ipxe_rom_gets_script_url_and_no_pxedhcp(ctx):
    pkt, opts = answer(ctx, packet(SEABIOS_IPXE_ROM))
    assert opts["message-type"] == c.OFFER
    url = f"http://{SERVER}/boot/{MAC}.ipxe"
    assert opts["boot-file-name"] == url.encode()
    assert pkt.file.rstrip(b"\0") == url.encode()
    assert opts[c.OPT_IPXE_ENCAP] == bytes([c.IPXE_NO_PXEDHCP, 1, 1])
    assert pkt.siaddr == SERVER and opts["server_id"] == SERVER
    assert pkt.yiaddr == "10.99.0.100"
    assert pkt.flags == 0


def test_undionly_broadcast_flag_is_echoed(ctx):
    pkt, _ = answer(ctx, packet(UNDIONLY_KPXE))
    assert pkt.flags == c.FLAG_BROADCAST


def test_ovmf_pxe_gets_efi_loader_over_tftp_with_pxe_options(ctx):
    pkt, opts = answer(ctx, packet(OVMF_PXE))
    assert pkt.file.rstrip(b"\0") == b"ipxe/snponly.efi"
    assert opts["vendor_class_id"] == b"PXEClient"
    assert opts["tftp_server_name"] == SERVER.encode()
    assert opts["pxe_client_machine_identifier"] == UUID  # option 97 echoed
    assert opts["vendor_specific"][:3] == bytes([c.PXE_DISCOVERY_CONTROL, 1, 8])


def test_plain_pxe_bios_rom_gets_undionly(ctx):
    fp = {"vendor": b"PXEClient:Arch:00000:UNDI:002001", "user": None, "arch": 0,
              "broadcast": True}
    pkt, _ = answer(ctx, packet(fp))
    assert pkt.file.rstrip(b"\0") == b"ipxe/undionly.kpxe"


def test_ipxe_efi_gets_script(ctx):
    _pkt, opts = answer(ctx, packet(IPXE_EFI))
    assert opts["boot-file-name"].endswith(b"/boot/52:54:00:12:34:56.ipxe")


def test_plain_linux_client_gets_address_without_boot_info(ctx):
    pkt, opts = answer(ctx, packet(LINUX))
    assert pkt.yiaddr == "10.99.0.100"
    assert "boot-file-name" not in opts and "vendor_class_id" not in opts
    assert pkt.file.rstrip(b"\0") == b""
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["hostname"] == b"node1"


@pytest.mark.parametrize("arch", [1, 2, 12, 31, 41, 42, 255, 0xFFFF])
def test_unservable_or_unknown_arch_gets_no_boot_file_and_no_crash(ctx, arch):
    fp = {"vendor": b"PXEClient:Arch:%05d:UNDI:003000" % arch, "user": None, "arch": arch,
              "broadcast": True}
    pkt, opts = answer(ctx, packet(fp))
    assert pkt.yiaddr == "10.99.0.100"
    assert "boot-file-name" not in opts


def test_arch_override_maps_unknown_value(ctx, tmp_path):
    from appliance.model import Firmware
    dhcp = dataclasses.replace(ctx.config.dhcp, arch_overrides={4242: Firmware.EFI_X64})
    ctx.config = dataclasses.replace(ctx.config, dhcp=dhcp)
    ctx.policy.config = ctx.config
    fp = {"vendor": b"PXEClient", "user": None, "arch": 4242, "broadcast": True}
    pkt, _ = answer(ctx, packet(fp))
    assert pkt.file.rstrip(b"\0") == b"ipxe/snponly.efi"


def test_request_acks_only_after_lease_is_durable(ctx):
    answer(ctx, packet(LINUX))
    _pkt, opts = answer(ctx, packet(LINUX, c.REQUEST, requested="10.99.0.100",
                                   server_id=SERVER))
    assert opts["message-type"] == c.ACK
    # what was acknowledged is already in the database, read by a new connection
    other = Store(ctx.config.db_path).open()
    lease = other.lease_for_mac(MAC)
    other.close()
    assert lease.ip == "10.99.0.100" and lease.state == "bound"


def test_request_for_someone_elses_address_is_naked(ctx):
    other = "52:54:00:00:00:99"
    answer(ctx, packet(LINUX, mac=other))
    answer(ctx, packet(LINUX, c.REQUEST, mac=other, requested="10.99.0.100",
                       server_id=SERVER))
    _, opts = answer(ctx, packet(LINUX, c.REQUEST, requested="10.99.0.100"))
    assert opts["message-type"] == c.NAK


def test_request_for_another_server_is_ignored(ctx):
    assert answer(ctx, packet(LINUX, c.REQUEST, requested="10.99.0.100",
                              server_id="10.99.0.2")) is None


def test_two_clients_get_different_offers(ctx):
    a, _ = answer(ctx, packet(LINUX, mac="52:54:00:00:00:01"))
    b, _ = answer(ctx, packet(LINUX, mac="52:54:00:00:00:02"))
    assert a.yiaddr != b.yiaddr


def test_reservation_wins(ctx):
    ctx.policy.store.add_host(Host("52:54:00:00:00:07", "p", ip="10.99.0.50"), 60)
    pkt, _ = answer(ctx, packet(LINUX, mac="52:54:00:00:00:07"))
    assert pkt.yiaddr == "10.99.0.50"


def test_pool_exhaustion_is_silent(ctx):
    for n in range(11):
        assert answer(ctx, packet(LINUX, mac=f"52:54:00:00:01:{n:02x}")) is not None
    assert answer(ctx, packet(LINUX, mac="52:54:00:00:02:00")) is None


def test_decline_keeps_address_out_of_pool(ctx):
    answer(ctx, packet(LINUX))
    req = c.decode(packet(LINUX, c.DECLINE, requested="10.99.0.100", server_id=SERVER))
    assert make_reply(req, ctx) is None
    pkt, _ = answer(ctx, packet(LINUX))
    assert pkt.yiaddr == "10.99.0.101"


def test_netboot_off_still_answers_with_loader(ctx):
    ctx.policy.store.set_netboot(MAC, False, 60)
    _pkt, opts = answer(ctx, packet(SEABIOS_IPXE_ROM))
    assert opts["boot-file-name"].endswith(b".ipxe")


def test_unknown_mac_pxe_gets_address_but_no_boot(ctx):
    pkt, opts = answer(ctx, packet(OVMF_PXE, mac="52:54:00:ab:cd:ef"))
    assert pkt.yiaddr and "boot-file-name" not in opts


def test_relay_outside_subnet_is_ignored(ctx):
    assert answer(ctx, packet(LINUX, giaddr="192.0.2.1")) is None


@pytest.mark.parametrize("payload", [
    b"", b"\x01", b"\x01" * 300, bytes(240),
    packet(LINUX)[:236],                       # cut before the magic cookie
    packet(LINUX)[:241],                       # cookie then truncated option
    packet(LINUX).replace(b"\x35\x01\x01", b"\x35\x01\x63"),  # message type 99
    packet(LINUX).replace(b"\x35\x01\x01", b"\x35\x05\x01"),  # option overruns
])
def test_malformed_packets_decode_to_none_without_raising(payload):
    assert c.decode(payload) is None


def test_odd_option_93_does_not_crash(ctx):
    raw = packet(LINUX, extra=[(93, b"\x00")])  # one byte instead of two
    req = c.decode(raw)
    assert req is not None and req.arch is None


# -- golden packets: bytes captured from real firmware -------------------------
# Recorded with `sudo .venv/bin/python -m tests.e2e.capture_dhcp` (server
# 10.99.88.1, pool from .100).  undionly.kpxe is not in QEMU's boot path (the
# BIOS NIC ROM is already iPXE); NETBOOT-NOTES records that it differs from
# the ROM only by the broadcast flag, so its packet is the ROM's with the flag.
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "dhcp"
GOLDEN_SERVER = "10.99.88.1"


def golden(name: str, broadcast: bool = False) -> bytes:
    raw = bytearray.fromhex((GOLDEN / f"{name}.hex").read_text().strip())
    if broadcast:
        raw[10] |= 0x80  # BOOTP flags, high bit
    return bytes(raw)


@pytest.fixture
def gctx(ctx):
    """The unit fixture re-addressed to the capture's network."""
    cfg = ctx.config
    dhcp = dataclasses.replace(cfg.dhcp, pool_first="10.99.88.100", pool_last="10.99.88.150")
    ctx.config = dataclasses.replace(cfg, address=GOLDEN_SERVER, dhcp=dhcp)
    ctx.policy.config = ctx.config
    ctx.allocator = Allocator(ctx.policy.store, dhcp, GOLDEN_SERVER)
    for n in range(4):
        ctx.policy.store.add_host(Host(golden_mac(n), "p"), 3600)
    return ctx


def golden_mac(n: int) -> str:
    return f"52:54:00:90:00:0{n}"


def greply(ctx, payload):
    reply = make_reply(c.decode(payload), ctx)
    pkt = BOOTP(c.encode(reply, GOLDEN_SERVER))
    return pkt, {k: v for k, v in (o for o in pkt[DHCP].options if isinstance(o, tuple))}


@pytest.mark.parametrize(("name", "broadcast", "bootfile"), [
    ("seabios-ipxe-rom", False, b"http://10.99.88.1/boot/52:54:00:90:00:00.ipxe"),
    ("undionly-kpxe", True, b"http://10.99.88.1/boot/52:54:00:90:00:00.ipxe"),
    ("ovmf-pxe", True, b"ipxe/snponly.efi"),
    ("snponly-efi", False, b"http://10.99.88.1/boot/52:54:00:90:00:01.ipxe"),
])
def test_golden_firmware_discover_and_request(gctx, name, broadcast, bootfile):
    source = "seabios-ipxe-rom" if name == "undionly-kpxe" else name
    pkt, opts = greply(gctx, golden(f"{source}-discover", broadcast))
    assert opts["message-type"] == c.OFFER
    assert pkt.file.rstrip(b"\0") == bootfile
    assert bool(pkt.flags & c.FLAG_BROADCAST) == broadcast
    assert pkt.siaddr == GOLDEN_SERVER
    request = golden(f"{source}-request", broadcast)
    ack, aopts = greply(gctx, request)
    # the captured REQUEST names the address it was offered in the capture
    assert aopts["message-type"] == c.ACK
    assert ack.yiaddr == c.decode(request).requested_ip
    assert ack.file.rstrip(b"\0") == bootfile
    assert "pxe_client_machine_identifier" in aopts  # option 97 echoed


def test_golden_plain_linux_client(gctx):
    pkt, opts = greply(gctx, golden("udhcpc-discover"))
    assert opts["message-type"] == c.OFFER and pkt.file.rstrip(b"\0") == b""
    ack, aopts = greply(gctx, golden("udhcpc-request"))
    assert aopts["message-type"] == c.ACK and ack.yiaddr == pkt.yiaddr
    assert "boot-file-name" not in aopts
