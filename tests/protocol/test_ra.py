"""RouterAdvertiser on a real link: two network namespaces joined by a veth pair.

The advertiser runs inside namespace A (``ip netns exec``); a raw-socket
listener in namespace B records what arrives and sends a Router Solicitation.
Nothing touches the host's own interfaces; the namespaces are always deleted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptSrcLLAddr

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]

# Runs in namespace A: start the advertiser, stop it when stdin closes.
ADVERTISER = r"""
import logging, sys, time
from appliance.servers.ra import RouterAdvertiser
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
adv = RouterAdvertiser(sys.argv[1], interval=float(sys.argv[2]))
adv.start()
print("started", flush=True)
sys.stdin.read()
t0 = time.monotonic()
adv.stop()
print(f"stopped in {time.monotonic() - t0:.3f}s sent={adv.ra_sent} "
      f"answered={adv.rs_answered} running={adv.running}", flush=True)
"""

# Runs in namespace B: print each RA received (JSON lines); after the
# ``rs_after``-th RA (0 = never) send one Router Solicitation to ff02::2.
LISTENER = r"""
import json, select, socket, struct, sys, time
ifname, duration, want, rs_after = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
idx = socket.if_nametoindex(ifname)
mac = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
print(json.dumps({"ready": True}), flush=True)
t0 = time.monotonic()
count = 0
while count < want and time.monotonic() - t0 < duration:
    if not select.select([s], [], [], 0.1)[0]:
        continue
    data, anc, _, addr = s.recvmsg(1500, socket.CMSG_SPACE(4))
    if not data or data[0] != 134:
        continue
    hlim = None
    for level, kind, value in anc:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
            hlim = struct.unpack("@i", value[:4])[0]
    count += 1
    print(json.dumps({"t": time.monotonic() - t0, "src": addr[0], "hlim": hlim,
                      "data": data.hex()}), flush=True)
    if rs_after and count == rs_after:
        rs = bytes([133, 0, 0, 0, 0, 0, 0, 0]) + bytes([1, 1]) + mac  # RS + SLLAO
        s.sendto(rs, ("ff02::2", 0, 0, idx))
        print(json.dumps({"rs_sent": time.monotonic() - t0}), flush=True)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _in_ns(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _ip("netns", "exec", ns, *args)


@dataclass
class Link:
    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def mac(self, ns: str, ifname: str) -> str:
        return _in_ns(ns, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()

    def link_local(self, ns: str, ifname: str) -> str | None:
        """The interface's link-local address once DAD has finished."""
        out = _in_ns(ns, "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link").stdout
        for line in out.splitlines():
            if "tentative" not in line:
                return line.split()[3].split("/")[0]
        return None

    def wait_link_local(self, ns: str, ifname: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            addr = self.link_local(ns, ifname)
            if addr:
                return addr
            time.sleep(0.1)
        raise AssertionError(f"{ifname} in {ns}: no link-local address after {timeout}s")

    def spawn(self, ns: str, script: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-c", script, *args],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.procs.append(proc)
        return proc


@pytest.fixture
def link() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:8]
    lk = Link(f"plra-{tag}-a", f"plra-{tag}-b", f"pra{tag}a", f"pra{tag}b")
    created: list[str] = []
    try:
        for ns in (lk.ns_a, lk.ns_b):
            result = _ip("netns", "add", ns, check=False)
            if result.returncode != 0:
                pytest.skip(f"cannot create network namespace: {result.stderr.strip()}")
            created.append(ns)
            # No kernel RS of its own: every RS on this link comes from the test.
            _in_ns(ns, "sysctl", "-qw",
                   "net.ipv6.conf.all.router_solicitations=0",
                   "net.ipv6.conf.default.router_solicitations=0")
        _ip("link", "add", lk.if_a, "netns", lk.ns_a, "type", "veth",
            "peer", "name", lk.if_b, "netns", lk.ns_b)
        _in_ns(lk.ns_a, "ip", "link", "set", lk.if_a, "up")
        _in_ns(lk.ns_b, "ip", "link", "set", lk.if_b, "up")
        yield lk
    finally:
        for proc in lk.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for ns in created:
            _ip("netns", "del", ns, check=False)


def _records(listener: subprocess.Popen[str], timeout: float) -> list[dict]:
    try:
        out, err = listener.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        listener.kill()
        out, err = listener.communicate()
    assert listener.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _stop_advertiser(adv: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = adv.communicate(input="", timeout=10)
    assert adv.returncode == 0, err
    assert "running=False" in out, out
    return out, err


def _check_ra(rec: dict, src: str, mac: str) -> None:
    assert rec["hlim"] == 255  # RFC 4861 6.1.2: receivers drop anything else
    assert rec["src"].split("%")[0] == src
    pkt = ICMPv6ND_RA(bytes.fromhex(rec["data"]))
    assert pkt.type == 134
    assert pkt.routerlifetime == 0
    assert pkt.M == 0 and pkt.O == 0
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == mac


def test_periodic_router_advertisements(link: Link) -> None:
    listener = link.spawn(link.ns_b, LISTENER, link.if_b, "12", "3", "0")
    assert json.loads(listener.stdout.readline()) == {"ready": True}
    # Started while the link-local address may still be tentative: the
    # advertiser has to retry instead of failing or waiting a whole interval.
    adv = link.spawn(link.ns_a, ADVERTISER, link.if_a, "1.0")
    assert adv.stdout.readline().strip() == "started"

    records = _records(listener, timeout=20)
    src = link.wait_link_local(link.ns_a, link.if_a)
    mac = link.mac(link.ns_a, link.if_a)
    ras = [r for r in records if "data" in r]
    assert len(ras) == 3, records
    assert ras[0]["t"] < 6.0, records
    for rec in ras:
        _check_ra(rec, src, mac)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(ras)]
    assert all(0.7 < gap < 1.8 for gap in gaps), gaps

    _out, err = _stop_advertiser(adv)
    assert "sending router advertisements" in err


def test_router_solicitation_gets_prompt_answer(link: Link) -> None:
    src = link.wait_link_local(link.ns_a, link.if_a)
    link.wait_link_local(link.ns_b, link.if_b)  # the RS goes out from a real address
    mac = link.mac(link.ns_a, link.if_a)
    # 2 RAs wanted: the first (sent at start-up), then the one answering our RS.
    listener = link.spawn(link.ns_b, LISTENER, link.if_b, "10", "2", "1")
    assert json.loads(listener.stdout.readline()) == {"ready": True}
    # A 60 s interval: only the RS can explain a second RA within the test.
    adv = link.spawn(link.ns_a, ADVERTISER, link.if_a, "60")
    assert adv.stdout.readline().strip() == "started"

    records = _records(listener, timeout=15)
    ras = [r for r in records if "data" in r]
    rs_sent = [r["rs_sent"] for r in records if "rs_sent" in r]
    assert len(ras) == 2 and len(rs_sent) == 1, records
    for rec in ras:
        _check_ra(rec, src, mac)
    delay = ras[1]["t"] - rs_sent[0]
    assert 0 <= delay < 0.5, records

    out, _err = _stop_advertiser(adv)
    assert "answered=1" in out, out
