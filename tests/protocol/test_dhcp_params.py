"""Option 55 (what a client asks for), option 57 (how much it takes) and RFC 3396
long options, with real clients against the real ``plowshare serve``.

The served subnet has more options than fit a 576-byte reply.  Clients run
on client ports of the lab bridge; a raw sniffer on the same port
(:mod:`tests.protocol.dhcp_probe`) records every reply as a client reads it
(overload fields and repeated codes joined), so each test checks both what
the client itself kept and the bytes that were on the wire:

* busybox ``udhcpc -o -O mtu`` asks for the MTU only;
* ``dhclient`` with a ``request ...;`` line asks for three options, then
  (with ``send dhcp-max-message-size``) for a domain search list longer than
  255 bytes, which must arrive split and be joined by dhclient;
* a raw client with option 57 = 576 asks for every configured option: the
  reply stays within 576 bytes (overload into ``file``), scapy parses it;
  a PXE client, whose ``file`` carries the boot file, loses the option
  that cannot fit and keeps the PXE options.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from appliance.servers import dhcp_packing as p
from tests.e2e.appliance_proc import REPO
from tests.e2e.lab import NetLab
from tests.protocol.dhcp_clients import dhclient, udhcpc

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("dhclient", "busybox")),
                       reason="needs isc-dhcp-client and busybox; scripts/setup installs them"),
]

CLIENT_TIMEOUT = 90
WAIT = 30
SEARCH = [f"d{i}.lab.example" for i in range(12)]            # 194 bytes on the wire
LONG_SEARCH = [f"host-{i:02d}.lab.example" for i in range(20)]  # 400 bytes: 2 instances
# what every OFFER/ACK carries without being asked: 53 54 51 58 59, 1 and 3, and
# [dhcp] always_send = ntp-servers (42)
ALWAYS = {53, 54, 51, 58, 59, 1, 3, 42}


def _config(lab: NetLab) -> str:
    n = lab.host_addr
    routes = ", ".join(f'"10.{i}.0.0/16 {n(254)}"' for i in range(17))  # 119 bytes
    return textwrap.dedent(f"""\
        [dhcp]
        options = {{ "ntp-servers" = ["{n(123)}"] }}
        always_send = ["ntp-servers"]

        [[dhcp.subnet]]
        network = "{lab.subnet}"
        pools = ["{n(100)}-{n(199)}"]
        [dhcp.subnet.options]
        routers = ["{n(1)}"]
        domain-name-servers = ["{n(1)}", "{n(53)}"]
        domain-name = "lab.example"
        interface-mtu = 1400
        domain-search = {json.dumps(SEARCH)}
        classless-static-routes = [{routes}]
        """)


class Sniffer:
    """``dhcp_probe sniff`` on a client port; :meth:`replies` reads what it saw."""

    def __init__(self, lab: NetLab, port: str, out):
        self.out = out
        self.proc = lab.popen_in_wire([sys.executable, "-m", "tests.protocol.dhcp_probe",
                                       "sniff", port, str(out)], cwd=REPO,
                                      stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", "sniffer did not start"

    def replies(self, kind: str, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + WAIT
        while True:
            lines = self.out.read_text().splitlines() if self.out.exists() else []
            got = [r for r in map(json.loads, lines) if r["type"] == kind]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=WAIT)


def test_udhcpc_asking_for_the_mtu_only_gets_it_and_what_is_always_sent(served):
    lab, server, config, tmp_path = served
    server.start(config, pool=False)
    port = lab.add_client_port("c0", lab.guest_mac(0))
    sniffer = Sniffer(lab, port, tmp_path / "sniff.jsonl")
    env = udhcpc(lab, port, tmp_path, "-o", "-O", "mtu")
    n = lab.host_addr
    assert env["mtu"] == "1400" and env["router"] == n(1) and env["ntpsrv"] == n(123)
    assert env["subnet"] == "255.255.255.0"
    assert env["dns"] == env["domain"] == env["search"] == env["staticroutes"] == ""
    [ack] = sniffer.replies("ack")
    sniffer.stop()
    assert set(ack["codes"]) == ALWAYS | {26}
    assert ack["codes"][:5] == [53, 54, 51, 58, 59]


DHCLIENT_SHORT = "request subnet-mask, interface-mtu, routers;\n"
DHCLIENT_LONG = """\
send dhcp-max-message-size 1400;
request subnet-mask, domain-search, interface-mtu;
"""


def test_dhclient_gets_exactly_its_request_line_and_a_split_search_list(served):
    lab, server, config, tmp_path = served
    n = lab.host_addr
    server.cli("distro", "add", "d", "--kernel", sys.executable, "--initrd", sys.executable)
    server.cli("profile", "add", "p", "--distro", "d")
    server.cli("host", "add", lab.guest_mac(1), "--profile", "p", "--no-netboot",
               "--option", f"domain-search={', '.join(LONG_SEARCH)}")
    server.start(config, pool=False)
    plain = lab.add_client_port("c0", lab.guest_mac(0))
    sniffer = Sniffer(lab, plain, tmp_path / "plain.jsonl")
    got = dhclient(lab, plain, tmp_path, DHCLIENT_SHORT)
    assert got["subnet-mask"] == "255.255.255.0" and got["interface-mtu"] == "1400"
    assert got["routers"] == n(1) and got["ntp-servers"] == n(123)  # ntp: always_send
    for name in ("domain-name-servers", "domain-name", "domain-search"):
        assert name not in got, got
    [ack] = sniffer.replies("ack")
    sniffer.stop()
    assert set(ack["codes"]) == ALWAYS | {26}
    # dhclient's order after the lease times: 1, 26, 3 as its request line says
    assert ack["codes"][5:8] == [1, 26, 3]

    long_port = lab.add_client_port("c1", lab.guest_mac(1))
    sniffer = Sniffer(lab, long_port, tmp_path / "long.jsonl")
    got = dhclient(lab, long_port, tmp_path, DHCLIENT_LONG)
    assert got["domain-search"] == ", ".join(f'"{d}."' for d in LONG_SEARCH)
    [ack] = sniffer.replies("ack")
    sniffer.stop()
    assert ack["main"].count(119) == 2  # RFC 3396: two instances, joined by dhclient
    assert 576 < ack["ip_len"] <= 1400 and set(ack["codes"]) == ALWAYS | {26, 119}


def probe(lab: NetLab, port: str, mac: str, params: list[int], vendor=None) -> dict:
    cmd = [sys.executable, "-m", "tests.protocol.dhcp_probe", "discover", port, mac,
           ",".join(map(str, params)), "576", *([vendor] if vendor else [])]
    return json.loads(lab.run_in_wire(cmd, cwd=REPO, timeout=CLIENT_TIMEOUT).stdout)


EVERYTHING = [1, 3, 6, 15, 26, 42, 119, 121]


def test_a_576_byte_client_gets_every_option_through_overload_or_loses_the_last(served):
    lab, server, config, _tmp = served
    server.cli("distro", "add", "d", "--kernel", sys.executable, "--initrd", sys.executable)
    server.cli("profile", "add", "p", "--distro", "d")
    pxe_mac = lab.guest_mac(1)
    server.cli("host", "add", pxe_mac, "--profile", "p")
    server.start(config, pool=False)

    offer = probe(lab, lab.add_client_port("c0", lab.guest_mac(0)), lab.guest_mac(0),
                  EVERYTHING)
    assert offer["ip_len"] <= 576 and offer["size"] <= 548
    assert set(offer["codes"]) == {*ALWAYS, *EVERYTHING, p.OPT_OVERLOAD}
    assert offer["values"][str(p.OPT_OVERLOAD)] == "01"  # into the file field
    assert offer["scapy"][:3] == ["message-type", "server_id", "dhcp-option-overload"]
    assert offer["scapy"][-1] == "end" and "raw bytes" not in offer["scapy"]

    pxe = probe(lab, lab.add_client_port("c1", pxe_mac), pxe_mac, EVERYTHING,
                vendor="PXEClient:Arch:00000:UNDI:002001")
    assert pxe["ip_len"] <= 576 and pxe["file"]  # the boot file keeps the file field
    assert set(pxe["codes"]) == {*ALWAYS, *EVERYTHING, 60, 43} - {121}
    assert pxe["scapy"][-1] == "end" and "raw bytes" not in pxe["scapy"]
    line = f"{pxe_mac} reply over the client's 576 bytes: overload none, dropped options [121]"
    deadline = time.monotonic() + WAIT
    while line not in server.log(tail=100_000):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert "Traceback" not in server.log(tail=100_000)
