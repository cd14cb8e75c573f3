"""DHCP address conflicts and rogue servers, with real hosts on the lab wire.

* A squatter -- a namespace holding a pool address, whose kernel answers
  ping -- is never offered to real clients (busybox udhcpc); the store
  marks the address ``conflict`` and a ``dhcp-conflict`` event names the
  client whose offer was withheld.
* A DECLINE storm (raw packets from many MACs, tests/e2e/dhcp_raw.py)
  leaves at least 90 % of the pool usable, counted by the real allocator
  on the store afterwards.
* A rogue dnsmasq on the wire is recorded (``plowshare dhcp rogues``) with
  its address and MAC, seen by the active probe and, separately, passively
  when a client asks for broadcast replies.
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

from .appliance_proc import POOL_FIRST, POOL_LAST, REPO
from .lab import NetLab
from .test_dhcp_clients import _lease

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

SQUAT_HOST = POOL_FIRST      # the first address next-fit would hand out
ROGUE_HOST = 2
ROGUE_RANGE = (50, 60)
WAIT = 60                    # generous: this is a shared 2-core box
STORM_CLIENTS, STORM_ROUNDS = 40, 5  # 200 DECLINEs for a pool of 100


def _db_rows(server, sql: str, args=()) -> list:
    import sqlite3
    db = sqlite3.connect(server.state / "plowshare.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _eventually(check, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout} s")
        time.sleep(0.3)


def test_squatted_address_is_never_offered(lab_server):
    lab, server, tmp_path = lab_server
    squat_ns = lab.add_peer_namespace("squat", SQUAT_HOST)
    squatted = lab.host_addr(SQUAT_HOST)
    lab.run_in_namespace(squat_ns, ["busybox", "ping", "-c", "1", "-W", "5", lab.server_addr])
    server.start()
    macs = [lab.guest_mac(i) for i in range(3)]
    got = {}
    for i, mac in enumerate(macs):
        port = lab.add_client_port(f"c{i}", mac)
        got[mac] = _lease(lab, port, tmp_path)
    assert squatted not in got.values(), got
    assert len(set(got.values())) == len(macs)
    rows = _db_rows(server, "SELECT mac, state, expires FROM leases WHERE ip=?", (squatted,))
    assert rows and rows[0][:2] == ("", "conflict"), rows
    assert rows[0][2] > time.time() + 600  # on probation, not a short hold
    conflicts = [e for mac in macs for e in server.events(mac) if e["kind"] == "dhcp-conflict"]
    assert len(conflicts) == 1 and squatted in conflicts[0]["detail"], conflicts
    assert re.search(rf"WARNING .*dhcp-conflict {re.escape(squatted)}", server.log(10_000))


def test_decline_storm_leaves_90_percent_of_the_pool(lab_server):
    lab, server, _tmp = lab_server
    server.start()
    port = lab.add_client_port("storm0", "02:de:c1:ff:00:01")
    res = lab.run_in_wire([sys.executable, "-m", "tests.e2e.dhcp_raw", "decline-storm", port,
                           lab.server_addr, str(STORM_CLIENTS), str(STORM_ROUNDS)],
                          cwd=REPO, timeout=600)
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    # the storm really happened: far more DECLINEs than the pool has addresses
    assert stats["declines"] >= 150, stats
    pool_size = POOL_LAST - POOL_FIRST + 1

    def probation():
        rows = _db_rows(server, "SELECT COUNT(*) FROM leases WHERE expires>? AND state IN "
                        "('declined','conflict')", (time.time(),))[0][0]
        return rows <= pool_size // 10
    _eventually(probation, "probation trimmed to 10 % of the pool")
    assert server.stop() == 0

    # count usable addresses with the real allocator on the store
    sys.path.insert(0, str(REPO))
    from appliance.config import load_config
    from appliance.leases import Allocator
    from appliance.store import Store
    net = lab.network
    cfg = load_config(None, address=lab.server_addr, state_dir=str(server.state),
                      pool=f"{net[POOL_FIRST]}-{net[POOL_LAST]}")
    store = Store(cfg.db_path).open()
    try:
        alloc = Allocator(store, cfg.dhcp, cfg.address)
        fresh = {alloc.offer(f"02:fe:00:00:00:{n:02x}", None) for n in range(pool_size)}
    finally:
        store.close()
    fresh.discard(None)
    assert len(fresh) >= 0.9 * pool_size, (len(fresh), stats)


def _dnsmasq(lab: NetLab, ns: str, work) -> subprocess.Popen:
    first, last = (lab.host_addr(h) for h in ROGUE_RANGE)
    log = open(work / "dnsmasq.log", "ab")  # noqa: SIM115 - the process owns it
    proc = lab.popen_in_namespace(ns, [
        "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--interface=rogue0",
        "--bind-interfaces", f"--dhcp-range={first},{last},{lab.netmask},1h",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}", f"--pid-file={work / 'dnsmasq.pid'}",
        "--log-dhcp", "--log-facility=-", "--user=root", "--group=root"],
        stdout=log, stderr=subprocess.STDOUT)
    _eventually(lambda: ":67 " in lab.run_in_namespace(ns, ["ss", "-uanp"], check=False).stdout
                or proc.poll() is not None, "dnsmasq listening")
    assert proc.poll() is None, (work / "dnsmasq.log").read_text()
    return proc


@pytest.mark.parametrize("mode", ["active-probe", "passive"])
def test_rogue_dnsmasq_is_recorded(lab_server, mode):
    lab, server, tmp_path = lab_server
    ns = lab.add_peer_namespace("rogue", ROGUE_HOST)
    rogue_mac = lab.run_in_namespace(ns, ["cat", "/sys/class/net/rogue0/address"]).stdout.strip()
    _dnsmasq(lab, ns, tmp_path)
    config = tmp_path / "plowshare.toml"
    interval = 1 if mode == "active-probe" else 0
    config.write_text(f"[dhcp]\nrogue_probe_interval = {interval}\n")
    server.start(config_path=config)
    if mode == "passive":
        port = lab.add_client_port("c0", lab.guest_mac(0))
        # a client asking for broadcast replies: dnsmasq's OFFER crosses our port
        lab.run_in_wire(["busybox", "udhcpc", "-i", port, "-B", "-f", "-q", "-n", "-t", "5",
                         "-T", "2", "-s", "/bin/true"], check=False, timeout=WAIT)

    def rogues():
        return [r for r in json.loads(server.cli("dhcp", "rogues", "--json"))
                if r["server"] == lab.host_addr(ROGUE_HOST)]
    found = _eventually(rogues, f"dnsmasq recorded as a rogue ({mode})")[0]
    assert found["mac"] == rogue_mac
    first, last = (lab.network[h] for h in ROGUE_RANGE)
    assert first <= ipaddress.IPv4Address(found["offered"]) <= last, found
    events = server.events(rogue_mac)
    assert events and all(e["kind"] == "dhcp-rogue" for e in events)
    # rate-limited: one event per server however many OFFERs it sent
    assert len(events) == 1, events
    assert re.search(rf"WARNING .*{re.escape(rogue_mac)} dhcp-rogue server="
                     rf"{re.escape(lab.host_addr(ROGUE_HOST))}", server.log(10_000))
    # our own server is never listed
    assert all(r["server"] != lab.server_addr
               for r in json.loads(server.cli("dhcp", "rogues", "--json")))
