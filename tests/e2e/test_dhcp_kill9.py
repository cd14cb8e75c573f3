"""``kill -9`` under load, 20 times: no address held by two clients, no ACKed lease lost.

Plowshare runs as a real process in the lab; perfdhcp (4-way exchanges,
:data:`CLIENTS` MACs that keep coming back, relayed through a client port
with an address) loads it from the wire namespace, and a sniffer there
(tests/e2e/dhcp_raw.py ``sniff``) writes down every DHCPACK that really
crossed the wire.  The server is SIGKILLed :data:`KILLS` times at random
moments (seeded; the seed is printed) and restarted each time.

The checker then reads the store and the ACK log and asserts:

* no address was ACKed to two different MACs while the first lease was
  still valid (nobody sends RELEASE here, so any reuse within the lease
  time is a double allocation);
* every MAC's last ACKed lease is in the store after the final restart --
  same address, bound, expiring no earlier than the ACK promised (the ACK
  left only after its commit, so SIGKILL must not lose it);
* the store itself binds no address twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest

from .appliance_proc import PlowshareProcess
from .dhcp_raw import start_sniffer
from .lab import NetLab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

KILLS = 20
CLIENTS = 200                 # perfdhcp -R: distinct MACs, each returns many times
RATE = 40                     # perfdhcp -r: new exchanges per second
POOL = (20, 249)              # 230 addresses: enough for every client if none is lost
RELAY_HOST = 250              # the perfdhcp port's address (perfdhcp acts as a relay)
RUN_BETWEEN = (0.2, 2.5)      # seconds the server runs between two kills (random)
EXPIRY_SLACK = 60             # seconds between the commit and the ACK's capture, at most
MIN_ACKS = 100


def _acks(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def double_allocations(acks: list[dict]) -> list[tuple]:
    """(ip, first mac, second mac) where the second ACK fell inside the first lease."""
    by_ip: dict[str, list[dict]] = {}
    for ack in sorted(acks, key=lambda a: a["t"]):
        by_ip.setdefault(ack["ip"], []).append(ack)
    bad = []
    for ip, seq in by_ip.items():
        holder = seq[0]
        for ack in seq[1:]:
            if ack["mac"] != holder["mac"] and ack["t"] < holder["t"] + holder["lease"]:
                bad.append((ip, holder["mac"], ack["mac"]))
            holder = ack  # a renewal extends the lease; a new holder starts one
    return bad


def lost_leases(acks: list[dict], store_rows: list[tuple]) -> list[tuple]:
    """MACs whose last ACKed lease is not (as promised) in the store."""
    stored = {mac: (ip, state, expires) for ip, mac, state, expires in store_rows}
    last: dict[str, dict] = {}
    for ack in sorted(acks, key=lambda a: a["t"]):
        last[ack["mac"]] = ack
    lost = []
    for mac, ack in last.items():
        row = stored.get(mac)
        if row is None or row[0] != ack["ip"] or row[1] != "bound" \
                or row[2] < ack["t"] + ack["lease"] - EXPIRY_SLACK:
            lost.append((mac, ack["ip"], row))
    return lost


def test_double_allocation_checker_catches_what_it_should():
    a = {"mac": "m1", "ip": "10.0.0.5", "t": 100.0, "lease": 3600}
    assert double_allocations([a, dict(a, t=200.0)]) == []  # a renewal
    assert double_allocations([a, dict(a, mac="m2", t=200.0)]) == [("10.0.0.5", "m1", "m2")]
    assert double_allocations([a, dict(a, mac="m2", t=3800.0)]) == []  # after expiry
    assert lost_leases([a], [("10.0.0.5", "m1", "bound", 3700.0)]) == []
    assert lost_leases([a], [("10.0.0.6", "m1", "bound", 3700.0)])
    assert lost_leases([a], [("10.0.0.5", "m1", "offered", 3700.0)])
    assert lost_leases([a], [])


def test_kill_9_twenty_times_under_perfdhcp_load(tmp_path):
    seed = int(os.environ.get("PLOWSHARE_KILL9_SEED", time.time_ns() % 1_000_000))
    print(f"kill -9 seed {seed} (PLOWSHARE_KILL9_SEED to replay)")
    rnd = random.Random(seed)
    lab = NetLab().start()
    server = PlowshareProcess(lab, tmp_path / "state", tmp_path / "plowshare.log")
    perf = sniffer = None
    try:
        net = lab.network
        port = lab.add_client_port("perf0", "02:9e:7f:00:00:01")
        # only perf0 may answer ARP for its address (else br0 would, and the
        # replies would bypass the port the sniffer watches)
        lab.run_in_wire(["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])
        lab.run_in_wire(["ip", "addr", "add", f"{lab.host_addr(RELAY_HOST)}/{lab.prefix_len}",
                         "dev", port])
        acks_path = tmp_path / "acks.jsonl"
        sniffer = start_sniffer(lab, port, acks_path)
        server.start(extra_args=["--pool", f"{net[POOL[0]]}-{net[POOL[1]]}"])
        with open(tmp_path / "perfdhcp.log", "wb") as perf_log:
            perf = lab.popen_in_wire(["perfdhcp", "-4", "-l", port, "-r", str(RATE),
                                      "-R", str(CLIENTS), "-p", "3600"],
                                     stdout=perf_log, stderr=subprocess.STDOUT)
        for _ in range(KILLS):
            time.sleep(rnd.uniform(*RUN_BETWEEN))  # a random moment, not a timing check
            assert perf.poll() is None, (tmp_path / "perfdhcp.log").read_text()
            server.kill(signal.SIGKILL)
            server.start(extra_args=["--pool", f"{net[POOL[0]]}-{net[POOL[1]]}"])
        time.sleep(rnd.uniform(*RUN_BETWEEN))
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
        time.sleep(1)  # the last ACKs in flight reach the sniffer
        sniffer.terminate()
        sniffer.wait(timeout=30)
        assert server.stop() == 0
        acks = _acks(acks_path)
        db = sqlite3.connect(server.state / "plowshare.db")
        rows = db.execute("SELECT ip, mac, state, expires FROM leases").fetchall()
        db.close()
    finally:
        for proc in (perf, sniffer):
            if proc is not None and proc.poll() is None:
                proc.kill()
        server.stop()
        lab.stop()

    print(f"{len(acks)} ACKs to {len({a['mac'] for a in acks})} MACs over {KILLS} kills; "
          f"{len(rows)} lease rows")
    assert len(acks) >= MIN_ACKS, f"only {len(acks)} ACKs: the load did not happen"
    assert len({a["mac"] for a in acks}) >= CLIENTS // 4
    assert double_allocations(acks) == []
    assert lost_leases(acks, rows) == []
    bound = [(ip, mac) for ip, mac, state, expires in rows
             if state == "bound" and expires > time.time()]
    assert len({mac for _ip, mac in bound}) == len(bound), "a MAC bound twice"
    log = server.log(100_000)
    assert "Traceback" not in log, log
