"""DHCP with real clients (busybox udhcpc) in the lab: durability and bad input.

* ``kill -9`` of the server and a restart keep every lease and host: clients
  that had an address get the same one back, new clients never get an
  address that was handed out before the crash.
* Malformed packets sent at the running server do not stop its DHCP thread:
  the next real client is answered and the supervisor never had to restart.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import textwrap

import pytest

from .lab import NetLab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CLIENTS = 6
UDHCPC_TRIES, UDHCPC_WAIT = 5, 2
UDHCPC_TIMEOUT = 60


def _script(tmp_path) -> str:
    path = tmp_path / "udhcpc.sh"
    path.write_text(textwrap.dedent("""\
        #!/bin/sh
        # record the bound address, configure nothing
        [ "$1" = bound ] && echo "$ip" > "$LEASE_FILE"
        exit 0
    """))
    path.chmod(0o755)
    return str(path)


def _lease(lab: NetLab, port: str, tmp_path) -> str:
    out = tmp_path / f"{port}.lease"
    out.unlink(missing_ok=True)
    lab.run_in_wire(["env", f"LEASE_FILE={out}", "busybox", "udhcpc", "-i", port, "-f", "-q",
                     "-n", "-t", str(UDHCPC_TRIES), "-T", str(UDHCPC_WAIT),
                     "-s", _script(tmp_path)], timeout=UDHCPC_TIMEOUT)
    return out.read_text().strip()


def _ports(lab: NetLab) -> dict[str, str]:
    return {lab.add_client_port(f"c{i}", lab.guest_mac(i)): lab.guest_mac(i)
            for i in range(CLIENTS)}


def test_kill_9_keeps_leases_and_hosts(lab_server):
    lab, server, tmp_path = lab_server
    server.cli("distro", "add", "d", "--kernel", sys.executable, "--initrd", sys.executable)
    server.cli("profile", "add", "p", "--distro", "d")
    server.cli("host", "add", lab.guest_mac(0), "--profile", "p", "--name", "keeper")
    server.start()
    ports = list(_ports(lab))
    before = {p: _lease(lab, p, tmp_path) for p in ports[:3]}
    assert len(set(before.values())) == 3, before

    server.kill()  # SIGKILL: no clean shutdown, no flush
    server.start()

    after_new = {p: _lease(lab, p, tmp_path) for p in ports[3:]}
    again = {p: _lease(lab, p, tmp_path) for p in ports[:3]}
    assert again == before, "a client lost its address across kill -9"
    assert not set(after_new.values()) & set(before.values()), \
        f"an address was handed to a second MAC: {before} {after_new}"

    assert server.host(lab.guest_mac(0))["name"] == "keeper"
    db = sqlite3.connect(server.state / "plowshare.db")
    rows = db.execute("SELECT ip, mac FROM leases WHERE state='bound'").fetchall()
    db.close()
    by_ip = {}
    for ip, mac in rows:
        assert by_ip.setdefault(ip, mac) == mac
    assert len(rows) == CLIENTS


JUNK = [
    b"",
    b"\x01",
    b"\x01\x01\x06\x00" + b"\xff" * 300,
    bytes(240),
    # a DISCOVER with the magic cookie and an option running past the end
    b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63\x35\x09\x01",
    # message type 99 and a non-UTF-8 hostname
    b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63\x35\x01\x63\x0c\x02\xff\xfe\xff",
    # option 93 with one byte, option 77 empty, vendor class of 255 bytes
    b"\x01\x01\x06\x00" + bytes(24) + b"\x52\x54\x00\x00\x00\x01" + bytes(202)
    + b"\x63\x82\x53\x63\x35\x01\x01\x5d\x01\x00\x4d\x00\x3c\xff" + b"P" * 255 + b"\xff",
]


def test_malformed_packets_do_not_stop_dhcp(lab_server):
    lab, server, tmp_path = lab_server
    server.start()
    port = lab.add_client_port("c0", lab.guest_mac(0))
    sender = textwrap.dedent(f"""\
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"{port}")
        for junk in {JUNK!r}:
            s.sendto(junk, ("255.255.255.255", 67))
        import random
        rnd = random.Random(2)
        for _ in range(200):
            s.sendto(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(300))),
                     ("255.255.255.255", 67))
    """)
    lab.run_in_wire([sys.executable, "-c", sender])
    assert _lease(lab, port, tmp_path).startswith(str(lab.network.network_address)[:-1])
    assert server.proc.poll() is None
    log = server.log(tail=10_000)
    assert "died" not in log and "Traceback" not in log, log
