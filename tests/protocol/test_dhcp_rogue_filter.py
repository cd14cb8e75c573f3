"""The rogue detector's kernel filter, on a real interface in a lab namespace.

Under load the appliance sends one reply per request, and perfdhcp or a real
relay sends requests from port 67: none of that may wake the detector.  Only
another server's BOOTREPLY from port 67 that arrived from the wire passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.appliance_proc import REPO
from tests.e2e.lab import NetLab
from tests.protocol.rogue_frames import OWN_REPLY_XID

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

LISTEN_SECONDS = 3.0


def test_only_foreign_server_replies_pass_the_filter():
    with NetLab() as lab:
        port = lab.add_client_port("rog0", "02:00:00:00:0a:01")
        listener = lab.popen_in_server(
            [sys.executable, "-m", "tests.protocol.rogue_frames", "listen", lab.server_iface,
             str(LISTEN_SECONDS)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "ready"
        reply, relayed, client = f"1:67:{2}", f"2:67:{1}", f"3:68:{1}"  # xid:sport:op
        lab.run_in_wire([sys.executable, "-m", "tests.protocol.rogue_frames", "send", port,
                         reply, relayed, client], cwd=REPO)
        out, _ = listener.communicate(timeout=LISTEN_SECONDS + 30)
    passed = [json.loads(line) for line in out.splitlines() if line.strip()]
    # the foreign OFFER passes; a relayed request (port 67, BOOTREQUEST), a
    # client's request and our own outgoing reply (xid 4) do not
    assert passed == [[1, 67, 2]], passed
    assert OWN_REPLY_XID not in [xid for xid, _sport, _op in passed]
