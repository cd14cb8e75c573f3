"""Issue #6 acceptance: guests boot what an imported Cobbler dhcpd.conf gives them.

One lab and one ``plowshare serve``.  A dhcpd.conf shaped like Cobbler's
rendered ``dhcp.template`` (tests/data/dhcpd/cobbler-*.conf) is written for
the lab's subnet and guest MACs and imported with the real CLI while the
server runs.  Then a SeaBIOS guest (QEMU's iPXE ROM: its first DHCP already
says iPXE) and an OVMF guest (ROM removed: plain UEFI PXE, arch 7) boot.
Each must get the file's fixed-address and next-server and fetch exactly
what the file names for it -- the TFTP loader for its arch (UEFI), then the
iPXE URL -- and nothing else; the policy must say it used the imported
rules (the DHCP events and ``plowshare explain`` name them).  Two hosts
have Cobbler's full per-host ``if iPXE {URL} else {loader}`` (host
statements win over the class's); a second UEFI host routes only iPXE, so
its loader comes from the ``pxeclients`` class's ``system-arch = 00:07`` test
against OVMF's real request.  A sniffer on
the wire records the replies' siaddr / file as the clients saw them.

The hosts have no Plowshare profile, so the iPXE URL (Plowshare's own
``/boot/<mac>.ipxe``) answers the local-boot script: the boot ends there.
"""

from __future__ import annotations

import json
import os
import re
from string import Template

import pytest

from .appliance_proc import POOL_FIRST, POOL_LAST, PlowshareProcess
from .dhcp_raw import start_sniffer
from .lab import UPLINK_IFACE, NetLab
from .qemu import Guest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BOOT_TIMEOUT = 300  # TCG: BIOS reaches the script in ~15 s, UEFI in ~35 s; be generous
# guest -> (firmware, MAC index, fixed-address host part (outside the pool on
# purpose), loader the file names for its arch, given by the host itself?)
GUESTS = {
    "bios": ("bios", 1, 51, "ipxe/undionly.kpxe", True),
    "uefi": ("uefi", 2, 52, "ipxe/snponly.efi", True),
    "uefi-class": ("uefi", 3, 53, "ipxe/snponly.efi", False),
}
ARCH = {"bios": 0, "uefi": 7}  # option 93 (RFC 4578 2.1) each firmware sends
FIRMWARE_LABEL = {"bios": "bios", "uefi": "efi-x64"}
IMPORTED_LOCAL = "has imported boot rules and no install profile"  # ipxe-local.j2's echo
LOCAL_ECHO_TIMEOUT = 60  # seconds from the script fetch to iPXE running it
# statements of Cobbler's template that have no Plowshare equivalent: one warning each
UNMAPPED = ("ddns-update-style", "allow ", "ignore ", "set ")

COBBLER_CONF = Template("""\
# ******************************************************************
# Cobbler managed dhcpd.conf file
#
# generated from cobbler dhcp.conf template (rendered for the e2e lab)
# ******************************************************************

ddns-update-style interim;

allow booting;
allow bootp;

ignore client-updates;
set vendorclass = option vendor-class-identifier;

option system-arch code 93 = unsigned integer 16;

subnet $network netmask $netmask {
     option routers             $server;
     option domain-name-servers $server;
     option subnet-mask         $netmask;
     range dynamic-bootp        $pool_first $pool_last;
     default-lease-time         21600;
     max-lease-time             43200;
     next-server                $server;
     class "pxeclients" {
          match if substring (option vendor-class-identifier, 0, 9) = "PXEClient";
          if option system-arch = 00:07 {
              filename "ipxe/snponly.efi";
          } else {
              filename "ipxe/undionly.kpxe";
          }
     }
}

# group for Cobbler DHCP tag: default
group {
$hosts}
""")

COBBLER_HOST = Template("""\
    host $name-eth0 {
        hardware ethernet $mac;
        fixed-address $ip;
        option host-name "$name.example.org";
        option subnet-mask $netmask;
        option routers $server;
        if exists user-class and option user-class = "iPXE" {
            filename "$url";
        }$host_else
        next-server $server;
    }
""")
HOST_ELSE = Template(""" else {
            filename "$per_arch";
        }""")


def script_url(lab: NetLab, mac: str) -> str:
    return f"http://{lab.server_addr}/boot/{mac}.ipxe"


def guest_plan(lab: NetLab, guest: str) -> dict:
    """What the file gives ``guest`` (and so what it must boot)."""
    firmware, index, host, per_arch, host_else = GUESTS[guest]
    mac = lab.guest_mac(index)
    return {"mac": mac, "name": f"imp-{guest}", "ip": lab.host_addr(host),
            "url": script_url(lab, mac), "per_arch": per_arch, "firmware": firmware,
            "host_else": host_else}


def render_cobbler_conf(lab: NetLab) -> str:
    common = {"server": lab.server_addr, "netmask": lab.netmask}
    hosts = ""
    for guest in GUESTS:
        want = guest_plan(lab, guest)
        host_else = HOST_ELSE.substitute(want) if want["host_else"] else ""
        hosts += COBBLER_HOST.substitute(want, **common, host_else=host_else)
    return COBBLER_CONF.substitute(
        network=lab.network.network_address, hosts=hosts, **common,
        pool_first=lab.host_addr(POOL_FIRST), pool_last=lab.host_addr(POOL_LAST))


class Site:
    """The module's lab, server, config file, imported file and import summary."""

    def __init__(self, lab, server, work, config, conf, replies):
        self.lab, self.server, self.work = lab, server, work
        self.config, self.conf, self.replies = config, conf, replies
        self.summary: dict = {}

    def cli(self, *args: str) -> str:
        """The CLI with the server's config (its subnet and base URL)."""
        return self.server.cli("--config", str(self.config), *args)

    def wire_replies(self, mac: str) -> list[dict]:
        lines = self.replies.read_text().splitlines() if self.replies.exists() else []
        return [r for r in map(json.loads, lines) if r["mac"] == mac]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("dhcpd-import")
    lab = NetLab().start()
    server = PlowshareProcess(lab, work / "state", work / "plowshare.log")
    sniffer = None
    try:
        config = work / "plowshare.toml"
        config.write_text(f'[server]\ninterface = "{lab.server_iface}"\n'
                          f'address = "{lab.server_addr}"\n[dhcp]\n'
                          f'pool = "{lab.host_addr(POOL_FIRST)}-{lab.host_addr(POOL_LAST)}"\n')
        server.start(config_path=config)
        replies = work / "replies.jsonl"
        sniffer = start_sniffer(lab, UPLINK_IFACE, replies, "offer,ack")
        conf = work / "cobbler-lab.conf"
        conf.write_text(render_cobbler_conf(lab))
        s = Site(lab, server, work, config, conf, replies)
        # imported into the running appliance: no restart, no generated files
        s.summary = json.loads(s.cli("import-dhcpd", str(conf), "--json"))
        yield s
    finally:
        if sniffer is not None:
            sniffer.terminate()
            sniffer.wait(timeout=30)
        code = server.stop()
        lab.stop()
    assert code == 0, f"plowshare did not stop cleanly on SIGTERM (exit {code})"


def _issue_line(issue: str, path) -> int:
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", issue)
    assert m, f"issue does not name {path}:LINE: {issue!r}"
    return int(m.group(1))


def test_import_summary(site):
    summary, lab = site.summary, site.lab
    assert summary["applied"] is True and summary["errors"] == [], summary
    assert summary["rejections"] == [] and summary["removed"] == []
    added = {h["mac"]: h for h in summary["added"]}
    assert set(added) == {guest_plan(lab, g)["mac"] for g in GUESTS}
    for guest in GUESTS:
        want = guest_plan(lab, guest)
        host = added[want["mac"]]
        assert (host["ip"], host["name"], host["profile"], host["netboot"]) == (
            want["ip"], f"{want['name']}.example.org", None, True)
        assert host["boot_rules"], host
        assert host["source"] == "dhcpd:operator"
    lines = site.conf.read_text().splitlines()
    # the file's subnet is the one the appliance serves: the configuration's is kept
    (conflict,) = summary["conflicts"]
    assert lines[_issue_line(conflict, site.conf) - 1].startswith("subnet ")
    assert f"subnet {lab.subnet} overlaps configured subnet" in conflict
    # every statement it cannot map is a warning naming its own line, nothing else is
    warned = [_issue_line(w, site.conf) for w in summary["warnings"]]
    unmapped = [n for n, text in enumerate(lines, 1) if text.startswith(UNMAPPED)]
    assert sorted(warned) == unmapped, summary["warnings"]


def _ack_detail(lab: NetLab, guest: str, filename: str) -> str:
    want = guest_plan(lab, guest)
    return (f"{want['ip']} imported {filename} (next-server {lab.server_addr}, "
            f"{FIRMWARE_LABEL[want['firmware']]})")


def _explain(site: Site, mac: str, arch: int, ipxe: bool) -> dict:
    flags = ["--arch", str(arch)] + (["--ipxe"] if ipxe else [])
    return json.loads(site.cli("explain", mac, *flags, "--json"))


def _rule(rules: list[dict], filename: str, by_host: bool) -> str:
    """How ``describe`` names the rule giving ``filename``: the host's own
    iPXE-or-not rule (``by_host``) or the pxeclients class's arch rule."""
    i = next(i for i, r in enumerate(rules) if r["filename"] == filename and
             ("user-class" if by_host else "PXEClient") in (r["when"] or ""))
    return f"filename from rule {i + 1} ({rules[i]['when']})"


def _client_saw(log: str, lab: NetLab, want: dict) -> None:
    """The guest's own console report of each DHCP answer it acted on."""
    text = log.replace("\r", "")
    if want["firmware"] == "uefi":  # OVMF's PXE stage (EDK2 PxeBcDxe)
        for line in (f"Station IP address is {want['ip']}",
                     f"Server IP address is {lab.server_addr}",
                     f"NBP filename is {want['per_arch']}"):
            assert line in text, f"{line!r} not on the console:\n{text[-3000:]}"
    for line in (f"net0: {want['ip']}/", f"Next server: {lab.server_addr}",  # iPXE
                 f"Filename: {want['url']}"):
        assert line in text, f"{line!r} not on the console:\n{text[-3000:]}"


@pytest.mark.parametrize("guest", list(GUESTS))
def test_guest_boots_what_the_file_gives_it(site, guest):
    lab, server = site.lab, site.server
    want = guest_plan(lab, guest)
    mac, url, firmware = want["mac"], want["url"], want["firmware"]
    # BIOS: the iPXE ROM asks with user class iPXE at once -> the URL.
    # UEFI: OVMF's PXE (arch 7) -> the file's loader over TFTP -> iPXE asks -> the URL.
    files = [url] if firmware == "bios" else [want["per_arch"], url]

    vm = Guest(lab, want["name"], mac, workdir=site.work, firmware=firmware)
    try:
        server.boot(vm, lambda evs: any(e["kind"] == "http-script" for e in evs), BOOT_TIMEOUT)
        # the script iPXE got from the URL is the one for a host booted by its rules
        vm.wait_for(re.escape(f"Plowshare: {mac} {IMPORTED_LOCAL}"), LOCAL_ECHO_TIMEOUT)
    finally:
        vm.stop()
    _client_saw(vm.log, lab, want)
    events = [e for e in server.events(mac) if e["ts"] >= vm.started_epoch]
    timeline = [(e["kind"], e["detail"]) for e in events]
    script_at = timeline.index(("http-script", "local"))
    boot = timeline[:script_at + 1]  # the boot up to the URL (the firmware may go on)

    # DHCP: the file's fixed-address and next-server, its filename per stage, by its rules
    acks = [d for k, d in boot if k == "dhcp-ack"]
    assert acks == [_ack_detail(lab, guest, f) for f in files], timeline
    # fetched: exactly what the file names, nothing else (no default loader, no kernel)
    fetched = [(k, d) for k, d in boot if k.startswith(("tftp-", "http-"))]
    tftp = [("tftp-start", want["per_arch"]), ("tftp-done", want["per_arch"])]
    assert fetched == (tftp if firmware == "uefi" else []) + [("http-script", "local")], \
        timeline
    assert {d for k, d in timeline if k.startswith(("tftp-", "http-file"))} <= set(files), \
        timeline
    host = server.host(mac)
    assert host["lease"] and host["lease"]["ip"] == want["ip"], host

    # on the wire: every reply to this guest carried the file's address, next-server, file
    replies = site.wire_replies(mac)
    acked = [r["file"] for r in replies if r["type"] == "ack"]
    assert acked[:len(files)] == files, replies
    assert {(r["ip"], r["siaddr"], r["sname"], r["server"]) for r in replies} == {
        (want["ip"], lab.server_addr, "", lab.server_addr)}, replies  # no server-name in file
    assert {r["file"] for r in replies} == set(files), replies

    # explain (a dry run of the same policy) names the rule the guest was served by
    rules = next(h for h in site.summary["added"] if h["mac"] == mac)["boot_rules"]
    stages = [(True, url)] if firmware == "bios" else [(False, want["per_arch"]), (True, url)]
    for ipxe, filename in stages:
        report = _explain(site, mac, ARCH[firmware], ipxe)
        assert report["decision"].startswith("imported boot rules: "), report
        by_host = ipxe or want["host_else"]
        assert _rule(rules, filename, by_host) in report["decision"], report["decision"]
        assert report["dhcp"]["filename"] == filename
        assert report["dhcp"]["next_server"] == lab.server_addr
