"""proxyDHCP: the site's DHCP server keeps the addresses, Plowshare boots the machine.

Layout: the usual lab (Plowshare on ``prov0`` = 10.99.<n>.1 in the server
namespace, guests on taps in the wire namespace) plus a third "site"
namespace on the same bridge at 10.99.<n>.2 running dnsmasq *without* any
PXE configuration, handing out 10.99.<n>.150-199.  Plowshare runs with
``[dhcp] mode = "proxy"`` from a config file.

A guest must boot through to the test initrd's ``PLOWSHARE-DONE-OK`` with
every address (firmware, iPXE and the installer's udhcpc) from dnsmasq, and
Plowshare must have answered with ``dhcp-proxy-offer`` and kept no lease.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time

import pytest

from .appliance_proc import PlowshareProcess
from .initrd import DI_KERNEL, build_test_initrd
from .lab import NetLab
from .qemu import Guest, boot_with_retry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BOOT_TIMEOUT = 300
CMDLINE = "console=ttyS0 ks={{ ks_url }} done={{ done_url }}"
MACS = {"bios": "52:54:00:e2:f0:01", "uefi": "52:54:00:e2:f0:02", "probe": "52:54:00:e2:f0:03"}
PROBE_HOST = 240  # a static address outside the site's range for the 4011 probe
SITE_HOST = 2
SITE_RANGE = (150, 199)
DNSMASQ_READY = 10


def _dnsmasq(lab: NetLab, ns: str, work) -> tuple[subprocess.Popen, object]:
    first, last = (lab.host_addr(h) for h in SITE_RANGE)
    leases = work / "dnsmasq.leases"
    log = open(work / "dnsmasq.log", "ab")  # noqa: SIM115 - closed by the fixture
    proc = lab.popen_in_namespace(ns, [
        "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--interface=site0",
        "--bind-interfaces", f"--dhcp-range={first},{last},{lab.netmask},1h",
        f"--dhcp-leasefile={leases}", f"--pid-file={work / 'dnsmasq.pid'}",
        "--log-dhcp", "--log-facility=-", "--user=root", "--group=root"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + DNSMASQ_READY
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited {proc.returncode}: "
                                 f"{(work / 'dnsmasq.log').read_text()}")
        out = lab.run_in_namespace(ns, ["ss", "-uanp"], check=False).stdout
        if ":67 " in out and "dnsmasq" in out:
            return proc, log
        time.sleep(0.2)
    raise AssertionError("dnsmasq did not listen on :67")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("proxydhcp")
    initrd = build_test_initrd()
    lab = NetLab().start()
    server = PlowshareProcess(lab, work / "state", work / "plowshare.log")
    dns_log = None
    try:
        ns = lab.add_peer_namespace("site", SITE_HOST)
        _, dns_log = _dnsmasq(lab, ns, work)
        server.cli("distro", "add", "testinst", "--kernel", str(DI_KERNEL),
                   "--initrd", str(initrd))
        server.cli("profile", "add", "testinst", "--distro", "testinst",
                   "--template", "default.ks.j2", "--cmdline", CMDLINE)
        for fw, mac in MACS.items():
            server.cli("host", "add", mac, "--profile", "testinst", "--name", f"px-{fw}")
        config = work / "plowshare.toml"
        config.write_text('[dhcp]\nmode = "proxy"\n')
        server.start(config_path=config)
        yield lab, server, work
    finally:
        code = server.stop()
        lab.stop()
        lab.remove_peer_namespaces()
        if dns_log is not None:
            dns_log.close()
    assert code == 0, f"plowshare did not stop cleanly on SIGTERM (exit {code})"


def _dnsmasq_lease(work, mac: str) -> str | None:
    """The address dnsmasq's lease file gives ``mac`` (``expiry mac ip name id``)."""
    path = work / "dnsmasq.leases"
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = line.split()
        if len(fields) >= 3 and fields[1].lower() == mac:
            return fields[2]
    return None


def _diagnostics(server: PlowshareProcess, work) -> str:
    dns = (work / "dnsmasq.log").read_text(errors="replace")[-3000:]
    return f"\nserver log:\n{server.log()}\ndnsmasq log:\n{dns}"


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_proxy_boot(site, firmware):
    lab, server, work = site
    mac = MACS[firmware]
    guest = Guest(lab, f"px-{firmware}", mac, workdir=work, firmware=firmware)
    started = time.monotonic()
    try:
        boot_with_retry(guest, r"PLOWSHARE-DONE-(OK|FAIL)", BOOT_TIMEOUT)
        guest.wait_exit(60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{_diagnostics(server, work)}") from None
    finally:
        guest.stop()
    elapsed = time.monotonic() - started
    log = guest.log
    assert "PLOWSHARE-DONE-OK" in log, log[-3000:] + _diagnostics(server, work)

    # every address came from the site's server
    first, last = (ipaddress.IPv4Address(lab.host_addr(h)) for h in SITE_RANGE)
    m = re.search(r"PLOWSHARE-IP: ([0-9.]+)/", log)
    assert m, "installer printed no address"
    assert first <= ipaddress.IPv4Address(m.group(1)) <= last
    leased = _dnsmasq_lease(work, mac)
    assert leased is not None and first <= ipaddress.IPv4Address(leased) <= last

    # Plowshare only proxied: boot info recorded, no lease, no offer/ack of its own
    events = server.events(mac)
    kinds = [e["kind"] for e in events]
    assert "dhcp-proxy-offer" in kinds, kinds
    # Kernel, initrd and TFTP downloads are attributed by client address: in
    # proxy mode through the address the firmware's own REQUEST to the site
    # server named (Store.observe_address), since the store holds no lease
    for kind in ("http-script", "http-kernel", "http-initrd", "kickstart", "install-done"):
        assert kind in kinds, f"{kind} missing from timeline {kinds}"
    if firmware == "uefi":
        assert "tftp-done" in kinds, kinds  # OVMF fetched iPXE over TFTP
    assert not {"dhcp-offer", "dhcp-ack"} & set(kinds)
    assert server.host(mac)["lease"] is None
    offers = [e["detail"] for e in events if e["kind"].startswith("dhcp-proxy")]
    print(f"\n{firmware}: DONE-OK after {elapsed:.1f}s; address {m.group(1)} from dnsmasq; "
          f"proxy events {[(e['kind'], e['detail']) for e in events if 'proxy' in e['kind']]}")
    if firmware == "uefi":
        assert any("snponly.efi" in d for d in offers), offers


PROBE = r"""
import json, socket, sys, time
from scapy.layers.dhcp import BOOTP, DHCP
iface, mac, ip, server = sys.argv[1:5]
chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
pxe = [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003000"),
       ("pxe_client_architecture", b"\x00\x07")]
def answers(sock, xid, want, seconds=10):
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end and len(out) < want:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            data, src = sock.recvfrom(4096)
        except TimeoutError:
            break
        pkt = BOOTP(data)
        if pkt.op == 2 and pkt.xid == xid:
            opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
            out.append({"src": list(src), "yiaddr": pkt.yiaddr, "ciaddr": pkt.ciaddr,
                        "type": opts.get("message-type"), "server": opts.get("server_id"),
                        "file": pkt.file.rstrip(b"\0").decode()})
    return out
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
b.setsockopt(socket.SOL_SOCKET, 25, iface.encode())
b.bind(("0.0.0.0", 68))
for junk in (b"", b"\x01" * 7, b"\x01\x01\x06" + bytes(300), bytes(BOOTP(op=1))):
    b.sendto(junk, ("255.255.255.255", 67))   # malformed first: the loop must survive
    b.sendto(junk, (server, 4011))
disc = BOOTP(op=1, xid=0x67, flags=0x8000, chaddr=chaddr) / DHCP(
    options=[("message-type", 1), *pxe, "end"])
b.sendto(bytes(disc), ("255.255.255.255", 67))
print("67", json.dumps(answers(b, 0x67, 2)))
b.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((ip, 68))
req = BOOTP(op=1, xid=0x4011, ciaddr=ip, chaddr=chaddr) / DHCP(
    options=[("message-type", 3), ("server_id", server), *pxe, "end"])
u.sendto(bytes(req), (server, 4011))
print("4011", json.dumps(answers(u, 0x4011, 1)))
"""


def test_proxy_offer_and_4011_ack_on_the_wire(site):
    """A scripted PXE client on the wire: malformed packets to 67 and 4011
    first, then a DISCOVER gets two offers (the site's with an address, ours
    without), then a unicast ProxyDHCP REQUEST to our 4011 gets
    an ACK from port 4011 with ciaddr echoed (the EDK2 "ProxyBinl" path)."""
    lab, server, _ = site
    mac, ip = MACS["probe"], lab.host_addr(PROBE_HOST)
    iface = lab.add_client_port("pxc0", mac)
    lab.run_in_wire(["ip", "addr", "add", f"{ip}/{lab.prefix_len}", "dev", iface])
    out = lab.run_in_wire([sys.executable, "-c", PROBE, iface, mac, ip, lab.server_addr],
                          timeout=60).stdout
    results = {key: json.loads(rest) for key, _, rest in
               (line.partition(" ") for line in out.splitlines()) if key in ("67", "4011")}
    site_addr = lab.host_addr(SITE_HOST)
    offers = {o["server"]: o for o in results["67"]}
    assert set(offers) == {site_addr, lab.server_addr}, results
    assert offers[site_addr]["yiaddr"] != "0.0.0.0"   # the site's server gives the address
    ours = offers[lab.server_addr]
    assert (ours["yiaddr"], ours["type"], ours["file"]) == ("0.0.0.0", 2, "ipxe/snponly.efi")
    (ack,) = results["4011"]
    assert ack["src"] == [lab.server_addr, 4011], ack
    assert (ack["yiaddr"], ack["ciaddr"], ack["type"], ack["file"]) == (
        "0.0.0.0", ip, 5, "ipxe/snponly.efi")
    kinds = [e["kind"] for e in server.events(mac)]
    assert kinds == ["dhcp-proxy-offer", "dhcp-proxy-ack"], kinds
    assert server.host(mac)["lease"] is None
