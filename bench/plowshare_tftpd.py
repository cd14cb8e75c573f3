"""Run Plowshare's TFTP server in a process of its own, for bench/tftp_bench.py.

    python -m bench.plowshare_tftpd --root DIR [--host 127.0.0.1] [--port 0]

Prints ``READY <host> <port>`` on stdout once bound.  On SIGUSR1 it prints
``STATUS sessions=<n> peak=<n> alive=<0|1>`` (sessions in progress, the highest
count seen by a 20 ms poll, whether the loop thread runs).  SIGTERM/SIGINT stop
the server (``TftpServer.stop()``) and exit 0; if the loop thread dies on its
own the process exits 3, so a dead server is visible to the bench as a dead
process.  Not part of the appliance: a bench helper only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appliance.servers.tftp import TftpServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-sessions", type=int, default=None,
                    help="override TftpServer's max_sessions (default: the server's own)")
    ap.add_argument("--busy-poll", type=float, default=None,
                    help="override TftpServer's busy_poll seconds (0: never spin)")
    ap.add_argument("--coalesce", type=float, default=None,
                    help="override TftpServer's coalesce (longest nap, seconds; 0: never)")
    ap.add_argument("--pure-python", action="store_true",
                    help="run without the C pump (TftpServer(accelerate=False))")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    kwargs = {}
    if args.max_sessions is not None:
        kwargs["max_sessions"] = args.max_sessions
    if args.busy_poll is not None:
        kwargs["busy_poll"] = args.busy_poll
    if args.coalesce is not None:
        kwargs["coalesce"] = args.coalesce
    if args.pure_python:
        kwargs["accelerate"] = False
    server = TftpServer(args.root, bind=(args.host, args.port), **kwargs)
    stop = threading.Event()
    status_wanted = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: status_wanted.set())

    server.start()
    host, port = server.address
    print(f"READY {host} {port}", flush=True)
    peak = 0
    rc = 0
    try:
        while not stop.is_set():
            if not server.is_alive():
                print("DEAD loop thread ended", flush=True)
                rc = 3
                break
            peak = max(peak, server.sessions)
            if status_wanted.is_set():
                status_wanted.clear()
                print(f"STATUS sessions={server.sessions} peak={peak} "
                      f"alive={int(server.is_alive())}", flush=True)
            stop.wait(0.02)
    finally:
        server.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
