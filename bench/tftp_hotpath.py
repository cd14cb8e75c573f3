"""Python cost of one lock-step TFTP round (ACK in -> DATA out), sockets faked.

    .venv/bin/python bench/tftp_hotpath.py [--packets 200000] [--repeat 5]

Runs :meth:`TftpServer.run_once` against a poller that always reports the
session's socket ready and a connection whose ``recv_into`` writes the ACK
for the last block sent and whose ``send``/``sendmsg`` do nothing, so what
is timed is the interpreter's share of the server's per-packet work (the
kernel's share is measured by ``bench/tftp_bench.py`` on real sockets).
Prints the best of ``--repeat`` runs in ns per packet: a steady number on a
busy machine, for comparing hot-path changes.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appliance.servers import tftp_engine as te
from appliance.servers.tftp import TftpServer
from appliance.servers.tftp_session import Session

BLKSIZE = 1468


class FakeConn:
    """A connected socket stand-in: ACKs whatever was sent last."""

    def __init__(self, fd: int):
        self._fd, self.session = fd, None

    def fileno(self) -> int:
        return self._fd

    def recv_into(self, buf) -> int:
        te.ACK_DATA.pack_into(buf, 0, te.OP_ACK, self.session.sent & 0xFFFF)
        return 4

    def send(self, data) -> int:
        return len(data)

    def sendmsg(self, buffers) -> int:
        return 0

    def close(self) -> None:
        pass


class FakePoller:
    def __init__(self, fd: int):
        self.ready, self.spin_armed = [(fd, 1)], False

    def wait(self, seconds, maxevents):
        return self.ready

    poll = wait


def run(root: str, packets: int, windowsize: int) -> float:
    server = TftpServer(root, bind=("127.0.0.1", 0))
    path = os.path.join(root, "big.bin")
    acc = te.decide_rrq("big.bin", "octet", {"blksize": str(BLKSIZE), "windowsize": str(windowsize)},
                        root)
    assert isinstance(acc, te.Accept), acc
    conn, sock = FakeConn(1001), FakeConn(1002)
    server._poller = FakePoller(conn.fileno())
    session = Session(server, sock, conn, ("127.0.0.1", 9), te.Request(1, path, "octet", {}),
                      acc)
    conn.session = session
    server._by_fd[session.fd] = session
    session.begin()
    rounds = packets // windowsize
    t0 = time.perf_counter()
    for _ in range(rounds):
        server.run_once()
    elapsed = time.perf_counter() - t0
    acc.close()
    return elapsed / (rounds * windowsize) * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.truncate((args.packets + 64) * BLKSIZE)  # sparse; no run reaches the end
        for ws in (1, 16):
            best = min(run(d, args.packets, ws) for _ in range(args.repeat))
            print(f"windowsize {ws:2d}: {best:6.0f} ns of Python per DATA packet (best of "
                  f"{args.repeat})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
