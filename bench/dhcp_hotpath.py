"""CPU cost of one DHCP 4-way exchange inside Plowshare, without the network.

Usage (no root needed)::

    .venv/bin/python bench/dhcp_hotpath.py [--clients 5000] [--batch 4] [--profile]

Builds the DHCP server as ``bench/dhcp_bench.py serve`` does (file-backed
store, group commit with fsync, ping check with a fake prober that nobody
answers, logging at WARNING) and feeds it ``--clients`` DISCOVERs, then a
REQUEST for each OFFER, ``--batch`` packets per :meth:`DhcpServer.handle_batch`
call (what the socket loop takes off the socket at moderate load).  Replies
are encoded but not sent.  Prints wall time and process CPU time (every
thread: the loop and the group committer) per exchange.  The machine's load
moves the wall time more than the CPU time; compare CPU time across changes.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.config import load_config
from appliance.events import EventLog
from appliance.kickstart import Renderer
from appliance.leases import Allocator
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers import dhcp_codec as c
from appliance.servers.conflict import PROBE_TIMEOUT, ConflictGuard
from appliance.servers.dhcp import DhcpContext, DhcpServer
from appliance.servers.icmp_probe import FakeProber
from appliance.store import Store
from appliance.templates import TemplateLibrary

SERVER_IP = "10.77.0.1"
RELAY_IP = "10.77.0.2"  # perfdhcp relays (giaddr), as in bench/dhcp_bench.py


class Quiet(DhcpServer):
    """Encodes every reply (emit) but sends nothing; counts ACKs."""

    acks = 0

    def send(self, reply, payload) -> None:
        if reply.msg_type == c.ACK:
            self.acks += 1


def packet(kind: int, n: int, requested: str | None = None) -> bytes:
    mac = bytes.fromhex(f"02aa{n:08x}")
    opts = bytes((c.OPT_MESSAGE_TYPE, 1, kind))
    if requested:
        opts += bytes((c.OPT_REQUESTED_IP, 4)) + c.ip_bytes(requested)
        opts += bytes((c.OPT_SERVER_ID, 4)) + c.ip_bytes(SERVER_IP)
    header = c.BOOTP_HEADER.pack(c.BOOTREQUEST, c.HTYPE_ETHER, c.HLEN_ETHER, 1, n, 0, 0,
                                 bytes(4), bytes(4), bytes(4), c.ip_bytes(RELAY_IP),
                                 mac.ljust(16, b"\0"), b"", b"")
    return header + c.MAGIC_COOKIE + opts + bytes((c.OPT_END,))


def run(state: str, clients: int, batch: int, profile: bool) -> None:
    cfg = load_config(None, address=SERVER_IP, pool="10.77.1.0-10.77.255.254",
                      state_dir=state)
    import dataclasses
    cfg = dataclasses.replace(cfg, dhcp=dataclasses.replace(cfg.dhcp, prefix=16))
    store = Store(cfg.db_path).open()
    ctx = DhcpContext(cfg, BootPolicy(store, cfg, Renderer(
        InlineSandbox(), TemplateLibrary(store, cfg.kickstarts_dir))),
        Allocator(store, cfg.dhcp, cfg.address), EventLog(store), None)
    guard = ConflictGuard(ctx.allocator, FakeProber())
    server = Quiet(ctx, guard=guard)
    server.attach_writer()
    guard.start(server.emit, None, server.events)
    offers = {}
    real_emit = server.emit

    def emit(reply):
        if reply.msg_type == c.OFFER:
            offers[reply.request.xid] = reply.yiaddr
        real_emit(reply)
    server.emit = emit
    guard._emit = emit
    discovers = [packet(c.DISCOVER, n) for n in range(clients)]
    prof = cProfile.Profile() if profile else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    for i in range(0, clients, batch):
        server.handle_batch(discovers[i:i + batch])
        guard.tick()
    time.sleep(PROBE_TIMEOUT)  # the first OFFERs were held by the ping check (not load)
    guard.tick()
    requests = [packet(c.REQUEST, n, offers[n]) for n in range(clients) if n in offers]
    for i in range(0, len(requests), batch):
        server.handle_batch(requests[i:i + batch])
    server.writer.flush(timeout=120)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0 - PROBE_TIMEOUT, time.process_time() - cpu0
    server.writer.stop()
    store.close()
    print(f"{clients} clients, batch {batch}: {server.acks} ACKs, "
          f"wall {1e6 * wall / clients:.0f} us/exchange, "
          f"CPU {1e6 * cpu / clients:.0f} us/exchange "
          f"({clients / wall:.0f} exchanges/s on one loop), "
          f"{server.writer.commits} commits")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dhcp-hotpath-") as state:
        run(state, args.clients, args.batch, args.profile)


if __name__ == "__main__":
    main()
